"""Memory that new input shapes cost: RSS while one model embeds 2-sentence batches of many distinct lengths, twice.

Each new (batch, length) shape makes oneDNN build kernels (and torch buffers) for it, which stay for the next batch of
that shape; a second round of the same shapes should cost nothing. What a fresh app's first compares add (issue 20:
the worst-request bench's idle case, 220-440 MiB) is mostly this. Compare with a smaller primitive cache:

    python -m bench.shape_memory                                   # the app's default model and precision
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16 LRU_CACHE_CAPACITY=16 python -m bench.shape_memory   # what app.py sets
(one intra-op thread; its memory may be measured beside other work, its times only on a quiet machine)
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import psutil


def rss_mib() -> int:
    return psutil.Process().memory_info().rss // 2**20


def heap_in_use_mib() -> int:
    """glibc's heap in use (mallinfo2's uordblks), MiB: what the allocations hold, not the free parts of arenas."""
    from bench.memory_probe import _heap

    return int(_heap()["in use"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--lengths", type=int, default=58, help="distinct sentence lengths (words), from 2")
    args = ap.parse_args()
    import torch

    from embedlab.loading import load_encoder

    torch.set_num_threads(1)
    enc = load_encoder(args.model)
    enc.embed(["warm up a little", "and again"])
    print(f"{args.model} ({enc.precision.name}), kernel caches: oneDNN "
          f"{os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'default (1024)')}, torch "
          f"{os.environ.get('LRU_CACHE_CAPACITY', 'default (1024)')}: loaded, RSS {rss_mib()} MiB")
    words = "the a man dog runs plays guitar in park with red ball near old house over river".split()
    for rnd in (1, 2):
        before, heap0, t0 = rss_mib(), heap_in_use_mib(), time.perf_counter()
        for n in range(2, 2 + args.lengths):
            text = " ".join(words[i % len(words)] for i in range(n))
            enc.embed([text, text + " too"])
        took = (time.perf_counter() - t0) / args.lengths
        gc.collect()
        print(f"round {rnd}: {args.lengths} shapes, {took * 1000:.0f} ms a batch, RSS {before} -> {rss_mib()} MiB ({rss_mib() - before:+d}), "
              f"heap in use {heap0} -> {heap_in_use_mib()} MiB ({heap_in_use_mib() - heap0:+d})")


if __name__ == "__main__":
    main()
