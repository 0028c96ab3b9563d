"""What every feature's handlers share: the user-facing error (:class:`UserError`) and how any other error becomes
one (:func:`user_facing`, :func:`scrub`), Markdown escaping, the input checks (one per kind of input, the same
message on every endpoint), the download files, the :class:`Ctx` a tab is built in, and the input components
whose preprocessing failures reach the client as our short message instead of Gradio's internals.

Handlers are plain functions (UI values in, UI values out) over the shared :class:`~embedlab.lab.Lab`;
:func:`gradio_errors` turns their UserError into a Gradio error (no stack trace).
"""
from __future__ import annotations

import csv
import functools
import html
import json
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pydantic

from ..adapters import AdapterError
from ..cache import CacheBusy
from ..compute import Cancelled, stop_when
from ..corpora import BUILTINS, Corpus, InputError, builtin, clean_text, read_upload
from ..encode import TextError
from ..gradio_internals import LongRequests, client_gone_check
from ..lab import Lab, ModelsBusy
from ..live import LiveError
from ..loading import ModelUnavailableError
from ..nli import DataError
from ..projection import LayoutError
from ..provenance import environment
from ..registry import UnknownModelError
from .. import ROOT
from ..messages import ECHO_CHARS, kind, short
from ..side import Side, SideError, parse_side

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 1000
USER_ERRORS = (InputError, TextError, AdapterError, ModelUnavailableError, UnknownModelError, DataError, CacheBusy,
               SideError, ModelsBusy, LiveError, LayoutError)
# Downloads (CSV + JSON per result) are written here; Gradio copies each into its own cache (cleaned by the
# app's delete_cache), so a folder older than DOWNLOAD_TTL_S is no longer needed and is removed.
DOWNLOADS = Path(tempfile.gettempdir()) / "embedlab-downloads"
DOWNLOAD_TTL_S = 900  # seconds; app.py sets it to its delete_cache age


class UserError(Exception):
    """Shown to the user as is."""


_ROOT_PREFIX = re.compile(re.escape(str(ROOT)) + r"/?")
# An absolute path: "/" after a start, space, quote or bracket, then at least one more "/"-separated part.
_ABS_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s/'"`()\[\]<>,;]+/)+([^\s/'"`()\[\]<>,;]*)""")


def scrub(msg: str, keep: tuple[str, ...] = ()) -> str:
    """A message without server paths: the repository root becomes relative, any other absolute path its
    last component ("/tmp/gradio/ab12/x.csv" -> "x.csv"). Every handler's message passes through here.
    ``keep``: parts of the message quoting what the user typed, left as typed."""
    for part in keep:
        if part and part in msg:
            return part.join(scrub(piece, keep) for piece in msg.split(part))
    msg = _ROOT_PREFIX.sub("", msg)
    return _ABS_PATH.sub(lambda m: m.group(1) or "(folder)", msg)


def user_facing(fn: Callable) -> Callable:
    """Turn expected errors into UserError and unexpected ones into a short message (logged in full).

    Every message leaves through :func:`scrub`: no server path reaches the user.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SideError as e:  # what was typed is quoted as typed
            raise UserError(scrub(str(e), e.quoted)) from None
        except (UserError, *USER_ERRORS) as e:
            raise UserError(scrub(str(e))) from None
        except Cancelled as e:  # the client left: nobody reads this, but say what happened
            log.info("handler %s stopped: its client has gone", fn.__name__)
            raise UserError(str(e)) from None
        except Exception as e:  # never a stack trace in the browser; the server log has it
            log.exception("handler %s failed", fn.__name__)
            raise UserError(f"Sorry, that failed on the server ({type(e).__name__}). The app is still running; "
                            "try again or pick other inputs.") from None

    return wrapper


def gradio_errors(fn: Callable) -> Callable:
    """UserError -> gr.Error: the user sees the message, never a stack trace. Work the handler queues on
    the compute thread stops (between batches) once its client has gone."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        try:
            with stop_when(client_gone_check()):
                return fn(*a, **k)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None

    return wrapper


def md(text: Any) -> str:
    """Data (token names like "<eos>", adapter names, record fields, user texts) made safe to show in
    Markdown mid-line: HTML-escaped, inline Markdown punctuation (emphasis, code, links, table cells) escaped."""
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", html.escape(str(text), quote=False))


# --- input checks: one per kind of input, used by every endpoint --------------------------------------
def text(value: Any, what: str, max_chars: int = MAX_QUERY_CHARS) -> str:
    """A text input: a string (numbers, lists and objects are refused), cleaned, non-empty, at most ``max_chars``."""
    if not isinstance(value, str):
        raise UserError(f"{what} must be text")
    value = clean_text(value, keep="\t\n")
    if not value:
        raise UserError(f"{what} is empty")
    if len(value) > max_chars:
        raise UserError(f"{what} has {len(value):,} characters; the limit is {max_chars:,}")
    return value


