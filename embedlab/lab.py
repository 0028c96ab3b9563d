"""The lab behind the web app: what every feature shares, the model pool and the caches.

Every view compares two :class:`~embedlab.side.Side` s (any model, adapter or training snapshot on
each); its computation lives with its tab in :mod:`embedlab.features`, over one shared :class:`Lab`
(loaded models, embedding, index and map caches), bounded; nothing per user lives here.

One request, start to end: a feature's handler (parse the two side specs) -> its computation, which
holds the sides' backbones (:meth:`Lab.hold`: a pool sized by memory, see :meth:`Lab.encoder`), embeds through the
:class:`~embedlab.cache.EmbeddingCache` (one mixed-adapter pass when both sides share a backbone),
and the forward pass runs in :mod:`embedlab.encode` on the compute thread.
"""
from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import index as faiss_index
from .adapters import AdapterError
from .cache import CacheBusy, EmbeddingCache, embedding_key, model_of
from .compute import BACKGROUND, IDLE, INTERACTIVE, trim_heap
from .corpora import Corpus, InputError
from .encode import Encoder, tokenize
from .files import signature
from .loading import adapter_bytes, attach_side, cache_root, detach_adapter, load_encoder
from .precision import resolve as resolve_precision
from .lru import LRU
from .registry import get_spec
from . import ROOT
from .side import Side, SideError, parse_side

log = logging.getLogger(__name__)
SEED_DIR = ROOT / "assets" / "cache"  # shipped 8-bit vectors (cache.quantize) + maps of the built-in corpora (`python -m embedlab build-cache`)
MAP_MAX = 2000  # texts on one map: UMAP on 2 cores stays within seconds
MODEL_WAIT_S = 300  # a request waits this long for model memory held by other requests, then is told to retry
# Bytes of model weights the pool keeps loaded. Measured with model_bytes (fp32 parameters + buffers, as
# load_encoder loads them on CPU): smollm2-135m 513 MiB, gemma3-270m 1,023 MiB, minilm-l6 87 MiB. The three
# small models, 1,623 MiB, fit the default with room to spare, so none ever waits for another's memory; a Space has 16 GB.
MODEL_MEMORY_MB = float(os.environ.get("EMBEDLAB_MODEL_MEMORY_MB", "3072"))
# /embed's bounds (features.pairs.embed_api), like MAX_PAIR_CHARS for /batch_pairs: 256 texts of 20,000 characters took
# 109-127 s on 2 cores and 8 such calls pushed /compare's p50 from 0.28 s to 6.9 s.
MAX_EMBED_CHARS = 200_000  # all texts of one call
MAX_EMBED_TOKENS = 32_768  # per side, after each text is cut to the model's max_length tokens (as the encoder does)
EMBED_INTERACTIVE_TOKENS = 2_048  # more than this runs at background priority: compares overtake it batch by batch
CANCELLED_NOTE_S = 60.0  # the status line says which jobs were cancelled, and how far they got, for this long
# LoRA weights kept attached to one loaded model, least recently used detached first (never one in use): every side
# anyone names (a snapshot, a live run's frame, a Hub adapter) attaches its adapter, and without a bound they piled up
# for as long as the model stayed loaded. A shipped rank-8 adapter is 1.4-1.8 MB, a rank-64 live run's ~12 MB.
ADAPTER_MEMORY_MB = 64.0
# What nobody has used for this long is let go (Lab.release_idle): a model that is not one of the default sides',
# with the vectors and indexes the caches hold in memory for it (the vectors stay on disk), an adapter that is not
# the default sides' (a live run's frames, snapshots, Hub adapters), and the text vectors of requests. So memory
# comes back after a burst of use of other models or of a live run (issue 20: within 200 MiB of its start, within
# 2 minutes); the price is a reload for the next request that names them (minilm-l6 ~1 s, an adapter well under
# one). 0: never.
IDLE_RELEASE_S = float(os.environ.get("EMBEDLAB_IDLE_RELEASE_S", "60"))
JOB_WAIT_S = 8.0  # a request whose corpus is not embedded yet waits this long for its background job, then is told how far it is


# The sides the calling request holds (Lab.hold): a corpus job for one of them starts the others' jobs too.
_held: contextvars.ContextVar[tuple] = contextvars.ContextVar("embedlab_held", default=())


