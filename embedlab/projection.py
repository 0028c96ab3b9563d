"""2-D maps of two embedding spaces of the same texts (base vs tuned), aligned so points can be compared.

A point that keeps its neighbours should stay put between the two maps; a point whose
neighbourhood changed should move. umap's estimator shape: parameters in ``__init__``,
work in ``fit``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np
from scipy.linalg import orthogonal_procrustes

from .compute import trim_heap


@dataclass
class _Similarity:
    """x -> (x - mu_src) @ R * s + mu_dst."""

    mu_src: np.ndarray
    mu_dst: np.ndarray
    R: np.ndarray
    s: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mu_src) @ self.R * self.s + self.mu_dst).astype(np.float32)


def procrustes(src: np.ndarray, dst: np.ndarray) -> _Similarity:
    """Rotation + uniform scale + shift taking ``src`` (N, 2) as close as possible to ``dst`` (N, 2) in the
    least-squares sense: minimises sum |s (a_i R) - b_i|^2 over centred a, b."""
    a, b = src - src.mean(0), dst - dst.mean(0)
    R, sv_sum = orthogonal_procrustes(a, b)
    # d/ds of |s a R - b|^2 = 0  ->  s = trace(R^T a^T b) / |a|^2 = (sum of singular values of a^T b) / |a|^2
    s = float(sv_sum / max(float(np.sum(a * a)), 1e-12))
    return _Similarity(src.mean(0), dst.mean(0), R, s)


METHODS = ("init-procrustes", "aligned-umap")


@dataclass
class TwinMaps:
    """Two aligned 2-D UMAP layouts, ``xy_a`` and ``xy_b`` ((N, 2) float32 each), of the same N texts
    embedded by two models.

    ``method``:
    - ``"aligned-umap"``: umap's AlignedUMAP over both embeddings, with text i of one related to text i of
      the other. Both layouts are optimised together; a penalty pulls each text towards its position in
      the other layout, weighted by how much its neighbourhood is shared between the two k-NN graphs, so
      texts that kept their neighbours stay put and texts whose neighbourhood changed are free to move.
    - ``"init-procrustes"``: UMAP of base; UMAP of tuned started at the base layout, then rotated/scaled
      onto it by least-squares Procrustes.
    """

    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 42
    method: str = "aligned-umap"
    # umap's default is 0.01 (for many slices with a window); for two layouts 0.1 halves the drift of the
    # texts that kept their neighbours at <= 0.02 trustworthiness (bench/align_umap.py)
    alignment_regularisation: float = 0.1
    xy_a: np.ndarray = field(init=False, repr=False)
    xy_b: np.ndarray = field(init=False, repr=False)
    _same: bool = field(default=False, init=False, repr=False)  # the last fit had no adapter

    def fit(self, base: np.ndarray, tuned: np.ndarray, same: bool = False) -> "TwinMaps":
        """base, tuned: (N, d) float32 L2-normalised (d may differ between them).
        ``same``: tuned is base (no adapter), so both layouts are the base layout."""
        if self.method not in METHODS:
            raise ValueError(f"unknown map method {self.method!r}; one of {', '.join(METHODS)}")
        n = len(base)
        if n < 4 or len(tuned) != n:
            raise ValueError("a map needs at least 4 texts embedded by both models")
        self._same = same
        if same or self.method == "init-procrustes":
            self.xy_a = laid_out(_umap, base, None, self.n_neighbors, self.min_dist, self.seed)
            if same:
                self.xy_b = self.xy_a
            else:
                raw = laid_out(_umap, tuned, self.xy_a, self.n_neighbors, self.min_dist, self.seed)
                self.xy_b = procrustes(raw, self.xy_a)(raw)
            return self
        self.xy_a, self.xy_b = aligned_umap([base, tuned], self.n_neighbors, self.min_dist, self.seed,
                                            self.alignment_regularisation)
        return self

    @property
    def tag(self) -> str:
        """Method version + every setting, for cache keys: a map cached under another tag is not this one's."""
        extra = f"-r{self.alignment_regularisation:g}" if self.method == "aligned-umap" else ""
        return f"{MAP_VERSION[self.method]}-n{self.n_neighbors}-d{self.min_dist:g}{extra}-s{self.seed}"

    @property
    def params(self) -> dict:
        """What made the layouts of the last fit (stored with a cached map)."""
        p = {"version": MAP_VERSION[self.method], "tag": self.tag, "n_neighbors": self.n_neighbors,
             "min_dist": self.min_dist, "metric": "cosine", "seed": self.seed}
        if self._same:
            return {"method": "UMAP of base (no adapter: both panels show the base layout)", **p}
        if self.method == "aligned-umap":
            return {"method": "umap.AlignedUMAP of base and tuned, text i related to text i",
                    "alignment_regularisation": self.alignment_regularisation, **p}
        return {"method": "UMAP, tuned initialised at base layout + least-squares Procrustes", **p}


