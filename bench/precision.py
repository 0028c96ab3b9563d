"""bf16 against fp32: cosine of every STSBenchmark test sentence, and speed, per model and adapter.

For each model (all three by default), its shipped adapter (assets/adapters/<model>/*) and its base,
the same sentences are embedded through ``Encoder.embed`` in fp32, bf16 weights (the weights cast to bf16,
LoRA weights fp32) and bf16 autocast (fp32 weights under ``torch.autocast``, the registry's
``bf16_fp32_modules`` in fp32; "autocast-all": without them, for a model that has some). Base and
adapter rows go through one PEFT mixed-adapter pass (``adapters=[None]*n + [name]*n``), so that pass
is what runs in bf16. Prints min / mean cosine to the fp32 vector of the same text (goal >= 0.999)
and sentences/s, each ratio within one run (the machine is shared: compare ratios, not absolutes).

    nice -n 5 python bench/precision.py [--models smollm2-135m gemma3-270m minilm-l6] [--n 0] [--threads 2]
                                        [--variants 'bf16 autocast' ...]

The variants run one after another per model (each loaded fresh, warmed up on 64 sentences), so
on a shared machine the speed column follows the neighbours' load: bench/encode.py interleaves, use it
for speed; this bench is for the cosines.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from embedlab.loading import load_encoder  # noqa: E402
from embedlab.precision import cpu_has_native_bf16  # noqa: E402
from embedlab.provenance import device_name  # noqa: E402
from embedlab.registry import get_spec  # noqa: E402
from embedlab.sts import load_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# variant -> (precision, changes to the registry's spec); "bf16 autocast" keeps the registry's bf16_fp32_modules
VARIANTS = {"fp32": ("fp32", {}), "bf16 weights": ("bf16", {"bf16": "weights"}),
            "bf16 autocast": ("bf16", {"bf16": "autocast"}),
            "bf16 autocast-all": ("bf16", {"bf16": "autocast", "bf16_fp32_modules": ()})}


def stsb_sentences() -> list[str]:
    t = load_task("STSBenchmark")
    return list(dict.fromkeys(s for pair in zip(t.s1, t.s2) for s in pair))


def shipped(key: str) -> Path | None:
    found = sorted(p.parent for p in (ROOT / "assets" / "adapters" / key).glob("*/adapter_config.json"))
    return found[0] if found else None


def run_model(key: str, texts: list[str], device: str, variants: list[str]) -> list[dict]:
    adapter = shipped(key)
    spec = get_spec(key)
    vecs, secs = {}, {}
    for variant in ["fp32"] + [v for v in variants if v != "fp32"]:
        precision, changes = VARIANTS[variant]
        if variant == "bf16 autocast-all" and not spec.bf16_fp32_modules:
            continue  # the same as "bf16 autocast" for this model
        s = dataclasses.replace(spec, **changes)
        enc = load_encoder(s, adapter=adapter, device=device, precision=precision)
        names = [None] + ([next(iter(enc.adapters))] if enc.adapters else [])
        rows = [n for n in names for _ in texts]
        enc.embed(texts[:64], names[-1])  # warm-up
        t0 = time.perf_counter()
        out = enc.embed(texts * len(names), rows)
        secs[variant] = time.perf_counter() - t0
        vecs[variant] = np.split(out, len(names))
        lora = {p.dtype for n, p in enc.model.named_parameters() if "lora_" in n}
        base = {p.dtype for n, p in enc.model.named_parameters() if "lora_" not in n}
        print(f"  {key} {variant}: {len(rows) / secs[variant]:.1f} sentences/s; base weights {sorted(map(str, base))}"
              + (f", LoRA weights {sorted(map(str, lora))}" if lora else ""), flush=True)
        del enc
        gc.collect()
    out = []
    for i, name in enumerate(["base"] + (["adapter " + adapter.name] if adapter else [])):
        for variant in vecs:
            if variant == "fp32":
                continue
            cos = np.einsum("ij,ij->i", vecs[variant][i], vecs["fp32"][i])
            out.append({"model": key, "side": name, "variant": variant, "min": float(cos.min()),
                        "mean": float(cos.mean()), "speedup": secs["fp32"] / secs[variant]})
    return out


def check_caches(key: str, n: int, device: str) -> None:
    """Do the shipped caches (assets/cache: fp32 vectors stored as float16) serve a bf16 process? For ``n``
    random texts of each cached corpus, the cosine of the cached vector to the one computed here in fp32
    and in bf16 (the registry's bf16 mode), for the base and the shipped adapter."""
    from embedlab.cache import EmbeddingCache
    from embedlab.corpora import builtin
    from embedlab.evaluation import anisotropy_texts
    from embedlab.lab import SEED_DIR, WARM_CORPORA
    import tempfile

    corpora = {"anisotropy sample": anisotropy_texts(0), **{c: builtin(c).texts for c in WARM_CORPORA}}
    rng = np.random.default_rng(0)
    print(f"\n| shipped cache ({key}) | side | texts checked | cached vs fp32 min / mean | cached vs bf16 min / mean |")
    print("|---|---|---|---|---|")
    encs = {p: load_encoder(key, adapter=shipped(key), device=device, precision=p) for p in ("fp32", "bf16")}
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp), seeds=[SEED_DIR / "embeddings"])
        for cname, texts in corpora.items():
            idx = np.sort(rng.choice(len(texts), min(n, len(texts)), replace=False))
            for side in [None, next(iter(encs["fp32"].adapters))]:
                cached = cache.peek(encs["fp32"], list(texts), side)
                if cached is None:
                    print(f"| {cname} | {side or 'base'} | not in the shipped cache | | |")
                    continue
                figs = []
                for p, enc in encs.items():
                    cos = np.einsum("ij,ij->i", cached[idx], enc.embed([texts[i] for i in idx], side))
                    figs.append(f"{cos.min():.5f} / {cos.mean():.6f}")
                print(f"| {cname} | {side or 'base'} | {len(idx)} of {len(texts)} | {figs[0]} | {figs[1]} |", flush=True)


def table(rows: list[dict]) -> None:
    print("\n| model | side | bf16 as | min cos | mean cos | speed vs fp32 (mixed base+adapter pass) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['side']} | {r['variant'].split(maxsplit=1)[1]} | {r['min']:.5f} | {r['mean']:.6f} "
              f"| {r['speedup']:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m", "minilm-l6"])
    ap.add_argument("--n", type=int, default=0, help="first n sentences only (0 = all of STSBenchmark test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="what to run besides fp32 (autocast: with the registry's bf16_fp32_modules; autocast-all: "
                         "without them, only for a model that has some)")
    ap.add_argument("--caches", type=int, default=0, metavar="N",
                    help="instead: check the shipped caches against N fresh fp32 and bf16 vectors per corpus and side")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.caches:
        print(f"device: {device_name(args.device)}; native bf16: {cpu_has_native_bf16()}", flush=True)
        check_caches("smollm2-135m", args.caches, args.device)
        return
    texts = stsb_sentences()
    texts = texts[: args.n] if args.n else texts
    print(f"device: {device_name(args.device)}; native bf16: {cpu_has_native_bf16()}; "
          f"{len(texts)} STSBenchmark test sentences; torch {torch.__version__}", flush=True)
    rows = []
    for key in args.models:
        rows += run_model(key, texts, args.device, args.variants)
        table(rows)  # so far: a long run shows each model's figures as soon as they exist
    worst = min(r["min"] for r in rows)
    print(f"\nworst min cosine {worst:.5f} (goal >= 0.999)")


if __name__ == "__main__":
    main()