def optional_text(value: Any, what: str) -> str:
    """Text that may be left empty ('' for None)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{what} must be text, not {kind(value)}")
    return value


def sides(a: Any, b: Any) -> tuple[Side, Side]:
    """Side A's and side B's specs (``model[+adapter][@step]``) parsed and validated; the message names the side."""
    return parse_side(a, "side A"), parse_side(b, "side B")


def names(a: Side, b: Side) -> tuple[str, str]:
    """Column and legend names of the two sides: 'A: <spec>', 'B: <spec>' (distinct even when the specs are equal)."""
    return f"A: {a.label}", f"B: {b.label}"


def whole(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi]: an int, an integral finite float (a slider's 10.0) or its text ("10")."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserError(f"{what} must be a whole number from {lo} to {hi}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise UserError(f"{what} must be a whole number from {lo} to {hi}")
    if not lo <= value <= hi:
        shown = f"{int(value):,}"
        raise UserError(f"{what} is {shown if len(shown) <= ECHO_CHARS else 'a number too large'}; it must be from {lo} to {hi}")
    return int(value)


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def flag(value: Any, what: str) -> bool:
    """true/false: a boolean, or one of the obvious words ("false" and "no" are false); anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(f"{what} must be true or false, not {kind(value)}")


def corpus(name: Any, upload: Any) -> Corpus:
    """A corpus picked by name: a built-in one, or "upload" (the session's uploaded corpus)."""
    if not isinstance(name, str):
        raise UserError(f"corpus must be a corpus name (text), not {kind(name)}; one of: {', '.join(BUILTINS)}, upload")
    if name == "upload":
        if not isinstance(upload, Corpus):
            raise UserError("upload a .txt or .csv corpus first (or pick a built-in one)")
        return upload
    if name not in BUILTINS:
        raise UserError(f"unknown corpus {short(name)}; one of: {', '.join(BUILTINS)}, upload")
    return builtin(name)


def upload(file: Any) -> tuple[bytes, str]:
    """An uploaded file's bytes and name (size-checked before reading)."""
    if isinstance(file, dict):  # a FileData object sent as JSON without going through the upload route
        raise UserError("send the file as an upload (gradio_client: handle_file(path))")
    if not isinstance(file, (str, Path)) or not str(file):
        raise UserError("no file received")
    return read_upload(file), Path(file).name


# --- downloads -----------------------------------------------------------------------------------------
def files(stem: str, rows: list[dict], record: dict) -> list[str]:
    """Write the view's data (CSV) and its reproducibility record (JSON); return both paths.

    One folder per result under :data:`DOWNLOADS`; folders older than :data:`DOWNLOAD_TTL_S` are removed
    here (Gradio serves its own copy), so the folder count stays bounded by the request rate.
    """
    folder = download_folder(stem)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    if rows:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        csv_path.write_text("")
    json_path.write_text(json.dumps({**record, "environment": environment("cpu")}, indent=2, default=str))
    return [str(csv_path), str(json_path)]


def download_folder(stem: str) -> Path:
    """A new folder under :data:`DOWNLOADS` for one result's files (``<stem>-XXXX``), after removing the
    folders older than :data:`DOWNLOAD_TTL_S`."""
    prune_downloads()
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=DOWNLOADS))


def prune_downloads(now: float | None = None) -> int:
    """Remove result folders older than DOWNLOAD_TTL_S; returns how many."""
    now = time.time() if now is None else now
    n = 0
    for d in DOWNLOADS.glob("*") if DOWNLOADS.is_dir() else []:
        try:
            if now - d.stat().st_mtime > DOWNLOAD_TTL_S:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def record(a: Side, b: Side, corpus: Corpus | None = None, **extra: Any) -> dict:
    """A result's reproducibility record: both sides, the corpus, and ``extra``."""
    rec: dict[str, Any] = {"side_a": a.record(), "side_b": b.record()}
    if corpus is not None:
        rec["corpus"] = {"name": corpus.name, "texts": len(corpus), "sha256": corpus.sha256}
    return {**rec, **extra}


# --- input components: preprocessing failures as our message ----------------------------------------
# Gradio preprocesses an input before the handler sees it; what fails there reached the client as Gradio's
# internals ("Could not preprocess input component at index 5 …", pydantic's "validation error for FileData").
# A component's preprocess that raises gr.Error is passed through as is, so these components check their
# value first and say what was expected, briefly, in the handlers' words.
# Each is @drawn_by_gradio: without it Gradio names the block after the subclass ("text", "number") and the
# browser asks for a custom component's frontend that does not exist (404): the field never renders, the page
# stays "Loading…" and its load events (the first visit's compare) never run; and its label and value are lost.
def drawn_by_gradio(cls: type) -> type:
    """A subclass of a Gradio component that the browser draws with the Gradio component it subclasses:
    its block name is the base's (``is_template``) and its settings (label, value, choices…) are read by the
    base's signature (Gradio reads them by the class's own ``__init__``, which here takes ``**kw``)."""
    base = cls.__base__
    cls.is_template = True

    def get_config(self: Any, cls_: type | None = None) -> dict:
        return base.get_config(self, cls_ or base)

    cls.get_config = get_config
    return cls


