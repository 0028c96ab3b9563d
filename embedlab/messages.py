"""Words for input errors, shared by the library (side specs, user files, live settings) and the app's
features: what kind of value was sent, and a value quoted back cut short. No Gradio here."""
from __future__ import annotations

from typing import Any

ECHO_CHARS = 80  # user input quoted back in a message is cut to this


def kind(value: Any) -> str:
    """What a wrong-typed value is, in words ("a number", "a list"…), for input errors."""
    return "nothing" if value is None else {bool: "true/false", int: "a number", float: "a number", list: "a list",
                                             dict: "an object"}.get(type(value), type(value).__name__)


def short(value: Any) -> str:
    """A value quoted in a message (its repr), cut to ~:data:`ECHO_CHARS` characters."""
    r = repr(value)
    return r if len(r) <= ECHO_CHARS else r[:ECHO_CHARS - 3] + "…"
