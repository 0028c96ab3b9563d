"""The lab behind the web app: what every feature shares, the model pool and the caches.

Every view compares two :class:`~embedlab.side.Side` s (any model, adapter or training snapshot on
each); its computation lives with its tab in :mod:`embedlab.features`, over one shared :class:`Lab`
(loaded models, embedding, index and map caches), bounded; nothing per user lives here.

One request, start to end: a feature's handler (parse the two side specs) -> its computation, which
holds the sides' backbones (:meth:`Lab.hold`, at most ``max_models`` in memory), embeds through the
:class:`~embedlab.cache.EmbeddingCache` (one mixed-adapter pass when both sides share a backbone),
and the forward pass runs in :mod:`embedlab.encode` on the compute thread.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import index as faiss_index
from .adapters import AdapterError
from .cache import EmbeddingCache, embedding_key
from .compute import INTERACTIVE
from .corpora import Corpus, InputError
from .encode import Encoder
from .loading import attach_adapter, cache_root, load_encoder
from .lru import LRU
from .registry import get_spec
from . import ROOT
from .side import Side, SideError, adapter_roots, parse_side

log = logging.getLogger(__name__)
SEED_DIR = ROOT / "assets" / "cache"  # shipped float16 vectors + maps of the built-in corpora (`python -m embedlab build-cache`)
MAP_MAX = 2000  # texts on one map: UMAP on 2 cores stays within seconds
MODEL_WAIT_S = 300  # a request waits this long for a model slot held by other requests, then is told to retry


class ModelsBusy(RuntimeError):
    """Every model slot is held by running requests for other models (the message says so)."""


@dataclass(frozen=True)
class Ready:
    """A side made ready to embed: its loaded backbone and the name its adapter is loaded under."""

    side: Side
    enc: Encoder
    adapter: str | None  # a name in enc.adapters; None = the base weights

    def key(self, corpus_sha: str) -> str:
        """The embedding cache key of this side's vectors of a corpus."""
        return embedding_key(self.enc, self.adapter, corpus_sha)


