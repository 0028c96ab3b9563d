"""Embedding a big user corpus on the CPU: progress, sentences/s, and resuming after a SIGKILL.

Builds a corpus of N distinct sentences (every sentence of the bundled STS, SICK and
NLI files; past those, numbered recombinations of their halves, marked as such), runs
`python -m embedlab embed` on it in a child process, SIGKILLs the child once a few
cache chunks are on disk, runs the same command again, and checks that the second run
computed only what was missing and that the result equals a fresh encode of a sample.

    python bench/embed_corpus.py --model minilm-l6 --n 100000      # the 100K run (minutes)
    python bench/embed_corpus.py --model smollm2-135m --n 6144     # the default model's rate
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedlab import ROOT


def corpus_sentences(n: int) -> tuple[list[str], int]:
    """n distinct sentences and how many of them are real (the rest are recombinations)."""
    from embedlab.nli import read_triplets
    from embedlab.sts import TASKS, load_task

    seen: dict[str, None] = {}
    for task in TASKS:
        t = load_task(task)
        seen.update(dict.fromkeys(s.strip() for s in t.s1 + t.s2 if s.strip()))
    tri = read_triplets(ROOT / "assets/data/NLI/snli_all_triplets.csv")
    seen.update(dict.fromkeys(tri.anchor + tri.positive + tri.negative))
    real = [s.replace("\n", " ") for s in seen if len(s) < 500]
    out = real[:n]
    rng = np.random.default_rng(0)
    k = 0
    while len(out) < n:  # recombine the first half of one sentence with the second half of another
        a, b = real[rng.integers(len(real))].split(), real[rng.integers(len(real))].split()
        out.append(" ".join(a[: max(1, len(a) // 2)] + b[len(b) // 2 :]) + f" [{k}]")
        k += 1
    return out, min(n, len(real))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--kill-after-chunks", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embed-corpus-"))
    texts, n_real = corpus_sentences(args.n)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"corpus: {len(texts):,} sentences ({n_real:,} real, {len(texts) - n_real:,} recombined), "
          f"{corpus.stat().st_size / 2**20:.1f} MiB", flush=True)
    env = {**os.environ, "EMBEDLAB_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    from embedlab.loading import cache_root

    models = cache_root() / "models"
    (work / "cache").mkdir()
    if models.is_dir():  # reuse converted weights; only the embeddings start empty
        (work / "cache" / "models").symlink_to(models)
    cmd = [sys.executable, "-m", "embedlab", "embed", str(corpus), "--model", args.model, "--device", "cpu",
           "--out", str(work / "vecs.npy")]

    # run 1: killed with SIGKILL once some chunks are cached
    log1 = open(work / "run1.log", "w")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
    while p.poll() is None:
        manifests = list((work / "cache" / "embeddings").glob("*/manifest.json"))
        if manifests and len(json.loads(manifests[0].read_text() or "{}")) >= args.kill_after_chunks:
            os.kill(p.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    p.wait()
    killed_at = time.perf_counter() - t0
    log1.close()
    chunks = len(json.loads(manifests[0].read_text())) if manifests else 0
    print(f"run 1: SIGKILL after {killed_at:.0f} s with {chunks} chunk(s) cached (exit {p.returncode})", flush=True)

    # run 2: the same command resumes
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise SystemExit(f"run 2 failed:\n{out[-2000:]}")
    first = next(line for line in r.stdout.splitlines() if "already in the cache" in line)
    wrote = next(line for line in r.stdout.splitlines() if line.startswith("wrote"))
    rate = next(line for line in r.stdout.splitlines() if "sentences/s" in line)
    progress_lines = len(re.findall(r"\d+%\|", r.stderr))
    print(f"run 2: {first}\nrun 2: {rate}\nrun 2: {wrote}\nrun 2: {wall:.0f} s wall including model load; "
          f"{progress_lines} progress-bar updates on stderr", flush=True)

    vecs = np.load(work / "vecs.npy")
    order = (work / "vecs.txt").read_text(encoding="utf-8").splitlines()
    assert vecs.shape[0] == len(texts) == len(order), (vecs.shape, len(texts))
    from embedlab.loading import load_encoder

    os.environ["EMBEDLAB_CACHE"] = str(work / "cache")
    enc = load_encoder(args.model, device="cpu")
    idx = np.random.default_rng(1).choice(len(order), size=64, replace=False)  # from both runs' chunks
    fresh = enc.embed([order[i] for i in idx])
    cos = np.einsum("ij,ij->i", fresh, vecs[idx])
    print(f"check: {len(idx)} sampled rows vs a fresh encode: min cosine {cos.min():.6f} "
          f"({'OK' if cos.min() > 0.9999 else 'MISMATCH'})")


if __name__ == "__main__":
    main()
