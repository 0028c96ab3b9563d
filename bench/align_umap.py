"""Aligned base/tuned maps: umap's AlignedUMAP vs "UMAP of tuned initialised at the base layout + Procrustes".

Real embeddings, no model load: the shipped seed cache (assets/cache/embeddings, float16 chunks) holds the
default model's base and tuned vectors of the built-in corpora; the map of stsb is the same 2,000-text
sample the app maps (``Corpus.sample(MAP_MAX)``, rows of the 10K corpus's vectors).

The figure (lower is better), per corpus and method:

    kept drift = median over "kept" texts of |base_xy[i] - tuned_xy[i]| / spread

"Kept" texts are the quarter whose 10-NN set (cosine, in the embedding space) changed least between the
models (Jaccard >= its 75th percentile, and > 0): the model change moved them least relative to their
neighbours, so an aligned pair of maps should draw them in the same place. (The shipped adapter changes
most 10-NN sets almost entirely, median Jaccard 0.05-0.18, so a fixed bar such as 0.5 leaves no texts.)
``spread`` is the RMS distance of the points from their centre, averaged over the two layouts, so the
figure does not depend on a layout's arbitrary scale. A method could shrink the drift by collapsing or
scrambling a layout, so the trustworthiness (k=10) of each layout against its own embeddings is printed
beside it: a method wins only with trustworthiness kept. The drift of the other three quarters ("moved
drift", the texts whose neighbourhood changed more) is printed too: those may move, and a map that
shows what the fine-tune did moves them more than the kept ones.

    python bench/align_umap.py [--corpora topics snli stsb] [--seed 42] [--regularisation 0.01 0.1]

``--regularisation`` runs AlignedUMAP at each given alignment_regularisation (default: TwinMaps' own).
Fit times are after numba's compile of umap's cached kernels; AlignedUMAP builds its layout kernel with
numba.njit inside each call, so its times include that compile (several seconds), as in the app.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from embedlab import cache
from embedlab.corpora import builtin
from embedlab.lab import MAP_MAX, SEED_DIR
from embedlab.projection import TwinMaps, alignment_report

BASELINE = "init-procrustes"


def seed_vectors(corpus_name: str, model: str = "smollm2-135m") -> tuple[np.ndarray, np.ndarray]:
    """Base and tuned (N, d) float32 vectors of a built-in corpus from the shipped seed cache, rows
    restricted to the map's sample. Keys: ``{model}-{base|adapter sha}-{settings}-{corpus sha[:16]}``."""
    full = builtin(corpus_name)
    idx = full.sample_indices(MAP_MAX)
    sha = full.sha256[:16]
    folders = sorted(p for p in (SEED_DIR / "embeddings").glob(f"{model}-*-{sha}") if p.is_dir())
    base = [p for p in folders if p.name.startswith(f"{model}-base-")]
    tuned = [p for p in folders if p not in base]
    if len(base) != 1 or len(tuned) != 1:
        sys.exit(f"seed cache has no single base/tuned pair for {corpus_name} ({[p.name for p in folders]})")

    def load(folder: Path) -> np.ndarray:
        manifest = cache.read_manifest(folder / "manifest.json")
        parts = [cache.load_checked(folder / name, manifest[name]) for name in sorted(manifest)]
        if any(p is None for p in parts):
            sys.exit(f"corrupt seed chunk in {folder}")
        return np.concatenate(parts).astype(np.float32)[idx]

    return load(base[0]), load(tuned[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", nargs="+", default=["topics", "snli", "stsb"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--regularisation", type=float, nargs="+", default=[TwinMaps.alignment_regularisation])
    args = ap.parse_args()
    import numba
    import pynndescent
    import umap

    print(f"umap-learn {umap.__version__}, numba {numba.__version__}, pynndescent {pynndescent.__version__}")
    # numba compiles umap's kernels on first use: do it here so fit times are run times
    warm = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    for method in (BASELINE, "aligned-umap"):
        TwinMaps(seed=args.seed, method=method).fit(warm, warm[::-1].copy())
    # ratio: kept drift against the baseline's on the same corpus in this run (< 1: better aligned)
    print(f"{'corpus':8} {'n':>5} {'J med':>5} {'kept':>5} {'method':22} {'kept drift':>10} {'ratio':>6} "
          f"{'moved drift':>11} {'trust base':>10} {'trust tuned':>11} {'fit s':>6}")
    for name in args.corpora:
        base, tuned = seed_vectors(name)
        ref = None
        runs = [TwinMaps(seed=args.seed, method=BASELINE)]
        runs += [TwinMaps(seed=args.seed, alignment_regularisation=r) for r in args.regularisation]
        for m in runs:
            method = m.method if m.method == BASELINE else f"aligned-umap r={m.alignment_regularisation:g}"
            t0 = time.perf_counter()
            m.fit(base, tuned)
            dt = time.perf_counter() - t0
            r = alignment_report(base, tuned, m.xy_a, m.xy_b)
            ref = r["kept_drift"] if ref is None else ref
            print(f"{name:8} {len(base):5d} {r['median_jaccard']:5.3f} {r['n_kept']:5d} {method:22} "
                  f"{r['kept_drift']:10.3f} {r['kept_drift'] / ref:6.2f} {r['moved_drift']:11.3f} "
                  f"{r['trust_base']:10.3f} {r['trust_tuned']:11.3f} {dt:6.1f}", flush=True)


if __name__ == "__main__":
    main()
