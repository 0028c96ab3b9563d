"""Embeddings cached on disk by (model, adapter hash, corpus hash, settings), in checksummed chunks.

Chunks make a long embedding job resumable (a killed run keeps the chunks it
finished) and let a corrupt or half-written file be detected and recomputed
instead of silently served.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .encode import Encoder

log = logging.getLogger(__name__)
CHUNK = 2048  # sentences per cached file
SLICE = 128  # sentences per encode call: the encoder's lock is released between slices so a
#              long background job never makes an interactive request wait more than one slice


def corpus_sha256(texts: Sequence[str]) -> str:
    """Order-sensitive hash of a list of texts."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embedding_key(enc: Encoder, use_adapter: bool | str, corpus_sha: str) -> str:
    """Everything that changes the vectors: model, adapter weights, prompt, max length, corpus."""
    adapter = "base"
    if use_adapter is not False and enc.adapters:
        adapter = enc.adapters[enc.active_adapter if use_adapter is True else use_adapter].sha256[:16]
    settings = hashlib.sha256(f"{enc.spec.prompt}|{enc.max_length}|{enc.spec.pooling}".encode()).hexdigest()[:8]
    return f"{enc.spec.key}-{adapter}-{settings}-{corpus_sha[:16]}"


def _save_npy_atomic(path: Path, arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _load_checked(path: Path, sha: str) -> np.ndarray | None:
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            return None
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError):
        return None


class CacheBusy(RuntimeError):
    """Another thread is computing these embeddings right now (the message says how far it is)."""


class EmbeddingCache:
    """Disk cache of float32 (N, d) embeddings; one folder per key, one .npy per chunk.

    One computation per key at a time: a second caller either waits for it
    (``wait=True``) or gets :class:`CacheBusy` with the progress, instead of
    computing the same vectors twice.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._progress: dict[str, str] = {}
        self._guard = threading.Lock()

    def get_or_compute(
        self,
        enc: Encoder,
        texts: Sequence[str],
        use_adapter: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        wait: bool = True,
    ) -> np.ndarray:
        """Embeddings of ``texts`` (float32, (N, d)), computing only the chunks not yet cached."""
        texts = list(texts)
        key = embedding_key(enc, use_adapter, corpus_sha256(texts))
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(blocking=wait):
            raise CacheBusy(f"these embeddings are being computed right now ({self._progress.get(key, 'starting')}); "
                            "try again in a moment")
        try:
            return self._get_or_compute(enc, texts, use_adapter, progress, key)
        finally:
            self._progress.pop(key, None)
            lock.release()

    def _get_or_compute(self, enc: Encoder, texts: list[str], use_adapter: bool | str,
                        progress: Callable[[int, int], None] | None, key: str) -> np.ndarray:
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        parts = []
        n_chunks = (len(texts) + CHUNK - 1) // CHUNK
        for c in range(n_chunks):
            self._progress[key] = f"{c * CHUNK:,} of {len(texts):,} texts"
            if progress:
                progress(c * CHUNK, len(texts))
            name = f"part-{c:05d}.npy"
            lo, hi = c * CHUNK, min(len(texts), (c + 1) * CHUNK)
            arr = _load_checked(folder / name, manifest[name]) if name in manifest else None
            if arr is None or arr.shape != (hi - lo, enc.dim):
                if name in manifest:
                    log.warning("cache chunk %s/%s is corrupt; recomputing", folder.name, name)
                arr = np.concatenate([enc.encode(texts[j : min(hi, j + SLICE)], use_adapter=use_adapter)
                                      for j in range(lo, hi, SLICE)])
                manifest[name] = _save_npy_atomic(folder / name, arr)
                _write_manifest(manifest_path, manifest)
            parts.append(arr)
        if progress:
            progress(len(texts), len(texts))
        return np.concatenate(parts).astype(np.float32, copy=False)


def _write_manifest(path: Path, manifest: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f)
    os.replace(tmp, path)
