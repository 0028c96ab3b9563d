"""embedlab: sentence embeddings of small LMs, before and after contrastive fine-tuning."""
import os
from pathlib import Path

__version__ = "0.1.0"
ROOT = Path(__file__).resolve().parent.parent  # the repository (assets/, runs/): the one place it is computed


def env_switch(name: str, default: str) -> bool:
    """A host's on/off variable: ``on`` or ``off`` (any case; unset or empty: ``default``). Anything else is a
    ValueError naming the variable: a typo must not silently turn a feature on or off."""
    value = (os.environ.get(name) or default).strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{name} must be on or off, not {value[:20]!r}")
    return value == "on"
