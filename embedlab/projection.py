"""2-D maps of two embedding spaces of the same texts (base vs tuned), aligned so points can be compared.

A point that keeps its neighbours should stay put between the two maps; a point whose
neighbourhood changed should move. umap's estimator shape: parameters in ``__init__``,
work in ``fit``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import faiss
import numpy as np
from scipy.linalg import orthogonal_procrustes


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
        import umap

        if self.method not in METHODS:
            raise ValueError(f"unknown map method {self.method!r}; one of {', '.join(METHODS)}")
        n = len(base)
        if n < 4 or len(tuned) != n:
            raise ValueError("a map needs at least 4 texts embedded by both models")
        k = max(2, min(self.n_neighbors, n - 1))
        # random_state makes umap run single-threaded and so the same on every run
        kw = dict(n_neighbors=k, min_dist=self.min_dist, metric="cosine", random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs/random_state notice, spectral init fallbacks
            if same or self.method == "init-procrustes":
                self.xy_a = umap.UMAP(init="spectral" if n > k + 1 else "random", **kw).fit_transform(base)
                self.xy_a = self.xy_a.astype(np.float32)
            self._same = same
            if same:
                self.xy_b = self.xy_a
                return self
            if self.method == "init-procrustes":
                raw = umap.UMAP(init=self.xy_a, **kw).fit_transform(tuned).astype(np.float32)
                self.xy_b = procrustes(raw, self.xy_a)(raw)
                return self
            au = umap.AlignedUMAP(alignment_regularisation=self.alignment_regularisation, transform_seed=self.seed,
                                  **kw)
            au.fit([base, tuned], relations=[{i: i for i in range(n)}])
        self.xy_a, self.xy_b = (fill_disconnected(v, xy) for v, xy in zip((base, tuned), au.embeddings_))
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