class Lab:
    """Bounded caches of models, embeddings, indexes and maps, shared by all users."""

    def __init__(self, cache_dir: Path | None = None, max_models: int = 2, device: str | None = "cpu",
                 seed_dir: Path | None = SEED_DIR) -> None:
        self.cache_dir = Path(cache_dir or cache_root())
        self.seed_dir = Path(seed_dir) if seed_dir else None
        self.embeddings = EmbeddingCache(self.cache_dir / "embeddings",
                                         seeds=[self.seed_dir / "embeddings"] if self.seed_dir else [])
        self.max_models = max_models
        self.device = device
        self._models: OrderedDict[str, Encoder] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._slots = threading.Condition(self._lock)  # notified when a request lets go of its models
        self._pins: Counter[str] = Counter()  # model -> requests using it now (never evicted meanwhile)
        self._map_build = threading.Lock()  # one uncached map at a time (see features.maps.twin_map)
        self._indexes: LRU[str, faiss_index.Index] = LRU(max_items=8)
        self._maps: LRU[str, dict] = LRU(max_items=6)
        self._attached: dict[tuple, str] = {}  # (model, weights folder, file stats) -> loaded adapter name
        self.status: dict[str, str] = {}  # background work, shown in the UI

    # --- models -----------------------------------------------------------------------------------
    def encoder(self, key: str) -> Encoder:
        """The loaded encoder for ``key`` (loads on first use; the least recently used model that no
        request holds is evicted). Call it inside :meth:`hold`, which keeps the pool within ``max_models``."""
        get_spec(key)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per model even when many users ask at once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            self.status[key] = "loading the model (first use; up to a minute on 2 cores)…"
            try:
                enc = load_encoder(key, device=self.device)
            finally:
                self.status.pop(key, None)
            with self._lock:
                self._models[key] = enc
                for old in [k for k in self._models if k != key and not self._pins[k]]:
                    if len(self._models) <= self.max_models:
                        break
                    del self._models[old]
            return enc

    @contextlib.contextmanager
    def hold(self, *sides: Side) -> Iterator[list[Ready]]:
        """The sides made ready (models loaded, adapters attached), their models kept in memory until the
        block ends. A request takes all its models at once, waiting while other requests hold the other
        slots, so at most ``max_models`` backbones are ever loaded (a cross-model compare needs two)."""
        keys = list(dict.fromkeys(s.model for s in sides))
        if len(keys) > self.max_models:
            raise ModelsBusy(f"this needs {len(keys)} models at once; the app holds at most {self.max_models}")
        deadline = time.monotonic() + MODEL_WAIT_S
        with self._slots:
            while len(set(k for k, n in self._pins.items() if n) | set(keys)) > self.max_models:
                waiting = ", ".join(k for k in keys if not self._pins[k])
                self.status[f"waiting for {waiting}"] = "other requests are using the other models"
                left = deadline - time.monotonic()
                if left <= 0 or not self._slots.wait(timeout=left):
                    self.status.pop(f"waiting for {waiting}", None)
                    raise ModelsBusy(f"{waiting}: the app's {self.max_models} model slots are in use by other "
                                     "requests; try again in a minute")
                self.status.pop(f"waiting for {waiting}", None)
            self._pins.update(keys)
        try:
            encs = {k: self.encoder(k) for k in keys}
            yield [self._ready(s, encs[s.model]) for s in sides]
        finally:
            with self._slots:
                self._pins.subtract(keys)
                self._slots.notify_all()

    def _ready(self, side: Side, enc: Encoder) -> Ready:
        """Attach ``side``'s weights to its (held) encoder, once per weights folder and file state."""
        if side.weights is None:
            return Ready(side, enc, None)
        path = Path(side.weights)
        try:  # already attached and the files unchanged since: skip re-reading them
            sig = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(path.iterdir()))
        except OSError:
            sig = None
        memo = (side.model, str(path), sig)
        name = self._attached.get(memo) if sig is not None else None
        if name not in enc.adapters:
            info = attach_adapter(enc, path, allowed_roots=None if side.hub else adapter_roots(), activate=False)
            if info.prompt != side.prompt:  # a snapshot embeds with its adapter's training prompt
                enc.adapters[info.name] = dataclasses.replace(info, prompt=side.prompt)
            name = self._attached[memo] = info.name
        return Ready(side, enc, name)

    # --- embeddings -------------------------------------------------------------------------------
    def _texts(self, a: Ready, b: Ready, texts: Sequence[str],
               priority: int = INTERACTIVE) -> tuple[np.ndarray, np.ndarray]:
        """A request's texts under both sides, (N, d_a) and (N, d_b) float32. Sides on one backbone run
        in one mixed-adapter pass; recent texts come from memory."""
        if a.enc is b.enc:
            va, vb = self.embeddings.sides(a.enc, texts, [a.adapter, b.adapter], priority=priority)
            return va, vb
        return (self.embeddings.sides(a.enc, texts, [a.adapter], priority=priority)[0],
                self.embeddings.sides(b.enc, texts, [b.adapter], priority=priority)[0])

    def _corpus(self, r: Ready, corpus: Corpus, progress: Callable[[int, int], None] | None = None,
                wait: bool = False) -> np.ndarray:
        """A corpus's vectors under one side (cached). ``wait=False``: a corpus another request is embedding
        right now raises CacheBusy with its progress instead of blocking this request."""
        return self.embeddings.get_or_compute(r.enc, corpus.texts, r.adapter, progress=progress, wait=wait,
                                              sha=corpus.sha256, uploaded=corpus.uploaded)

    def corpus_vectors(self, a: Side, b: Side, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """A corpus's vectors under both sides, (N, d_a) and (N, d_b) float32 (cached)."""
        with self.hold(a, b) as (ra, rb):
            return self._corpus(ra, corpus), self._corpus(rb, corpus)

    def embed(self, a: Side, b: Side, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts under both sides, (N, d_a) and (N, d_b) float32."""
        with self.hold(a, b) as (ra, rb):
            return self._texts(ra, rb, texts)

    # --- index and map caches (shared by the features) ----------------------------------------------
    def index(self, r: Ready, corpus: Corpus) -> tuple[faiss_index.Index, np.ndarray]:
        """The FAISS index of a corpus's vectors under one side (built once, kept among the recent ones) and the vectors."""
        vecs = self._corpus(r, corpus)
        key = r.key(corpus.sha256)
        with self._lock:
            if (idx := self._indexes.get(key)) is not None:
                return idx, vecs
        idx = faiss_index.build(vecs)
        with self._lock:
            self._indexes.put(key, idx)
        return idx, vecs

    def remembered_map(self, key: str) -> dict | None:
        """A map (embedlab.features.maps.twin_map) kept in memory under ``key``, else None."""
        with self._lock:
            return self._maps.get(key)

    def remember_map(self, key: str, m: dict) -> None:
        with self._lock:
            self._maps.put(key, m)

    @property
    def map_build(self) -> threading.Lock:
        """Held while a map is built: one uncached map at a time."""
        return self._map_build

    # --- status -------------------------------------------------------------------------------------
    def status_line(self) -> str:
        if not self.status:
            return ""
        status = dict(self.status)
        loading = [k for k, v in status.items() if v.startswith("loading the model")]
        busy = {k: v for k, v in status.items() if v != "ready" and k not in loading}
        parts = [f"**Loading {k}** (first use; up to a minute on 2 cores): requests for it wait" for k in loading]
        if busy:
            parts.append("Preparing in the background (other views work meanwhile): "
                         + "; ".join(f"{k}: {v}" for k, v in busy.items()))
        return " · ".join(parts) or "Ready: models, adapters and built-in corpora are cached."


__all__ = ["Lab", "Ready", "Side", "SideError", "parse_side", "ModelsBusy", "InputError", "AdapterError", "MAP_MAX"]