# Changes whenever a method's output changes, so maps cached by an older method are not served as a newer one's.
MAP_VERSION = {"aligned-umap": "aligned-umap-v1", "init-procrustes": "init-procrustes-v2"}


def aligned_umap(vectors: Sequence[np.ndarray], n_neighbors: int, min_dist: float, seed: int,
                 alignment_regularisation: float) -> np.ndarray:
    """(S, N, 2) float32 layouts of the same N texts embedded S times (each (N, d), L2-normalised), laid out
    together by umap's AlignedUMAP with text i related to text i in the next layout; in the layout process when
    serving (:func:`laid_out`)."""
    n = len(vectors[0]) if len(vectors) else 0
    if len(vectors) < 2 or n < 4 or any(len(v) != n for v in vectors):
        raise ValueError("aligned layouts need at least 2 embeddings of the same >= 4 texts")
    return laid_out(_aligned_umap, [np.asarray(v, dtype=np.float32) for v in vectors], n_neighbors, min_dist,
                    seed, alignment_regularisation)


def _umap_settings(n: int, n_neighbors: int, min_dist: float, seed: int) -> dict:
    # random_state makes umap run single-threaded and so the same on every run
    return dict(n_neighbors=max(2, min(n_neighbors, n - 1)), min_dist=min_dist, metric="cosine", random_state=seed)


def _aligned_umap(vectors: list[np.ndarray], n_neighbors: int, min_dist: float, seed: int,
                  alignment_regularisation: float) -> np.ndarray:
    import umap

    n = len(vectors[0])
    au = umap.AlignedUMAP(alignment_regularisation=alignment_regularisation, transform_seed=seed,
                          **_umap_settings(n, n_neighbors, min_dist, seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs/random_state notice, spectral init fallbacks
        au.fit(vectors, relations=[{i: i for i in range(n)} for _ in range(len(vectors) - 1)])
    return np.stack([fill_disconnected(v, xy) for v, xy in zip(vectors, au.embeddings_)]).astype(np.float32)


def _umap(x: np.ndarray, init: np.ndarray | None, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """(N, 2) float32 UMAP layout of ``x``, started at ``init`` ((N, 2); None: spectral, or random when too few)."""
    import umap

    kw = _umap_settings(len(x), n_neighbors, min_dist, seed)
    start = init if init is not None else "spectral" if len(x) > kw["n_neighbors"] + 1 else "random"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(init=start, **kw).fit_transform(x).astype(np.float32)


# --- where layouts run ---------------------------------------------------------------------------------
# UMAP is numba code that holds the GIL while it runs (and its first compile, ~20 s, is Python that holds it too).
# In a thread of the serving process it took the GIL from the compute thread between every torch op of every
# forward pass: a compare beside one map went from 0.2 s to 1.6 s (p50). Served, layouts run in a process of their
# own, at a lower CPU priority than the serving process, one at a time.
log = logging.getLogger(__name__)
LAYOUT_NICE = 5  # the layout process's niceness over the server's: compares and training steps go first
# A layout of MAP_MAX texts takes seconds, a first one ~20 s more to compile; a child that has not answered in this
# long is stuck (a stopped process, a deadlock) and is replaced, not waited on forever by a request holding two models
LAYOUT_TIMEOUT_S = 300.0
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_process = False
# A layout process keeps some of what its layouts allocate (numba's specialisations, the allocator's pages): +75 MiB of
# anonymous memory over one worst-request sequence (bench/load.py --worst --probe, 2026-12-07). Idle for the app's
# idle time and more than this above its size after its warm-up, it is replaced by a fresh one (release_if_grown).
LAYOUT_REGROW_MIB = 48.0
_busy = 0  # layouts submitted and not returned yet
_last_used = 0.0  # time.monotonic() when the last layout returned
_warm_mib: float | None = None  # the layout process's anonymous memory after its warm-up


class LayoutError(RuntimeError):
    """The layout process failed (it died, could not start or stopped answering): shown to the user as is."""


def layouts_in_a_process(on: bool = True) -> None:
    """Run every layout (:func:`laid_out`) in one child process from now on, started now (the app calls this;
    tests, the CLI and the benches lay out in the calling thread unless they ask)."""
    global _in_process, _pool
    _in_process = on
    if on:
        _layout_pool()
    else:
        with _pool_lock:
            pool, _pool = _pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """A spawned child imports the parent's main script first (app.py: Gradio and torch, 7 s and 500 MB); the
    layout process needs this module alone, so the script's path is hidden while the child starts."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__.pop(k) for k in ("__file__",) if k in main.__dict__}
    spec, main.__spec__ = getattr(main, "__spec__", None), None
    try:
        yield
    finally:
        main.__dict__.update(saved)
        main.__spec__ = spec


def _layout_pool() -> ProcessPoolExecutor:
    """The layout process, started when there is none (spawned, not forked: a fork of a process running torch's
    OpenMP threads can hang)."""
    global _pool
    import multiprocessing

    with _pool_lock:
        if _pool is None:
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_layout_process, initargs=(os.getpid(),))
            try:
                with _main_script_hidden():
                    pool.submit(int).result(timeout=LAYOUT_TIMEOUT_S)  # the child starts in this call
            except (BrokenProcessPool, OSError, TimeoutError) as e:
                _stop(pool)
                log.error("the layout process did not start: %r", e)
                raise LayoutError("the map layout failed on the server (its process did not start); try again") from None
            _pool = pool
        return _pool


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down without waiting, killing its child: a stuck layout would otherwise run on (3.11's
    executor has no terminate_workers)."""
    for proc in _children(pool).values():
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _children(pool: ProcessPoolExecutor | None) -> dict:
    """The pool's child processes, pid -> multiprocessing.Process (3.11's executor keeps them in ``_processes``)."""
    return dict(getattr(pool, "_processes", None) or {})


def _init_layout_process(parent: int) -> None:
    # LAYOUT_NICE over the server's main thread, not over the thread that started this process (a live run's map
    # thread runs nicer still, live.TRAIN_NICE, and a child inherits its starter's niceness)
    from .compute import lower_priority

    lower_priority(LAYOUT_NICE, than=parent)  # False when the parent has gone: the watch below ends this process
    # A server stopped by a signal does not shut its pool down: the child must not outlive it (~500 MB)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="parent-watch").start()
    try:
        import numba

        numba.set_num_threads(1)  # one core for the layout, the other for the compute thread
    except ImportError:
        pass


def _exit_with(parent: int) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def warm_up() -> None:
    """Compile UMAP's code (numba: ~20 s of one core, once per process; where layouts run) on a small random map,
    so that a first map or live run does not wait for it; then note the layout process's size (release_if_grown)."""
    global _warm_mib
    v = np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32)
    aligned_umap([v, v + 0.1], 15, 0.1, 0, 0.1)
    with _pool_lock:
        _warm_mib = _anonymous_mib(_pool)


def layouts_elsewhere() -> bool:
    """Whether layouts run in the layout process (the app), not in the calling process."""
    return _in_process


def _anonymous_mib(pool: ProcessPoolExecutor | None) -> float | None:
    """The layout process's anonymous resident memory (MiB; Linux's RssAnon), None when unknown."""
    for pid in _children(pool):
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))
        except (OSError, StopIteration, ValueError, IndexError):
            return None
    return None


