"""FAISS indexes over L2-normalised embeddings (inner product = cosine): build and search.

Exact (IndexFlatIP) up to ``exact_max`` vectors; HNSW above, with its recall@k
against exact search measured on held-in queries so the UI can show it.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .compute import on_compute_thread

EXACT_MAX = 50_000


@dataclass
class Index:
    index: faiss.Index
    kind: str  # "exact" | "hnsw" | "ivf"
    n: int
    recall_at_10: float | None = None  # vs exact search; None for exact

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) float32 -> scores (Q, k) and ids (Q, k); ids are -1 where fewer than k exist."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return on_compute_thread(lambda: self.index.search(q, min(k, self.n)))


def build(vectors: np.ndarray, kind: str = "auto", exact_max: int = EXACT_MAX, hnsw_m: int = 32,
          ef_search: int = 128, nlist: int | None = None, nprobe: int = 16, measure_recall: bool = True) -> Index:
    """Index (N, d) float32 L2-normalised vectors. kind: auto | exact | hnsw | ivf."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if kind == "auto":
        kind = "exact" if n <= exact_max else "hnsw"
    if kind == "exact":
        idx: faiss.Index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        idx = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 80
        idx.hnsw.efSearch = ef_search
    elif kind == "ivf":
        nlist = nlist or max(1, int(np.sqrt(n)))  # ~sqrt(N) lists: FAISS guidance for up to ~1M vectors
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(x[np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)])
        idx.nprobe = nprobe
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    idx.add(x)
    out = Index(idx, kind, n)
    if kind != "exact" and measure_recall:
        out.recall_at_10 = recall_at_k(out, x, k=10)
    return out


def recall_at_k(index: Index, vectors: np.ndarray, k: int = 10, n_queries: int = 200, seed: int = 0) -> float:
    """Mean |approx top-k ∩ exact top-k| / k over sampled corpus vectors used as queries."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, truth = exact.search(q, k)
    _, got = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got)]))