def _refuse(msg: str) -> gr.Error:
    return gr.Error(msg, print_exception=False)


@drawn_by_gradio
class Text(gr.Textbox):
    """A text field that refuses numbers, lists and objects (Gradio's Textbox turns them into text)."""

    def __init__(self, *, what: str = "the value", **kw: Any) -> None:
        super().__init__(**kw)
        self.what = what

    def preprocess(self, payload: Any) -> str | None:
        if payload is not None and not isinstance(payload, str):
            raise _refuse(f"{self.what} must be text")
        return super().preprocess(payload)


@drawn_by_gradio
class Choice(gr.Dropdown):
    """A fixed-choice dropdown whose refusal quotes the value cut short (Gradio's quotes all of it)."""

    def __init__(self, *, what: str = "the value", **kw: Any) -> None:
        super().__init__(**kw)
        self.what = what

    def preprocess(self, payload: Any) -> Any:
        values = [v for _, v in self.choices]
        if payload is not None and not self.allow_custom_value and payload not in values:
            raise _refuse(f"{self.what} {short(payload)} is not in the list of choices: {', '.join(map(str, values))}")
        return super().preprocess(payload)


@drawn_by_gradio
class Choices(gr.CheckboxGroup):
    """A checkbox group whose refusal quotes the value cut short and names the field."""

    def __init__(self, *, what: str = "the value", **kw: Any) -> None:
        super().__init__(**kw)
        self.what = what

    def preprocess(self, payload: Any) -> Any:
        values = [v for _, v in self.choices]
        if not isinstance(payload, list):
            raise _refuse(f"{self.what} must be a list of names, not {kind(payload)}")
        bad = next((v for v in payload if v not in values), None)
        if bad is not None:
            raise _refuse(f"{self.what}: {short(bad)} is not in the list of choices: {', '.join(map(str, values))}")
        return super().preprocess(payload)


@drawn_by_gradio
class Number(gr.Slider):
    """A slider that refuses text, true/false, lists and objects with our message (Gradio's compares them to its
    bounds and fails with a TypeError)."""

    def __init__(self, *, what: str = "the value", **kw: Any) -> None:
        super().__init__(**kw)
        self.what = what

    def preprocess(self, payload: Any) -> Any:
        if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
            raise _refuse(f"{self.what} must be a number from {self.minimum:g} to {self.maximum:g}, not {kind(payload)}")
        return super().preprocess(payload)


@drawn_by_gradio
class Upload(gr.File):
    """A file input whose malformed file object (not sent through the upload route) gets our message
    instead of pydantic's validation error."""

    def __init__(self, *, what: str = "the file", **kw: Any) -> None:
        super().__init__(**kw)
        self.what = what
        model, what_ = self.data_model, what

        class Checked(model):  # type: ignore[misc, valid-type]
            @classmethod
            def model_validate(cls, obj: Any, *a: Any, **k: Any) -> Any:
                try:
                    return super().model_validate(obj, *a, **k)
                except pydantic.ValidationError:
                    raise _refuse(f"{what_}: send the file as an upload (gradio_client: handle_file(path))") from None

        Checked.__name__ = model.__name__
        self.data_model = Checked


# --- a tab's build context --------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a feature's ``build(ctx)`` lays out its tab with: the shared lab, the two side pickers, the
    admission of long requests, and the components other tabs read (set by the tab that owns them)."""

    lab: Lab
    demo: gr.Blocks
    side_a: gr.Dropdown
    side_b: gr.Dropdown
    heavy: dict  # event settings of the long requests (one at a time, a bounded fair wait)
    maps: dict  # event settings of maps (several at once; one uncached build at a time)
    parts: dict[str, Any] = field(default_factory=dict)  # components shared between tabs, by name

    @property
    def sides(self) -> list[gr.Dropdown]:
        return [self.side_a, self.side_b]

    def h(self, fn: Callable) -> Callable:
        """``fn(lab, …)`` as an event handler: bound to the shared lab, its UserError shown as a Gradio error."""
        return gradio_errors(functools.partial(fn, self.lab))


INTERACTIVE_AT_ONCE = 16  # compares, searches and embeds in flight at once (their passes are shared on the compute thread)
HEAVY_WAITING = 8  # long requests of one kind queued behind the running one
HEAVY_PER_CLIENT = 2  # of which one session or client address may hold


def slot(demo: gr.Blocks, group: str, limit: int = 1) -> dict:
    """Event settings of a group of long requests: ``limit`` run at once, at most HEAVY_WAITING wait, at most
    HEAVY_PER_CLIENT of them from one session or address (:class:`~embedlab.gradio_internals.LongRequests`)."""
    gate = LongRequests(demo, group, HEAVY_WAITING, HEAVY_PER_CLIENT)
    return {"concurrency_id": group, "concurrency_limit": limit, "validator": gate.validator}


__all__ = ["UserError", "user_facing", "gradio_errors", "scrub", "md", "Ctx", "slot"]
