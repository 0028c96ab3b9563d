"""Encoding throughput: embedlab's Encoder.embed() in fp32 and in bf16 vs a naive loop, same process, same sentences.

Naive baseline: AutoModelForCausalLM with output_hidden_states (so the LM head runs
over the whole vocabulary), fp32, batches of 32 in input order padded to the
longest text, last hidden state at the final (EOS) position.

    python bench/encode.py [--model smollm2-135m] [--n 2000] [--device cpu]

bf16 runs as the registry says for the model (weights cast, or autocast), forced on (emulated where the
CPU lacks native bf16, which the header line shows).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from embedlab.loading import load_encoder
from embedlab.provenance import device_name
from embedlab.sts import load_task


def sentences(n: int) -> list[str]:
    """The first n distinct sentences of STSBenchmark test then STS12 (a realistic length mix)."""
    out: list[str] = []
    for name in ("STSBenchmark", "STS12", "STS15"):
        t = load_task(name)
        out.extend(s for pair in zip(t.s1, t.s2) for s in pair)
    return list(dict.fromkeys(out))[:n]


class Naive:
    """The naive loop, loaded once: called on a list of texts -> (N, d) float32 vectors."""

    def __init__(self, enc, batch: int = 32) -> None:
        import copy

        from transformers import AutoModelForCausalLM

        self.enc, self.batch = enc, batch
        self.model = AutoModelForCausalLM.from_pretrained(enc.weights_dir, dtype=torch.float32).to(enc.device).eval()
        self.tok = copy.deepcopy(enc.tokenizer)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = enc.spec.eos_token

    def __call__(self, texts: list[str]) -> np.ndarray:
        enc, out = self.enc, []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch):
                b = self.tok([t + enc.spec.eos_token for t in texts[i : i + self.batch]], padding=True,
                             return_tensors="pt", truncation=True, max_length=enc.max_length).to(enc.device)
                h = self.model(**b, output_hidden_states=True).hidden_states[-1][:, -1]
                out.append(torch.nn.functional.normalize(h.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--round", type=int, default=128, help="texts per round (see below)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    texts = sentences(args.n)
    encs = {p: load_encoder(args.model, device=args.device, precision=p) for p in ("fp32", "bf16")}
    runs = {"naive fp32": Naive(encs["fp32"]), "embedlab fp32": encs["fp32"].embed, "embedlab bf16": encs["bf16"].embed}
    for run in runs.values():
        run(texts[:64])  # warm-up (allocator, kernels)
    # Interleaved: round by round, each method embeds the same slice, in a rotating order, so a neighbour's
    # load (a shared machine) falls on all three alike and the ratios stay meaningful.
    secs = dict.fromkeys(runs, 0.0)
    vecs: dict[str, list] = {k: [] for k in runs}
    for r, lo in enumerate(range(0, len(texts), args.round)):
        chunk = texts[lo : lo + args.round]
        names = list(runs)
        for name in names[r % 3:] + names[: r % 3]:
            t0 = time.perf_counter()
            vecs[name].append(runs[name](chunk))
            secs[name] += time.perf_counter() - t0
    ref = np.concatenate(vecs["naive fp32"])
    enc = encs["bf16"]
    print(f"device: {device_name(enc.device)}; model: {args.model} (bf16 as {enc.spec.bf16}); "
          f"{len(texts)} STS sentences in rounds of {args.round}; bf16 here: {enc.precision.describe()}")
    for name in runs:
        agree = np.einsum("ij,ij->i", np.concatenate(vecs[name]), ref)
        print(f"{name:<14}: {len(texts) / secs[name]:8.1f} sentences/s ({secs[name]:.1f} s), "
              f"{secs['naive fp32'] / secs[name]:5.2f}x the naive loop; cosine to it min {agree.min():.5f}, "
              f"mean {agree.mean():.6f}")
    print(f"goal: embedlab bf16 >= 4x the naive fp32 loop; bf16 is "
          f"{secs['embedlab fp32'] / secs['embedlab bf16']:.2f}x embedlab's fp32")


if __name__ == "__main__":
    main()