class ModelsBusy(RuntimeError):
    """The model memory is held by running requests for other models (the message says so)."""


def model_bytes(enc: Encoder) -> int:
    """Bytes of a loaded encoder's weights (parameters and buffers; tied tensors counted once)."""
    seen, total = set(), 0
    for t in list(enc.model.parameters()) + list(enc.model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _estimate_bytes(key: str) -> int:
    """A model's fp32 weight bytes before it is loaded, from its registry entry."""
    return int(get_spec(key).params_m * 1e6 * 4)


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

    def __init__(self, cache_dir: Path | None = None, max_models: int | None = None, device: str | None = "cpu",
                 seed_dir: Path | None = SEED_DIR, model_bytes: int | None = None) -> None:
        self.cache_dir = Path(cache_dir or cache_root())
        self.seed_dir = Path(seed_dir) if seed_dir else None
        self.embeddings = EmbeddingCache(self.cache_dir / "embeddings",
                                         seeds=[self.seed_dir / "embeddings"] if self.seed_dir else [])
        # The pool: at most ``model_bytes`` of weights (EMBEDLAB_MODEL_MEMORY_MB) and, if given, ``max_models``.
        self.model_budget = int(model_bytes if model_bytes is not None else MODEL_MEMORY_MB * 2**20)
        self.max_models = max_models
        self.resident: set[str] = set()  # models never evicted (the default sides', set by prepare)
        self.resident_adapters: set[tuple[str, str]] = set()  # (model, adapter name) never let go when idle (prepare)
        self._used: dict = {}  # model, or (model, adapter name) -> time.monotonic() it was last held or let go
        self.device = device
        self._models: OrderedDict[str, Encoder] = OrderedDict()
        self._bytes: dict[str, int] = {}  # model -> its measured weight bytes (kept after eviction, for the next load)
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._slots = threading.Condition(self._lock)  # notified when a request lets go of its models
        # model, or (model, adapter name) -> requests and jobs using it now (never evicted or detached meanwhile)
        self._pins: Counter = Counter()
        self._map_build = threading.Lock()  # one uncached map at a time (see features.maps.twin_map)
        self._indexes: LRU[str, faiss_index.Index] = LRU(max_items=8)
        self._maps: LRU[str, dict] = LRU(max_items=6)
        self._attached: dict[tuple, str] = {}  # (model, weights folder, file stats) -> loaded adapter name
        # (model, adapter name) -> its bytes, least recently used first; under self._lock. Attaching, pinning and
        # detaching happen under _attaching, so an adapter is never detached between its attach and its pin
        self._adapters: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.adapter_budget = int(ADAPTER_MEMORY_MB * 2**20)
        self._attaching = threading.Lock()
        self.status: dict[str, str] = {}  # background work, shown in the UI
        self._cancelled: tuple[float, str] | None = None  # (when, what) of the last cancel, for the status line

    # --- models -----------------------------------------------------------------------------------
    # The pool is sized by memory, not by a count: every model that fits ``model_budget`` stays loaded, so a
    # request for one model never waits for another request's model (a 5-minute search on two models
    # used to hold both of two slots while the default compare waited). A pin (a request or a corpus job
    # using the model) only stops its model being evicted; it never stops another model loading while
    # memory allows. Requests of one model share it: their forward passes interleave on the compute
    # thread one batch at a time, by priority (compute.py), so nobody waits for a model longer than a batch.
    # Only when pinned and resident models fill the budget does a load wait for a pin to go (status line
    # says so); a model that cannot fit beside the resident ones at all is refused at once.
    def _used_bytes(self) -> int:
        return sum(self._bytes.get(k, 0) for k in self._models)

    def _evict_for(self, key: str, need: int) -> bool:
        """Evict least recently used models nobody uses (never resident ones) until ``need`` more bytes (and one
        more model) fit; True when they do. Called with ``self._lock`` held."""
        def fits() -> bool:
            count_ok = self.max_models is None or len([k for k in self._models if k != key]) < self.max_models
            return count_ok and self._used_bytes() - self._bytes.get(key, 0) * (key in self._models) + need \
                <= self.model_budget

        for old in [k for k in self._models if k != key]:
            if fits():
                break
            if not self._pins[old] and old not in self.resident:
                del self._models[old]
                for k in [k for k in self._adapters if k[0] == old]:  # gone with their model
                    del self._adapters[k]
        return fits()

    def _make_room(self, key: str) -> None:
        """Before loading ``key``: free memory for it, waiting (at most MODEL_WAIT_S) while models that are in
        use fill the budget. Raises ModelsBusy when it cannot fit or the wait runs out."""
        need = self._bytes.get(key) or _estimate_bytes(key)
        deadline = time.monotonic() + MODEL_WAIT_S
        with self._slots:
            fixed = sum(self._bytes.get(k, 0) for k in self._models if k in self.resident and k != key)
            if fixed + need > self.model_budget and fixed:
                raise ModelsBusy(f"{key} needs ~{need / 2**20:,.0f} MB of weights; the app keeps "
                                 f"{self.model_budget / 2**20:,.0f} MB for models and the default ones use "
                                 f"{fixed / 2**20:,.0f} MB (EMBEDLAB_MODEL_MEMORY_MB sets it)")
            label = f"waiting for {key}"
            try:
                while not self._evict_for(key, need) and any(self._pins[k] for k in self._models if k != key):
                    self.status[label] = "the model memory is in use by running requests for other models"
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._slots.wait(timeout=left):
                        raise ModelsBusy(f"{key}: the app's model memory is in use by other requests; "
                                         "try again in a minute")
            finally:
                self.status.pop(label, None)

    def encoder(self, key: str) -> Encoder:
        """The loaded encoder for ``key`` (loads on first use, evicting least recently used models that nobody
        uses and that are not resident until it fits the memory budget). Call it inside :meth:`hold`, which
        keeps its model from being evicted meanwhile."""
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
            self._make_room(key)
            self.status[key] = "loading the model (first use; up to a minute on 2 cores)…"
            try:
                enc = load_encoder(key, device=self.device)
            finally:
                self.status.pop(key, None)
            with self._lock:
                self._models[key] = enc
                self._bytes[key] = model_bytes(enc)
                self._evict_for(key, self._bytes[key])  # the measured size may exceed the estimate
            return enc

    def _keep(self, *keys: str | tuple[str, str | None]) -> Callable[[], None]:
        """Pin ``keys`` (a model; a (model, adapter name)) against eviction until the returned function is called,
        e.g. from a background job's thread."""
        with self._slots:
            self._pins.update(keys)
            self._used.update(dict.fromkeys(keys, time.monotonic()))
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                with self._slots:
                    self._used.update(dict.fromkeys(keys, time.monotonic()))
                    self._pins.subtract(keys)
                    for k in keys:
                        if self._pins[k] <= 0:  # no zero entries left behind: adapters' keys come and go
                            self._pins.pop(k, None)
                    self._slots.notify_all()

        return release

    @contextlib.contextmanager
    def hold(self, *sides: Side) -> Iterator[list[Ready]]:
        """The sides made ready (models loaded, adapters attached), their models kept in memory until the
        block ends. Holding never blocks another request's model: see the pool's notes above."""
        keys = list(dict.fromkeys(s.model for s in sides))
        if self.max_models is not None and len(keys) > self.max_models:
            raise ModelsBusy(f"this needs {len(keys)} models at once; the app holds at most {self.max_models}")
        releases = [self._keep(k) for k in keys]
        token = None
        try:
            encs = {k: self.encoder(k) for k in keys}
            readies = [self._ready(s, encs[s.model], releases) for s in sides]
            token = _held.set(tuple(readies))
            yield readies
        finally:
            if token is not None:
                _held.reset(token)
            for release in releases:
                release()

    def _ready(self, side: Side, enc: Encoder, releases: list[Callable[[], None]]) -> Ready:
        """Attach ``side``'s weights to its (held) encoder, once per weights folder and file state, and pin them
        (their release appended to ``releases``) until the request lets go; then detach the least recently used
        adapters nobody uses while this model's exceed ``adapter_budget``."""
        if side.weights is None:
            return Ready(side, enc, None)
        path = Path(side.weights)
        sig = signature(path)  # already attached and the files unchanged since: skip re-reading them
        memo = (side.model, str(path), sig)
        with self._attaching:
            name = self._attached.get(memo) if sig is not None else None
            if name not in enc.adapters:
                name = self._attached[memo] = attach_side(enc, side)
            key = (side.model, name)
            releases.append(self._keep(key))
            with self._lock:
                if key not in self._adapters:
                    self._adapters[key] = adapter_bytes(enc, name)
                self._adapters.move_to_end(key)
            self._trim_adapters(enc)
        return Ready(side, enc, name)

    def _trim_adapters(self, enc: Encoder) -> None:
        """Detach ``enc``'s least recently used unpinned adapters while its adapters hold more than
        ``adapter_budget`` bytes. Called with ``_attaching`` held (no attach or pin meanwhile)."""
        model = enc.spec.key
        while True:
            with self._lock:
                mine = [k for k in self._adapters if k[0] == model]
                if sum(self._adapters[k] for k in mine) <= self.adapter_budget:
                    return
                victim = next((k for k in mine if not self._pins[k]), None)
                if victim is None:  # all in use: over the budget until they are let go
                    return
                del self._adapters[victim]
                for memo in [m for m, n in self._attached.items() if m[0] == model and n == victim[1]]:
                    del self._attached[memo]
            detach_adapter(enc, victim[1])

    def release_idle(self, idle_s: float = IDLE_RELEASE_S) -> list[str]:
        """Let go of what nobody has held for ``idle_s`` seconds: models that are not resident, with the vectors
        and indexes the caches keep in memory for them (their vectors stay on disk), adapters that are not the
        default sides', and the text vectors of requests; never anything in use. Then the heap is trimmed.
        Returns what went, for the log."""
        now = time.monotonic()

        def idle(key: object) -> bool:
            return not self._pins[key] and now - self._used.get(key, now) >= idle_s

        with self._attaching:  # no adapter attached or pinned meanwhile (as in _trim_adapters)
            with self._lock:
                models = [k for k in self._models if k not in self.resident and idle(k)]
                for k in models:
                    del self._models[k]
                    for key in [key for key in self._adapters if key[0] == k]:
                        del self._adapters[key]
                    for key in [key for key in self._indexes if model_of(key) == k]:
                        self._indexes.pop(key)
                adapters = [key for key in self._adapters if key not in self.resident_adapters and idle(key)]
                encs = {key: self._models[key[0]] for key in adapters}
                for key in adapters:
                    del self._adapters[key]
                    self._used.pop(key, None)  # a live run's frames come and go: no entry left behind
                for memo in [m for m, n in self._attached.items() if m[0] in models or (m[0], n) in adapters]:
                    del self._attached[memo]
            for key, enc in encs.items():
                detach_adapter(enc, key[1])
        if models:
            self.embeddings.forget(models)
        gone = models + [f"{m} adapter {n}" for m, n in adapters]
        if texts := self.embeddings.forget_texts_if_idle(idle_s):
            gone.append(f"{texts:,} text vectors")
        if gone:
            gc.collect()  # a model's modules hold reference cycles
            trim_heap()
            log.info("let go of %s (unused for %.0f s)", ", ".join(gone), idle_s)
        return gone

    def release_idle_forever(self, every_s: float = 15.0, also: Sequence[Callable[[float], object]] = ()) -> None:
        """:meth:`release_idle` every ``every_s`` seconds, for ever, then each of ``also`` with the idle time (e.g.
        projection.release_if_grown): the app's daemon thread; IDLE_RELEASE_S 0: never."""
        while IDLE_RELEASE_S > 0:
            time.sleep(every_s)
            for release in (self.release_idle, *also):
                try:
                    release(IDLE_RELEASE_S)
                except Exception:  # a thread of its own: log, never stop
                    log.exception("letting go of what is idle failed (%s)", getattr(release, "__name__", release))

    # --- embeddings -------------------------------------------------------------------------------
    def texts(self, a: Ready, b: Ready, texts: Sequence[str],
              priority: int = INTERACTIVE) -> tuple[np.ndarray, np.ndarray]:
        """A request's texts under both sides, (N, d_a) and (N, d_b) float32. Sides on one backbone run
        in one mixed-adapter pass; recent texts come from memory."""
        if a.enc is b.enc:
            va, vb = self.embeddings.sides(a.enc, texts, [a.adapter, b.adapter], priority=priority)
            return va, vb
        return (self.embeddings.sides(a.enc, texts, [a.adapter], priority=priority)[0],
                self.embeddings.sides(b.enc, texts, [b.adapter], priority=priority)[0])

    def corpus(self, r: Ready, corpus: Corpus, progress: Callable[[int, int], None] | None = None,
               wait: bool = False) -> np.ndarray:
        """A corpus's vectors under one side (cached). ``wait=False`` (a request): vectors not cached yet are
        computed by a background job (cache.Job, shown on the status line, cancellable, background priority);
        this request waits at most JOB_WAIT_S for it, then raises CacheBusy saying how far the job is. The jobs
        of the request's other sides (:meth:`hold`) start at the same time, and the message lists them too."""
        if wait:
            return self.embeddings.get_or_compute(r.enc, corpus.texts, r.adapter, progress=progress, wait=True,
                                                  sha=corpus.sha256, uploaded=corpus.uploaded)
        others = [] if self.embeddings.in_memory(r.key(corpus.sha256)) else \
            list({o.key(corpus.sha256): o for o in _held.get() if o.key(corpus.sha256) != r.key(corpus.sha256)}.values())
        for o in others:  # the request needs this corpus under its other sides too: their jobs start now, not after
            with contextlib.suppress(Exception):  # (an error shows when that side's own turn comes)
                self._corpus_job(o, corpus, 0.0)
        try:
            return self._corpus_job(r, corpus, JOB_WAIT_S)
        except CacheBusy as e:
            also = [f"{j.label}: {j.describe()}" for o in others for j in self.embeddings.jobs()
                    if j.key == o.key(corpus.sha256)]
            raise CacheBusy(str(e) + (" Also building " + "; ".join(also) + "." if also else "")) from None

    def _corpus_job(self, r: Ready, corpus: Corpus, wait_s: float) -> np.ndarray:
        return self.embeddings.get_or_compute(r.enc, corpus.texts, r.adapter, wait=False, sha=corpus.sha256,
                                              uploaded=corpus.uploaded, job_wait_s=wait_s,
                                              label=f"{r.side.spec} on {corpus.name}",
                                              keep=lambda: self._keep(r.enc.spec.key, (r.enc.spec.key, r.adapter)))

    def cancel_jobs(self) -> int:
        """Cancel every background corpus job (each stops after its current batch; what is embedded so far stays
        cached); returns how many ran. The status line says which, and how far each got, for CANCELLED_NOTE_S."""
        jobs = [j for j in self.embeddings.jobs() if not j.cancelled.is_set()]
        n = self.embeddings.cancel()
        if jobs:
            what = "; ".join(f"{j.label or 'a side'} at {j.done:,} of {j.total:,} texts" for j in jobs)
            with self._lock:
                self._cancelled = (time.monotonic(), what)
        return n

    def corpus_vectors(self, a: Side, b: Side, corpus: Corpus, wait: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A corpus's vectors under both sides, (N, d_a) and (N, d_b) float32 (cached); ``wait``: as :meth:`corpus`
        (True for the command line, which has no status line to come back to)."""
        with self.hold(a, b) as (ra, rb):
            return self.corpus(ra, corpus, wait=wait), self.corpus(rb, corpus, wait=wait)

    def embed(self, a: Side, b: Side, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts under both sides, (N, d_a) and (N, d_b) float32."""
        with self.hold(a, b) as (ra, rb):
            return self.texts(ra, rb, texts)

    def side_vectors(self, side: Side, texts: Sequence[str], priority: int = IDLE) -> np.ndarray:
        """(N, d) float32 vectors of ``texts`` under one side, not cached: a live run's frame (its snapshot as a
        side), a batch at a time in the pauses of the interactive traffic (IDLE), so that compares go first."""
        with self.hold(side) as (r,):
            return r.enc.embed(texts, r.adapter, priority=priority)

    def embed_bounded(self, a: Side, b: Side, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed` for the /embed API, with its work bounded: at most MAX_EMBED_CHARS characters in all
        and MAX_EMBED_TOKENS tokens per side (counted after each text is cut to the model's ``max_length``
        tokens, which is what the encoder embeds); more than EMBED_INTERACTIVE_TOKENS run at background
        priority, so a compare waits for at most one of its (small) batches."""
        if (chars := sum(len(t) for t in texts)) > MAX_EMBED_CHARS:
            raise InputError(f"{chars:,} characters in all; the API embeds at most {MAX_EMBED_CHARS:,} per call "
                             "(a text is cut to the model's first 128-256 tokens anyway): split the list or "
                             "shorten the texts")
        with self.hold(a, b) as (ra, rb):
            tokens = max(_tokens(r, texts) for r in (ra, rb))
            if tokens > MAX_EMBED_TOKENS:
                raise InputError(f"{tokens:,} tokens (each text cut to its model's limit); the API embeds at most "
                                 f"{MAX_EMBED_TOKENS:,} per call: split the list")
            return self.texts(ra, rb, texts, priority=BACKGROUND if tokens > EMBED_INTERACTIVE_TOKENS else INTERACTIVE)

    def cached_base(self, model: str, texts: Sequence[str], corpora: Sequence[Corpus],
                    max_new: int = 2) -> np.ndarray | None:
        """(N, d) float32 vectors of ``texts`` under ``model``'s base side, read from the cached vectors of
        ``corpora`` (shipped seeds or this host's cache), the at most ``max_new`` texts in none of them embedded
        (a request's pair). None when ``model`` is not loaded, or more texts are missing: it never loads a
        model and never embeds a corpus. A live run's step 0 (the base model) comes from here in a second."""
        with self._lock:
            enc = self._models.get(model)
        if enc is None:
            return None
        rows: dict[str, np.ndarray] = {}
        for c in corpora:
            if (v := self.embeddings.peek(enc, c.texts, None, sha=c.sha256)) is not None:
                rows.update((t, v[i]) for i, t in enumerate(c.texts) if t not in rows)
        missing = list(dict.fromkeys(t for t in texts if t not in rows))
        if len(missing) > max_new:
            return None
        if missing:
            side = parse_side(model)
            rows.update(zip(missing, self.embed(side, side, missing)[0]))
        return np.stack([rows[t] for t in texts]).astype(np.float32, copy=False)

    # --- index and map caches (shared by the features) ----------------------------------------------
    def index(self, r: Ready, corpus: Corpus) -> tuple[faiss_index.Index, np.ndarray]:
        """The FAISS index of a corpus's vectors under one side (built once, kept among the recent ones) and the vectors."""
        vecs = self.corpus(r, corpus)
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
        """One line about background work: models loading, corpus jobs with their progress, the warm-up.
        "Ready" only when nothing runs."""
        jobs = self.embeddings.jobs()
        with self._lock:
            cancelled = self._cancelled
        cancelled_note = (f"**Cancelled** building the index for {cancelled[1]}: what was embedded so far stays "
                          "cached; search or map again to resume" if cancelled
                          and time.monotonic() - cancelled[0] < CANCELLED_NOTE_S
                          and not any(j.cancelled.is_set() for j in jobs) else "")  # said once they have stopped
        if not self.status and not jobs and not cancelled_note:
            return ""
        status = dict(self.status)
        loading = [k for k, v in status.items() if v.startswith("loading the model")]
        busy = {k: v for k, v in status.items() if v != "ready" and k not in loading}
        parts = [f"**Loading {k}** (first use; up to a minute on 2 cores): requests for it wait" for k in loading]
        parts += [f"**Stopping the index for {j.label or 'a side'}** at {j.done:,} of {j.total:,} texts (cancelled; "
                  "it stops after its current batch)" if j.cancelled.is_set() else
                  f"**Building the index for {j.label or 'a side'}**: {j.describe()}, in the background "
                  "(other views work meanwhile)" for j in jobs]
        if busy:
            parts.append("Preparing in the background (other views work meanwhile): "
                         + "; ".join(f"{k}: {v}" for k, v in busy.items()))
        ready = " · ".join(([cancelled_note] if cancelled_note else [])
                           + (parts or ["Ready: models, adapters and built-in corpora are cached."]))
        return f"{ready} · Precision: {resolve_precision(self.device).describe()}"


def _tokens(r: Ready, texts: Sequence[str]) -> int:
    """Tokens the encoder runs for ``texts`` under side ``r``: each text with its prompt, cut to max_length."""
    ids, _ = tokenize(r.enc.tokenizer, r.enc.spec, texts, r.enc.max_length, r.enc.prompt_for(r.adapter))
    return sum(len(x) for x in ids)


__all__ = ["Lab", "Ready", "Side", "SideError", "parse_side", "ModelsBusy", "InputError", "AdapterError", "MAP_MAX"]
