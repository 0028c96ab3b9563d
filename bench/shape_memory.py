"""Memory that new input shapes cost: RSS while one model embeds 2-sentence batches of many distinct lengths, twice.

Each new (batch, length) shape makes oneDNN build kernels (and torch buffers) for it, which stay for the next batch of
that shape; a second round of the same shapes should cost nothing. What a fresh app's first compares add (issue 20:
the worst-request bench's idle case, 220-440 MiB) is mostly this. Compare with a smaller primitive cache:

    python -m bench.shape_memory                                   # the app's default model and precision
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16 python -m bench.shape_memory
(one intra-op thread, so it may run beside other work; it measures memory, not time)
"""
from __future__ import annotations

import argparse
import gc
import os

import psutil


def rss_mib() -> int:
    return psutil.Process().memory_info().rss // 2**20


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
    print(f"{args.model} ({enc.precision.name}), primitive cache "
          f"{os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'default (1024)')}: loaded, RSS {rss_mib()} MiB")
    words = "the a man dog runs plays guitar in park with red ball near old house over river".split()
    for rnd in (1, 2):
        before = rss_mib()
        for n in range(2, 2 + args.lengths):
            text = " ".join(words[i % len(words)] for i in range(n))
            enc.embed([text, text + " too"])
        gc.collect()
        print(f"round {rnd}: {args.lengths} shapes, RSS {before} -> {rss_mib()} MiB ({rss_mib() - before:+d})")


if __name__ == "__main__":
    main()
