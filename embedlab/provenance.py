"""What produced a result: library versions and the device, for every record we write."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("torch", "transformers", "peft", "numpy", "scipy", "faiss-cpu", "umap-learn", "gradio")


def device_name(device: torch.device | str | None = None) -> str:
    """Human name of the device: the GPU's model, or the CPU with its core count."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Python, library versions and device, as a JSON-ready dict."""
    return {"python": platform.python_version(), "device": device_name(device), "libraries": dict(_versions())}


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


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename: never a half-written file."""
    from .atomic import write_text

    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
