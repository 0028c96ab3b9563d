"""Disk and memory over many live runs: do the files and the process's memory stay flat?

Runs N live runs one after another in this process, as the app's Train tab runs them (embedlab.live.Manager, the
Trainer on the real model, frames and snapshots, the download zip), each a different session; prints after each run
the bytes under the live-runs folder, how many run folders are left, and this process's resident memory. Each
run uses the settings that write the most per step: LoRA rank 64 (the cap), one step, a small batch, so the
disk cap (``--max-disk-mb``, the app's default 1024) is reached within the N runs and its effect shows.

    python bench/live_disk.py                        # 20 runs of smollm2-135m, cap 200 MB
    python bench/live_disk.py --runs 20 --max-disk-mb 1024 --model gemma3-270m

Goals (issue 22): the disk stays flat over 20 runs (at most the cap plus one run), and so does the memory (each
run's copy of the model is handed back after it: within ~200 MiB of the level after the first run).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def rss_mib() -> float:
    """This process's resident set size (MiB)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-disk-mb", type=float, default=200.0)
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="live-disk-"))
    os.environ["EMBEDLAB_LIVE_DIR"] = str(root)
    from embedlab import live

    mgr = live.Manager(root, max_disk_mb=args.max_disk_mb, maps=False)
    s = live.settings("Advanced", args.model, steps=1, batch_size=8, lr=3e-4, lora_r=args.rank, temperature=0.05)
    print(f"{args.runs} runs of {args.model} (1 step, batch 8, LoRA rank {args.rank}), disk cap {args.max_disk_mb:g} MB,"
          f" folder {root}")
    print(f"{'run':>4} {'s':>6} {'live folder MB':>15} {'runs kept':>10} {'RSS MiB':>9}")
    first_rss = None
    sizes = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        run = mgr.submit(f"session-{i}", s, pair=("A man is playing a guitar.", "A person plays an instrument."))
        mgr.wait(run)
        if run.state != "done":
            raise SystemExit(f"run {i} ended {run.state}: {run.message}")
        mb = live.folder_bytes(root) / 2**20
        kept = len(list(root.glob(f"*/{live.LIVE_PREFIX}*")))
        rss = rss_mib()
        first_rss = first_rss or rss
        sizes.append(live.folder_bytes(run.folder) / 2**20 if run.folder.exists() else float("nan"))
        print(f"{i + 1:>4} {time.perf_counter() - t0:>6.1f} {mb:>15.1f} {kept:>10} {rss:>9.0f}", flush=True)
    print(f"one run's folder: {min(sizes):.1f}-{max(sizes):.1f} MB; final folder {mb:.1f} MB against the cap "
          f"{args.max_disk_mb:g} MB; RSS {first_rss:.0f} MiB after the first run, {rss:.0f} MiB after the last "
          f"({rss - first_rss:+.0f} MiB)")


if __name__ == "__main__":
    main()
