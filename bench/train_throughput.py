"""Training throughput: one contrastive step (forward + backward) of embedlab.training vs a naive reference loop.

Same device, same process, same triplets, same LoRA (r8 on q/v). Sentences/s = 3 x triplets / step time.
Reference: AutoModelForCausalLM with output_hidden_states (LM head over the whole vocabulary), fp32
weights under bf16 autocast on GPU, batch padded to its longest text, plain InfoNCE (no gradient cache).
Ours: training.contrastive_step as train.py sets it up: backbone only, passes of similar length
(--max-tokens padded tokens each; train.py's default for the device when 0), gradient cache only
with --chunk-size, and in bf16 (--precision auto: on a GPU, and on a CPU with native bf16) the frozen
base in bf16 under bf16 autocast with fp32 LoRA weights. The naive loop stays fp32 on a CPU.

Also printed: real (non-pad) tokens per second and an estimated model-FLOPs utilisation:
~4 x non-embedding parameters x real tokens per step (forward 2, backward to the activations 2;
the frozen weights get no gradient; +2 with the gradient cache's extra forward) over --peak-tflops.

    python -m bench.train_throughput [--batch-size 128] [--steps 5] [--max-tokens 8192] [--device cuda]
                                     [--precision auto|bf16|fp32]
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from embedlab import training as train
from embedlab import ROOT
from embedlab.encode import embed_batch
from embedlab.loading import load_encoder
from embedlab.loss import info_nce
from embedlab.nli import read_triplets
from embedlab.provenance import device_name


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
    ap.add_argument("--chunk-size", type=int, default=0, help="gradient-cache chunk (0 = no gradient cache)")
    ap.add_argument("--max-tokens", type=int, default=0, help="padded tokens per pass (0 = train.py's default)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's dense bf16 peak for the MFU estimate (H100 SXM: 989)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--precision", choices=train.PRECISIONS, default="auto", help="ours (the naive loop: see above)")
    args = ap.parse_args()
    dev = train.choose_device(args.device or "", torch.cuda.device_count())
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    precision, note = train.resolve_precision(args.precision, dev)
    naive_autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext
    data = read_triplets(ROOT / "assets/data/NLI/snli_all_triplets.csv")
    B = args.batch_size

    def batch(i: int):
        lo = (i * B) % (len(data) - B)
        return data.anchor[lo:lo + B], data.positive[lo:lo + B], data.negative[lo:lo + B]

    enc = load_encoder(args.model, device=dev)
    spec, tok = enc.spec, enc.tokenizer
    cfg = train.Config(model=args.model, batch_size=B, chunk_size=args.chunk_size, max_tokens=args.max_tokens,
                       max_length=96)
    enc.model.to(train.base_dtype(precision))  # as train.py: the frozen base in bf16 when training in bf16
    flops_params = sum(p.numel() for n, p in enc.model.named_parameters() if "embed" not in n)
    model = lora(enc.model, spec.lora_targets).train()
    real_tokens = []

    def embed(b):
        with train.autocast(precision, dev):
            return embed_batch(model, b, spec)

    def ours(i):
        a, p, n = batch(i)
        ids, _ = train.tokenize(tok, spec, a + p + n, cfg.max_length)
        real_tokens.append(sum(map(len, ids)))
        train.contrastive_step(embed, tok, spec, enc.pad_id, a, p, n, cfg, dev)
        model.zero_grad(set_to_none=True)

    t_ours = timed_steps(ours, args.steps, dev)
    peak_ours = peak(dev)
    tokens = sum(real_tokens[1:]) / max(1, len(real_tokens) - 1)  # per timed step
    grad_cache = 0 < args.chunk_size < 3 * B
    mfu = (6 if grad_cache else 4) * flops_params * tokens / t_ours / (args.peak_tflops * 1e12)
    print(f"device: {device_name(dev)}; {args.model}; {B} triplets/step ({3 * B} sentences, {tokens:.0f} real tokens); "
          f"precision {precision}{' (' + note + ')' if note else ''}, naive loop {'bf16 autocast' if dev.type == 'cuda' else 'fp32'}, passes of <= {train.tokens_per_pass(cfg, dev)} padded tokens")
    print(f"embedlab train step : {3 * B / t_ours:9.1f} sentences/s ({t_ours:.3f} s/step, {tokens / t_ours:,.0f} tokens/s, "
          f"{'gradient cache ' + str(args.chunk_size) if grad_cache else 'no gradient cache'}, peak {peak_ours}, "
          f"estimated MFU {100 * mfu:.2f}% of {args.peak_tflops:g} TFLOP/s)")
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
        with naive_autocast():
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
