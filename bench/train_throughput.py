"""Training throughput: one contrastive step (forward + backward) of train.py vs a naive reference loop.

Same device, same process, same triplets, same LoRA (r8 on q/v). Sentences/s = 3 x triplets / step time.
Reference: AutoModelForCausalLM with output_hidden_states (LM head over the whole vocabulary), fp32
weights under bf16 autocast on GPU, batch padded to its longest text, plain InfoNCE (no gradient cache).
Ours: train.contrastive_step: backbone only, length-bucketed chunks, gradient cache, bf16 autocast on GPU.

    python bench/train_throughput.py [--batch-size 128] [--steps 5] [--chunk-size 256] [--device cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from embedlab.encode import embed_batch  # noqa: E402
from embedlab.loading import load_encoder  # noqa: E402
from embedlab.loss import info_nce  # noqa: E402
from embedlab.nli import read_triplets  # noqa: E402
from embedlab.provenance import device_name  # noqa: E402


def peak(dev: torch.device) -> str:
    """Peak memory so far: the GPU's allocations (reset between the two runs), or on a CPU the
    process's resident size, which never goes down: the second run's figure includes the first."""
    mb = train.peak_memory_mb(dev)
    return f"{mb / 1024:.1f} GiB" + ("" if dev.type == "cuda" else " resident")


def lora(model, targets):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=list(targets)))


def timed_steps(step, n: int, device: torch.device) -> float:
    step(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext
    data = read_triplets(ROOT / "assets/data/NLI/snli_all_triplets.csv")
    B = args.batch_size

    def batch(i: int):
        lo = (i * B) % (len(data) - B)
        return data.anchor[lo:lo + B], data.positive[lo:lo + B], data.negative[lo:lo + B]

    enc = load_encoder(args.model, device=dev)
    spec, tok = enc.spec, enc.tokenizer
    cfg = train.Config(model=args.model, batch_size=B, chunk_size=args.chunk_size, max_length=96)
    model = lora(enc.model, spec.lora_targets).train()

    def embed(b):
        with autocast():
            return embed_batch(model, b, spec)

    def ours(i):
        a, p, n = batch(i)
        train.contrastive_step(embed, tok, spec, enc.pad_id, a, p, n, cfg, dev)
        model.zero_grad(set_to_none=True)

    t_ours = timed_steps(ours, args.steps, dev)
    peak_ours = peak(dev)
    print(f"device: {device_name(dev)}; {args.model}; {B} triplets/step ({3 * B} sentences)")
    print(f"embedlab train step : {3 * B / t_ours:9.1f} sentences/s ({t_ours:.2f} s/step, chunk {args.chunk_size}, peak {peak_ours})")
    if args.skip_naive:
        return

    from transformers import AutoModelForCausalLM

    base = load_encoder(args.model, device=dev)  # for the cached weights folder and tokenizer
    naive_model = lora(AutoModelForCausalLM.from_pretrained(base.weights_dir, dtype=torch.float32).to(dev),
                       spec.lora_targets).train()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = spec.eos_token
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def naive(i):
        a, p, n = batch(i)
        b = tok([t + spec.eos_token for t in a + p + n], padding=True, return_tensors="pt").to(dev)
        with autocast():
            h = naive_model(**b, output_hidden_states=True).hidden_states[-1][:, -1]
        e = F.normalize(h.float(), dim=-1)
        info_nce(e[:B], e[B:2 * B], e[2 * B:], 0.05).backward()
        naive_model.zero_grad(set_to_none=True)

    t_naive = timed_steps(naive, args.steps, dev)
    peak_naive = peak(dev) + ("" if dev.type == "cuda" else ", the run above included")
    print(f"naive reference     : {3 * B / t_naive:9.1f} sentences/s ({t_naive:.2f} s/step, peak {peak_naive})")
    print(f"ratio               : {t_naive / t_ours:9.2f}x  (goal on a GPU: >= 8x)")


if __name__ == "__main__":
    main()
