"""FAISS at scale: exact (flat) vs IVF vs HNSW over 100K and 1M synthetic 576-d vectors.

For each size and index: build time, memory (resident-set growth while building), query
latency (one query at a time, the app's case, and a batch of 1,000) and recall@10 against
exact search. IVF and HNSW are swept over their search-time knob (nprobe, efSearch); the
summary line picks the fastest setting with recall@10 >= 0.95 and gives its speed-up over
exact search measured in the same process.

The vectors imitate sentence embeddings rather than being uniform noise (on which no
approximate index works and which no real corpus looks like): 2,000 overlapping topics
in a 96-d subspace (within-topic spread as large as the spread of the centres), plus
isotropic noise in all 576 dimensions, plus one shared offset direction (the anisotropy
of LM embeddings: random pairs have cosine ~0.6), L2-normalised. Queries are
fresh draws from the same distribution, not corpus members.

    python bench/index_scale.py                       # 100K and 1M (about 15 min on 2 cores)
    python bench/index_scale.py --sizes 100000        # quick
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

from embedlab.files import write_json
from embedlab.provenance import environment

DIM = 576  # SmolLM2-135M's width


def synthetic(n: int, d: int = DIM, seed: int = 0, topics: int = 2000, latent: int = 96) -> np.ndarray:
    """(n, d) float32, L2-normalised, clustered like sentence embeddings (see module docstring)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(1).standard_normal((d, latent)))[0].T.astype(np.float32)  # (latent, d)
    centres = np.random.default_rng(2).standard_normal((topics, latent)).astype(np.float32)
    offset = np.random.default_rng(3).standard_normal(d).astype(np.float32)
    offset *= 17.0 / np.linalg.norm(offset)  # random-pair cosine ~0.6, as LM embeddings have
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 100_000):  # in slices: no multi-GB temporaries
        m = min(n, lo + 100_000) - lo
        z = centres[rng.integers(0, topics, m)] + 1.0 * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ basis + 0.08 * rng.standard_normal((m, d), dtype=np.float32) + offset
        out[lo : lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss() -> int:
    return psutil.Process().memory_info().rss


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(truth, got)]))


def single_query_ms(index: faiss.Index, q: np.ndarray, n: int = 100) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        index.search(q[i : i + 1], 10)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def batch_ms(index: faiss.Index, q: np.ndarray) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    _, ids = index.search(q, 10)
    return (time.perf_counter() - t0) * 1000 / len(q), ids


def run_size(n: int, n_queries: int, hnsw_m: int) -> list[dict]:
    print(f"\n== {n:,} vectors x {DIM} d ==", flush=True)
    t0 = time.perf_counter()
    x = synthetic(n)
    q = synthetic(n_queries, seed=99)
    print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []

    def built(kind: str, make, settings: list[tuple[str, callable]]) -> None:
        gc.collect()
        before, t0 = rss(), time.perf_counter()
        index = make()
        build_s = time.perf_counter() - t0
        mem = (rss() - before) / 2**20
        for label, apply in settings:
            apply(index)
            per_q_batch, ids = batch_ms(index, q)
            row = {"n": n, "index": kind, "setting": label, "build_s": round(build_s, 1), "memory_mib": round(mem),
                   "query_ms_single": round(single_query_ms(index, q), 3), "query_ms_batch": round(per_q_batch, 4),
                   "recall_at_10": round(recall(truth, ids), 4)}
            rows.append(row)
            print(f"{kind:<6}{label:<16} build {build_s:7.1f} s  mem {mem:6.0f} MiB  "
                  f"single {row['query_ms_single']:8.3f} ms  batch {row['query_ms_batch']:8.4f} ms/q  "
                  f"recall@10 {row['recall_at_10']:.3f}", flush=True)
        del index

    def flat() -> faiss.Index:
        index = faiss.IndexFlatIP(DIM)
        index.add(x)
        return index

    exact = flat()
    _, truth = exact.search(q, 10)
    del exact
    built("flat", flat, [("exact", lambda i: None)])

    nlist = int(4 * np.sqrt(n)) if n <= 200_000 else 1024  # 1M: 1,024 lists keeps k-means training ~1 min on 2 cores

    def ivf() -> faiss.Index:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = x[np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(sample)
        index.add(x)
        return index

    built("ivf", ivf, [(f"nlist {nlist} nprobe {p}", lambda i, p=p: setattr(i, "nprobe", p))
                       for p in (4, 8, 16, 32, 64, 128)])

    def hnsw() -> faiss.Index:
        index = faiss.IndexHNSWFlat(DIM, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(x)
        return index

    built("hnsw", hnsw, [(f"M {hnsw_m} ef {ef}", lambda i, ef=ef: setattr(i.hnsw, "efSearch", ef))
                         for ef in (16, 32, 64, 128, 256)])
    return rows


def summary(rows: list[dict]) -> list[str]:
    lines = []
    for n in sorted({r["n"] for r in rows}):
        flat = next(r for r in rows if r["n"] == n and r["index"] == "flat")
        for kind in ("ivf", "hnsw"):
            ok = [r for r in rows if r["n"] == n and r["index"] == kind and r["recall_at_10"] >= 0.95]
            if not ok:
                lines.append(f"{n:>9,} {kind:<5} no setting reached recall@10 0.95")
                continue
            best = min(ok, key=lambda r: r["query_ms_single"])
            lines.append(f"{n:>9,} {kind:<5} {best['setting']:<22} recall@10 {best['recall_at_10']:.3f}  "
                         f"{flat['query_ms_single'] / best['query_ms_single']:6.1f}x faster than exact one query at a time, "
                         f"{flat['query_ms_batch'] / best['query_ms_batch']:6.1f}x in batches of 1,000 "
                         f"(goal at 1M: >= 0.95 at >= 10x)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "index_scale.json")
    args = ap.parse_args()
    print(f"FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.queries, args.hnsw_m)
        write_json(args.out, {"rows": rows, "environment": environment("cpu")})
    print("\nFastest setting with recall@10 >= 0.95:")
    print("\n".join(summary(rows)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
