"""The lab behind the web app: models, caches, and one function per view, each over two sides.

A view compares two :class:`~embedlab.side.Side` s (any model, adapter or training snapshot on
each). Plain functions over numpy arrays and dicts; app.py only lays them out. Shared state
(loaded models, caches) lives in one :class:`Lab` object, bounded; nothing per user lives here.

One request, start to end: app.py -> views (parse the two side specs) -> a Lab method here, which
holds the sides' backbones (:meth:`Lab.hold`, at most ``max_models`` in memory), embeds through the
:class:`~embedlab.cache.EmbeddingCache` (one mixed-adapter pass when both sides share a backbone),
and the forward pass runs in :mod:`embedlab.encode` on the compute thread.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import index as faiss_index
from .adapters import AdapterError
from .cache import EmbeddingCache, embedding_key
from .compute import BACKGROUND, INTERACTIVE, on_compute_thread, urgent
from .corpora import Corpus, InputError, builtin
from .encode import Encoder
from .loading import attach_adapter, cache_root, load_encoder
from .precision import resolve as resolve_precision
from .atomic import atomic_path
from .lru import LRU
from .projection import TwinMaps, neighbour_overlap, place_by_neighbours
from .registry import get_spec
from .side import ROOT, Side, SideError, adapter_roots, default_sides, parse_side
from .sts import spearman100

log = logging.getLogger(__name__)
SEED_DIR = ROOT / "assets" / "cache"  # shipped float16 vectors + maps of the built-in corpora (`python -m embedlab build-cache`)
WARM_CORPORA = ("topics", "snli", "stsb")
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
        self._map_build = threading.Lock()  # one uncached map at a time (see twin_map)
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
            info = attach_adapter(enc, path, allowed_roots=None if side.hub else adapter_roots())
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

    def _sample_vectors(self, r: Ready, full: Corpus, sample: Corpus) -> np.ndarray:
        """Vectors of a map's sample: rows of the whole corpus's when those are cached already
        (the 10K search corpus), else the sample embedded on its own (a fresh 50K upload)."""
        if sample is not full:
            fv = self.embeddings.peek(r.enc, full.texts, r.adapter, sha=full.sha256, uploaded=full.uploaded)
            if fv is not None:
                return fv[full.sample_indices(len(sample))]
        return self._corpus(r, sample)

    def corpus_vectors(self, a: Side, b: Side, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """A corpus's vectors under both sides, (N, d_a) and (N, d_b) float32 (cached)."""
        with self.hold(a, b) as (ra, rb):
            return self._corpus(ra, corpus), self._corpus(rb, corpus)

    def embed(self, a: Side, b: Side, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts under both sides, (N, d_a) and (N, d_b) float32."""
        with self.hold(a, b) as (ra, rb):
            return self._texts(ra, rb, texts)

    # --- views ------------------------------------------------------------------------------------
    def compare_pair(self, a: Side, b: Side, x: str, y: str) -> dict:
        """Cosine of one pair of texts under side A and side B. Urgent: the cheapest request, and the one
        every visitor waits on (compute.urgent)."""
        with urgent():
            va, vb = self.embed(a, b, [x, y])
        return {"a": float(va[0] @ va[1]), "b": float(vb[0] @ vb[1])}

    def batch_pairs(self, a: Side, b: Side, s1: list[str], s2: list[str], gold: list[float] | None) -> dict:
        """Cosines for many pairs under both sides; Spearman x100 against gold when given.

        Long work: its batches run at background priority, so single compares overtake them.
        """
        uniq = list(dict.fromkeys(s1 + s2))
        pos = {t: i for i, t in enumerate(uniq)}
        with self.hold(a, b) as (ra, rb):
            va, vb = self._texts(ra, rb, uniq, priority=BACKGROUND)
        i1, i2 = [pos[t] for t in s1], [pos[t] for t in s2]
        ca, cb = np.einsum("ij,ij->i", va[i1], va[i2]), np.einsum("ij,ij->i", vb[i1], vb[i2])
        out = {"s1": s1, "s2": s2, "gold": gold, "a": ca.tolist(), "b": cb.tolist()}
        if gold is not None and len(gold) >= 3:
            out["spearman_a"] = spearman100(ca, np.asarray(gold))
            out["spearman_b"] = spearman100(cb, np.asarray(gold))
        return out

    def anisotropy(self, a: Side, b: Side, n_pairs: int = 2000, seed: int = 0) -> dict:
        """Cosines of random sentence pairs from the STSBenchmark corpus under both sides.

        A useful embedding spreads unrelated sentences apart; a raw LM puts almost
        every pair near the same high cosine (its vectors share one dominant direction).
        """
        from .evaluation import anisotropy_texts, random_pair_cosines

        texts = anisotropy_texts(seed)
        va, vb = self.corpus_vectors(a, b, Corpus("anisotropy sample", texts, ("stsb",) * len(texts), ""))
        ca = random_pair_cosines(va, n_pairs, seed)
        return {"a": ca, "b": random_pair_cosines(vb, n_pairs, seed), "n_pairs": len(ca)}

    def _index(self, r: Ready, corpus: Corpus) -> tuple[faiss_index.Index, np.ndarray]:
        vecs = self._corpus(r, corpus)
        key = r.key(corpus.sha256)
        with self._lock:
            if (idx := self._indexes.get(key)) is not None:
                return idx, vecs
        idx = faiss_index.build(vecs)
        with self._lock:
            self._indexes.put(key, idx)
        return idx, vecs

    def search(self, a: Side, b: Side, corpus: Corpus, query: str, k: int = 10) -> dict:
        """Top-k corpus texts for a query under both sides, with overlap@k."""
        k = int(max(1, min(k, 50, len(corpus))))
        with self.hold(a, b) as (ra, rb):
            ia, ib = self._index(ra, corpus)[0], self._index(rb, corpus)[0]

            def query_both() -> tuple:  # one task on the compute thread: one wait behind background work
                qa, qb = self._texts(ra, rb, [query])
                return ia.search(qa, k), ib.search(qb, k)

            (sa, na), (sb, nb) = on_compute_thread(query_both)
        hits = lambda s, n: [(int(i), float(x)) for i, x in zip(n[0], s[0]) if i >= 0]  # noqa: E731
        res = {"k": k, "n": len(corpus), "a": hits(sa, na), "b": hits(sb, nb),
               "index": {"a": ia.kind, "b": ib.kind}, "recall_at_10": {"a": ia.recall_at_10, "b": ib.recall_at_10}}
        res["overlap"] = len({i for i, _ in res["a"]} & {i for i, _ in res["b"]}) / k
        return res

    def twin_map(self, a: Side, b: Side, corpus: Corpus, k: int = 10, seed: int = 42) -> dict:
        """Aligned UMAP layouts of one corpus under both sides (their dimensions may differ) + each text's
        neighbour overlap; cached on disk. Returns xy_a, xy_b (N, 2), jaccard (N,), nn_a, nn_b (N, k),
        vecs_a, vecs_b, params, corpus (the mapped sample)."""
        full, corpus = corpus, corpus.sample(MAP_MAX)
        with self.hold(a, b) as (ra, rb):
            key = self.map_key(ra, rb, corpus, k, seed)
            with self._lock:
                if (m := self._maps.get(key)) is not None:
                    return m
            # One map is built at a time (its texts' vectors, then UMAP): a request whose map is already in
            # memory (above) never waits behind a long build, e.g. a 20,000-text upload's.
            with self._map_build:
                with self._lock:  # built meanwhile by the request this one waited for
                    if (m := self._maps.get(key)) is not None:
                        return m
                va = self._sample_vectors(ra, full, corpus)
                vb = va if ra.key(corpus.sha256) == rb.key(corpus.sha256) else self._sample_vectors(rb, full, corpus)
                m = self._load_map(key, corpus)
                if m is None:
                    um = TwinMaps(seed=seed).fit(va, vb, same=vb is va)
                    jac, na, nb = neighbour_overlap(va, vb, k=min(k, len(corpus) - 1))
                    m = {"xy_a": um.base_xy, "xy_b": um.tuned_xy, "jaccard": jac, "nn_a": na, "nn_b": nb,
                         "params": um.params}
                    if not corpus.uploaded:  # an upload's map stays in memory only: one file per upload would fill the disk
                        _save_map(self.cache_dir / "maps" / f"{key}.npz", m)
                m = {**m, "corpus": corpus, "vecs_a": va, "vecs_b": vb}
                with self._lock:
                    self._maps.put(key, m)
                return m

    def map_cached(self, a: Side, b: Side, corpus: Corpus, k: int = 10, seed: int = 42) -> bool:
        """Whether :meth:`twin_map` would answer from memory or a map file, without fitting UMAP."""
        corpus = corpus.sample(MAP_MAX)
        if corpus.uploaded:
            return False
        with self.hold(a, b) as (ra, rb):
            key = self.map_key(ra, rb, corpus, k, seed)
        with self._lock:
            if key in self._maps:
                return True
        return any(p.is_file() for p in self._map_paths(key))

    def _map_paths(self, key: str) -> list[Path]:
        """Where map ``key`` may be on disk: the user cache, then the shipped seeds."""
        return [self.cache_dir / "maps" / f"{key}.npz"] + ([self.seed_dir / "maps" / f"{key}.npz"] if self.seed_dir else [])

    def _load_map(self, key: str, corpus: Corpus) -> dict | None:
        """A cached map from the user cache, else the shipped seeds; None when neither has a sound one."""
        if corpus.uploaded:
            return None
        for candidate in self._map_paths(key):
            if candidate.is_file():
                try:
                    z = np.load(candidate, allow_pickle=False)
                    m = {ours: z[theirs] for ours, theirs in _MAP_FILE.items()}
                    m["params"] = json.loads(str(z["params"]))
                    return m
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # npz members carry a CRC
                    log.warning("map cache %s unreadable or corrupt; recomputing", candidate)
        return None

    @staticmethod
    def map_key(a: Ready, b: Ready, corpus: Corpus, k: int = 10, seed: int = 42) -> str:
        """Cache key of one map: both sides' embedding keys plus the projection settings."""
        return hashlib.sha256("|".join([a.key(corpus.sha256), b.key(corpus.sha256),
                                        f"{TwinMaps(seed=seed).tag}-k{k}"]).encode()).hexdigest()[:24]

    def place_queries(self, a: Side, b: Side, m: dict, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Positions (Q, 2) of new texts on both layouts of map ``m``."""
        qa, qb = self.embed(a, b, queries)
        return place_by_neighbours(qa, m["vecs_a"], m["xy_a"]), place_by_neighbours(qb, m["vecs_b"], m["xy_b"])

    def evaluate(self, side: Side, run: Callable[[Encoder, str | None], dict]) -> dict:
        """``run(encoder, adapter name)`` with ``side``'s model held (an STS evaluation)."""
        with self.hold(side) as (r,):
            return run(r.enc, r.adapter)

    # --- start-up ---------------------------------------------------------------------------------
    def prepare(self, sides: tuple[Side, Side] | None = None, corpora: Sequence[str] = WARM_CORPORA) -> tuple[Side, Side]:
        """Make the default sides (or ``sides``) ready: models, the built-in corpora's vectors, maps and indexes."""
        a, b = sides or default_sides()
        self.status["model"] = f"loading {a.spec} and {b.spec}…"
        with self.hold(a, b):
            pass
        self.status["model"] = "ready"
        self.status["anisotropy"] = "embedding"
        self.anisotropy(a, b)
        self.status["anisotropy"] = "ready"
        for name in corpora:
            c = builtin(name)

            def prog(done: int, total: int, name: str = name) -> None:
                self.status[name] = f"embedding {done:,}/{total:,}"

            with self.hold(a, b) as readies:
                for r in readies:
                    self._corpus(r, c, progress=prog, wait=True)
                self.status[name] = "building map…"
                self.twin_map(a, b, c)
                for r in readies:
                    self._index(r, c)
            self.status[name] = "ready"
        return a, b

    def warm(self, sides: tuple[Side, Side] | None = None, corpora: Sequence[str] = WARM_CORPORA) -> None:
        """:meth:`prepare` in a background thread: failures are reported in the status line, never raised."""
        try:
            self.prepare(sides, corpora)
        except Exception as e:  # background thread: report, never crash the app
            log.exception("warm-up failed")
            self.status["error"] = f"warm-up failed: {e}"

    def export_seeds(self, sides: tuple[Side, Side] | None = None, corpora: Sequence[str] = WARM_CORPORA,
                     out: Path = SEED_DIR) -> list[Path]:
        """Write what :meth:`prepare` builds (vectors as float16, maps) to ``out``, replacing what was there.

        Run by ``python -m embedlab build-cache`` after an adapter changes; returns the files written.
        Everything is written to a sibling folder first and swapped in at the end: ``out`` may be
        this lab's own seed folder, which the export reads from while it runs.
        """
        from .evaluation import anisotropy_texts

        a, b = self.prepare(sides, corpora)
        out = Path(out)
        tmp = out.with_name(out.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        with self.hold(a, b) as (ra, rb):
            for t in [anisotropy_texts(0)] + [builtin(n).texts for n in corpora]:
                for r in ([ra, rb] if ra.key("") != rb.key("") else [ra]):
                    self.embeddings.export(r.enc, t, r.adapter, tmp / "embeddings")
            for name in corpora:
                c = builtin(name).sample(MAP_MAX)
                _save_map(tmp / "maps" / f"{self.map_key(ra, rb, c)}.npz", self.twin_map(a, b, builtin(name)))
        for sub in ("embeddings", "maps"):
            shutil.rmtree(out / sub, ignore_errors=True)
            (out / sub).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / sub, out / sub)
        shutil.rmtree(tmp, ignore_errors=True)
        return sorted(p for p in out.rglob("*") if p.is_file())

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
        ready = " · ".join(parts) or "Ready: models, adapters and built-in corpora are cached."
        return f"{ready} · Precision: {resolve_precision(self.device).describe()}"


# The map file's array names (kept from when the two sides were always base and tuned: the shipped
# seed maps use them) -> ours.
_MAP_FILE = {"xy_a": "base_xy", "xy_b": "tuned_xy", "jaccard": "jaccard", "nn_a": "nn_base", "nn_b": "nn_tuned"}


def _save_map(path: Path, m: dict) -> None:
    """A map's layouts and neighbour lists as .npz (written to a temp name, then renamed)."""
    with atomic_path(path) as tmp:
        np.savez(tmp, **{theirs: m[ours] for ours, theirs in _MAP_FILE.items()}, params=json.dumps(m["params"]))


__all__ = ["Lab", "Ready", "Side", "SideError", "parse_side", "ModelsBusy", "InputError", "AdapterError", "MAP_MAX",
           "ROOT"]
