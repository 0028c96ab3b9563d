"""What produced a result: library versions and the device, for every record we write."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from typing import Any

import torch

LIBRARIES = ("torch", "transformers", "peft", "numpy", "scipy", "faiss-cpu", "umap-learn", "gradio")


def device_name(device: torch.device | str | None = None) -> str:
    """Human name of the device: the GPU's model, or the CPU with its core count."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def environment(device: torch.device | str | None = None, precision: Any = None) -> dict[str, Any]:
    """Python, library versions, device and precision, as a JSON-ready dict.

    ``precision``: the :class:`~embedlab.precision.Precision` the vectors were computed in (an
    encoder's ``precision``: every vector of the record is that encoder's). By default the one this
    process's setting gives ``device``, with a note that vectors read from an embedding cache (a
    view's corpus) may have been computed in the other precision.
    """
    from .precision import CACHED_VECTORS_NOTE, resolve

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = precision if precision is not None else resolve(dev)
    env = {"python": platform.python_version(), "device": device_name(dev), "libraries": dict(_versions()),
           "precision": p.name, "precision_setting": p.requested, "precision_emulated": p.emulated}
    return env if precision is not None else {**env, "cached_vectors": CACHED_VECTORS_NOTE}


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    """Installed versions of LIBRARIES (reading package metadata costs ~25 ms, so once per process)."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return versions

