"""Encoding throughput: embedlab's encode() vs a naive loop, same process, same sentences.

Naive baseline: AutoModelForCausalLM with output_hidden_states (so the LM head runs
over the whole vocabulary), fp32, batches of 32 in input order padded to the
longest text, last hidden state at the final (EOS) position.

    python bench/encode.py [--model smollm2-135m] [--n 2000] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from embedlab.loading import load_encoder  # noqa: E402
from embedlab.provenance import device_name  # noqa: E402
from embedlab.sts import load_task  # noqa: E402


def sentences(n: int) -> list[str]:
    """The first n distinct sentences of STSBenchmark test then STS12 (a realistic length mix)."""
    out: list[str] = []
    for name in ("STSBenchmark", "STS12", "STS15"):
        t = load_task(name)
        out.extend(s for pair in zip(t.s1, t.s2) for s in pair)
    return list(dict.fromkeys(out))[:n]


def naive(enc, texts: list[str], batch: int = 32) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(enc.weights_dir, dtype=torch.float32).to(enc.device).eval()
    tok = enc.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = enc.spec.eos_token
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            b = tok([t + enc.spec.eos_token for t in texts[i : i + batch]], padding=True, return_tensors="pt",
                    truncation=True, max_length=enc.max_length).to(enc.device)
            h = model(**b, output_hidden_states=True).hidden_states[-1][:, -1]
            out.append(torch.nn.functional.normalize(h.float(), dim=-1).cpu().numpy())
    return np.concatenate(out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    enc = load_encoder(args.model, device=args.device)
    texts = sentences(args.n)
    enc.embed(texts[:64])  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    fast = enc.embed(texts)
    t_fast = time.perf_counter() - t0
    ref, t_naive = naive(enc, texts)
    agree = np.einsum("ij,ij->i", fast, ref)
    print(f"device: {device_name(enc.device)}; model: {args.model}; {len(texts)} STS sentences")
    print(f"naive baseline : {len(texts) / t_naive:8.1f} sentences/s ({t_naive:.1f} s)")
    print(f"embedlab encode: {len(texts) / t_fast:8.1f} sentences/s ({t_fast:.1f} s)")
    print(f"ratio          : {t_naive / t_fast:8.2f}x   (goal >= 2x)")
    print(f"agreement      : min cosine {agree.min():.5f}, mean {agree.mean():.6f} (same embeddings, different speed)")


if __name__ == "__main__":
    main()