def release_if_grown(idle_s: float) -> bool:
    """Replace the layout process by a fresh, warmed-up one when no layout has run for ``idle_s`` seconds and it
    holds more than LAYOUT_REGROW_MIB of anonymous memory above its size after its warm-up (what its layouts left
    behind, which no trim returns). The warm-up (~20-30 s of one core, at the layout process's lower priority) runs
    in the calling thread; a layout asked for meanwhile waits for it, as at the app's start. True when replaced."""
    global _pool
    with _pool_lock:
        pool, warm = _pool, _warm_mib
        if pool is None or warm is None or _busy or time.monotonic() - _last_used < idle_s:
            return False
        size = _anonymous_mib(pool)
        if size is None or size - warm <= LAYOUT_REGROW_MIB:
            return False
        _pool = None
    _stop(pool)
    log.info("the layout process held %.0f MiB, %.0f more than after its warm-up: replaced by a fresh one",
             size, size - warm)
    warm_up()
    return True


def laid_out(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (a module-level function of this module, picklable arguments) in the layout process when
    :func:`layouts_in_a_process` is on, else here. A process that died (killed for memory) or stopped answering
    (LAYOUT_TIMEOUT_S) is replaced at the next call; this call raises LayoutError."""
    global _pool, _busy, _last_used
    if not _in_process:
        return fn(*args)
    with _pool_lock:
        _busy += 1
    try:
        pool = _layout_pool()
        return pool.submit(_then_trim, fn, *args).result(timeout=LAYOUT_TIMEOUT_S)  # submit raises BrokenProcessPool too
    except (BrokenProcessPool, TimeoutError) as e:
        with _pool_lock:
            if _pool is pool:
                _pool = None
        _stop(pool)
        why = "stopped answering" if isinstance(e, TimeoutError) else "stopped"
        log.error("the layout process %s; a new one starts at the next layout", why)
        raise LayoutError(f"the map layout failed on the server (its process {why}); try again") from None
    finally:
        with _pool_lock:
            _busy -= 1
            _last_used = time.monotonic()


def _then_trim(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the layout process, then its free heap handed back: a map's k-NN graph and UMAP's arrays are
    freed but stayed resident (the layout process grew 360 -> 422 MiB of anonymous memory over one worst-request
    sequence, bench/load.py --worst)."""
    try:
        return fn(*args)
    finally:
        trim_heap()


def fill_disconnected(vectors: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """AlignedUMAP leaves texts that its k-NN graph disconnected at NaN: place them by their neighbours."""
    xy = np.asarray(xy, dtype=np.float32)
    bad = ~np.isfinite(xy).all(1)
    if bad.any():
        if bad.all():
            raise ValueError("the map layout failed: no text has a position")
        xy = xy.copy()
        xy[bad] = place_by_neighbours(vectors[bad], vectors[~bad], xy[~bad])
    return xy


def alignment_report(base: np.ndarray, tuned: np.ndarray, base_xy: np.ndarray, tuned_xy: np.ndarray,
                     k: int = 10) -> dict:
    """How well two layouts of the same texts are aligned, and how faithful each is.

    base, tuned (N, d) L2-normalised; base_xy, tuned_xy (N, 2). A text's drift is the distance between
    its two positions in units of the layouts' spread (RMS distance from the centre, averaged over both
    layouts), so the figure does not depend on a layout's arbitrary scale.

    - ``kept_drift``: median drift of the "kept" texts, the quarter whose k-NN set changed least between
      the models (Jaccard >= its 75th percentile and > 0). Those should stay put: lower is better aligned.
      (A fixed Jaccard bar does not work: a fine-tune can change almost every text's 10-NN set.)
    - ``moved_drift``: median drift of the other texts, which may move.
    - ``trust_base``/``trust_tuned``: sklearn trustworthiness (k, cosine) of each layout against its
      embeddings, so that no method can look aligned by collapsing or scrambling a layout.
    """
    from sklearn.manifold import trustworthiness

    jac, _, _ = neighbour_overlap(base, tuned, k=k)
    spread = float(np.sqrt(np.mean([np.mean(np.sum((xy - xy.mean(0)) ** 2, 1)) for xy in (base_xy, tuned_xy)])))
    drift = np.linalg.norm(base_xy - tuned_xy, axis=1) / max(spread, 1e-12)
    kept = (jac >= np.percentile(jac, 75)) & (jac > 0)
    return {"median_jaccard": float(np.median(jac)), "n_kept": int(kept.sum()),
            "kept_drift": float(np.median(drift[kept])) if kept.any() else float("nan"),
            "moved_drift": float(np.median(drift[~kept])) if (~kept).any() else float("nan"),
            "trust_base": float(trustworthiness(base, base_xy, n_neighbors=k, metric="cosine")),
            "trust_tuned": float(trustworthiness(tuned, tuned_xy, n_neighbors=k, metric="cosine"))}


def place_by_neighbours(queries: np.ndarray, vectors: np.ndarray, xy: np.ndarray, k: int = 5) -> np.ndarray:
    """Map coordinates for new texts: the similarity-weighted mean position of their k nearest corpus texts.

    queries (Q, d), vectors (N, d) L2-normalised, xy (N, 2) -> (Q, 2). Needs no
    fitted UMAP model, so a map loaded from cache can still place queries.
    """
    sims = queries @ vectors.T
    top = np.argsort(-sims, axis=1)[:, : min(k, len(vectors))]
    w = np.take_along_axis(sims, top, axis=1).clip(min=1e-6)
    return (np.einsum("qk,qkc->qc", w, xy[top]) / w.sum(1, keepdims=True)).astype(np.float32)


def knn(vectors: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's k nearest other rows by cosine (exact, FAISS)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    _, nn = idx.search(x, min(k + 1, len(x)))
    # drop self (usually column 0, but duplicates can tie)
    return np.array([[j for j in row if j != i][:k] for i, row in enumerate(nn)])


def neighbour_overlap(base: np.ndarray, tuned: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-text Jaccard of its k-NN sets under base and tuned: (N,) in [0, 1], plus both (N, k) lists."""
    nb, nt = knn(base, k), knn(tuned, k)
    jac = np.array([len(set(a) & set(b)) / max(1, len(set(a) | set(b))) for a, b in zip(nb, nt)], dtype=np.float32)
    return jac, nb, nt
