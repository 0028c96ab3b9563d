"""2-D maps of two embedding spaces of the same texts (base vs tuned), aligned so points can be compared.

The tuned map is a UMAP fit initialised at the base layout, then rotated/scaled
onto it by orthogonal Procrustes: a point that keeps its neighbours stays put,
a point whose neighbourhood changed moves. umap's estimator shape: parameters
in ``__init__``, work in ``fit``.
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
    """Rotation + uniform scale + shift taking ``src`` (N, 2) as close as possible to ``dst`` (N, 2)."""
    a, b = src - src.mean(0), dst - dst.mean(0)
    R, _ = orthogonal_procrustes(a, b)
    s = float(np.linalg.norm(b) / max(np.linalg.norm(a), 1e-12))
    return _Similarity(src.mean(0), dst.mean(0), R, s)


@dataclass
class AlignedUMAP:
    """Two aligned 2-D UMAP layouts of the same N texts embedded by two models."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 42
    base_xy: np.ndarray = field(init=False, repr=False)
    tuned_xy: np.ndarray = field(init=False, repr=False)

    def fit(self, base: np.ndarray, tuned: np.ndarray, same: bool = False) -> "AlignedUMAP":
        """base, tuned: (N, d) float32 L2-normalised (d may differ between them).
        ``same``: tuned is base (no adapter), so both layouts are the base layout."""
        import umap

        n = len(base)
        if n < 4 or len(tuned) != n:
            raise ValueError("a map needs at least 4 texts embedded by both models")
        k = max(2, min(self.n_neighbors, n - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs/random_state notice, spectral init fallbacks
            self._ub = umap.UMAP(n_neighbors=k, min_dist=self.min_dist, metric="cosine", random_state=self.seed,
                                 init="spectral" if n > k + 1 else "random")
            self.base_xy = self._ub.fit_transform(base).astype(np.float32)
            if same:
                self.tuned_xy = self.base_xy
                return self
            self._ut = umap.UMAP(n_neighbors=k, min_dist=self.min_dist, metric="cosine", random_state=self.seed,
                                 init=self.base_xy)
            raw = self._ut.fit_transform(tuned).astype(np.float32)
        self._align = procrustes(raw, self.base_xy)
        self.tuned_xy = self._align(raw)
        return self

    @property
    def params(self) -> dict:
        return {"method": "UMAP, tuned initialised at base layout + Procrustes", "n_neighbors": self.n_neighbors,
                "min_dist": self.min_dist, "metric": "cosine", "seed": self.seed}


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
