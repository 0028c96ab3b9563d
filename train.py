"""Contrastive fine-tuning of a small LM into a sentence encoder, with a LoRA adapter.

Reproduces arXiv 2408.00690: InfoNCE over (premise, entailment, contradiction)
triplets with in-batch and hard negatives, on the EOS-pooled embedding that
embedlab's encoder uses (one code path: embedlab.encode.embed_batch).

    python train.py --model smollm2-135m --steps 400 --batch-size 128 --lr 3e-4 --out runs/smol
    python train.py --config my.json --resume                     # continue a killed run
    accelerate launch --num_processes 4 train.py ...              # 4x the in-batch negatives

The contrastive batch is decoupled from memory by a gradient cache (--chunk-size
sentences per forward pass), so --batch-size 1024 runs on a small GPU or the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from embedlab.encode import collate, embed_batch, length_batches, tokenize
from embedlab.loading import ModelUnavailableError, load_encoder
from embedlab.loss import distributed_info_nce, grad_cache_step, world_size
from embedlab.nli import DataError, read_triplets
from embedlab.provenance import device_name, environment, write_json_atomic
from embedlab.registry import UnknownModelError
from embedlab.sts import EXTRA_TASKS, TASKS


@dataclass
class Config:
    """Every training setting; CLI flags are generated from these fields (--batch-size etc.)."""

    model: str = "smollm2-135m"  # registry key
    data: str = "assets/data/NLI/snli_all_triplets.csv"  # CSV with sent0,sent1,hard_neg
    out: str = "runs/smollm2-135m-nli"  # adapter + training.json + checkpoint/ go here
    prompt: str = ""  # template overriding the registry's, e.g. "{s} is: " ("" = registry's)
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=list)  # [] = the registry's targets
    temperature: float = 0.05
    lr: float = 5e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    steps: int = 0  # optimisation steps; 0 = derived from --epochs
    epochs: float = 1.0
    batch_size: int = 128  # contrastive batch: triplets per process per step
    chunk_size: int = 96  # most sentences with activations held at once; a bigger batch uses the gradient cache; 0 = never
    max_tokens: int = 0  # padded tokens per forward pass; 0 = 512 on a CPU, no cap on a GPU (see contrastive_step)
    max_length: int = 96  # tokens per sentence incl. EOS (SNLI sentences are far shorter)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    max_rows: int = 0  # use only the first N triplets (0 = all)
    eval_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    eval_limit: int = 0  # pairs per task in the final evaluation (0 = all)
    bf16: bool = True  # bf16 autocast on GPU (ignored on CPU)
    resume: bool = False
    device: str = ""  # "" = accelerate's choice


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list[str]": (list,)}


def _read_config_file(path: str, ap: argparse.ArgumentParser) -> dict:
    """A JSON object of Config fields, each of its declared type; anything else ends in ap.error (exit 2)."""
    try:
        base = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        ap.error(f"cannot read {path}: {e.strerror}")
    except (ValueError, UnicodeDecodeError) as e:
        ap.error(f"{path} is not a JSON file ({str(e)[:120]})")
    if not isinstance(base, dict):
        ap.error(f"{path} must hold a JSON object of settings, not {type(base).__name__}")
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = set(base) - set(fields)
    if unknown:
        ap.error(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for name, value in base.items():
        ok = isinstance(value, _TYPES[fields[name]]) and (fields[name] == "bool" or not isinstance(value, bool))
        if fields[name] == "list[str]":
            ok = ok and all(isinstance(v, str) for v in value)
        if fields[name] == "float" and ok:
            ok = math.isfinite(value)
        if not ok:
            ap.error(f"{path}: {name} must be {fields[name]}, got {json.dumps(value)[:60]}")
    return base


def parse_config(argv: list[str] | None = None) -> Config:
    """Flags from the dataclass, optionally on top of a JSON file (--config)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON file with any Config fields; flags override it")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.type == "list[str]":
            ap.add_argument(flag, nargs="+", default=None)
        else:
            ap.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None)
    args = vars(ap.parse_args(argv))
    base: dict = {}
    if path := args.pop("config"):
        base = _read_config_file(path, ap)
    base.update({k: v for k, v in args.items() if v is not None})
    cfg = Config(**base)
    for name in ("batch_size", "lora_r", "lora_alpha", "max_length", "log_every"):
        if getattr(cfg, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps", "warmup_steps", "chunk_size", "max_tokens", "ckpt_every", "max_rows", "eval_limit", "seed"):
        if getattr(cfg, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    if not (0 <= cfg.lora_dropout < 1 and cfg.weight_decay >= 0 and cfg.epochs > 0):
        ap.error("--lora-dropout must be in [0, 1), --weight-decay >= 0 and --epochs > 0")
    if unknown_tasks := [t for t in cfg.eval_tasks if t not in TASKS + EXTRA_TASKS]:
        ap.error(f"unknown evaluation task(s) {', '.join(unknown_tasks)}; known: {', '.join(TASKS + EXTRA_TASKS)}")
    if cfg.prompt and "{s}" not in cfg.prompt:
        ap.error('--prompt must contain {s} where the sentence goes, e.g. "{s} means: "')
    if cfg.batch_size < 2:
        ap.error("--batch-size must be >= 2 (in-batch negatives)")
    if not (cfg.temperature > 0 and cfg.lr > 0):
        ap.error("--temperature and --lr must be > 0")
    return cfg


def batch_indices(step: int, n_rows: int, global_batch: int, seed: int) -> np.ndarray:
    """Triplet indices of the global batch at ``step``: a fresh seeded permutation per epoch.

    A pure function of (step, seed), so a resumed run sees exactly the batches an
    uninterrupted one would.
    """
    per_epoch = n_rows // global_batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[k * global_batch : (k + 1) * global_batch]


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, history: list) -> None:
    """Adapter + optimiser + scheduler + RNG in a temp folder, then swapped in: a kill never leaves half."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), save_embedding_layers=False)
    state = {"step": step, "history": history, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng_cpu": torch.get_rng_state(), "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(state, tmp / "state.pt")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def tokens_per_pass(cfg: Config, device: torch.device) -> int:
    """Padded tokens per forward pass: --max-tokens, else 512 on a CPU (measured), else 0 = no cap."""
    return cfg.max_tokens or (512 if device.type == "cpu" else 0)


def contrastive_step(embed, tok, spec, pad_id: int, anchors: list[str], positives: list[str], negatives: list[str],
                     cfg: Config, device: torch.device, backward=lambda loss: loss.backward(), no_sync=None) -> float:
    """Forward + backward of one InfoNCE step on this process's B triplets (no optimiser step).

    ``embed(batch) -> (n, d)`` normalised embeddings with graph. Returns the global loss.
    """
    B, W = len(anchors), world_size()
    ids, _ = tokenize(tok, spec, anchors + positives + negatives, cfg.max_length)
    # Forward passes of sentences of similar length, so little of each is padding. A random batch
    # of SNLI sentences padded to its longest is ~3.2x its real tokens; on a CPU, passes of at most
    # 512 padded tokens made a 32-triplet step 2.4x faster (16.8 -> 7.1 s, same loss and gradients).
    # On a GPU small passes waste the device instead, so there only --max-tokens caps them (unmeasured).
    chunk = cfg.chunk_size or len(ids)
    max_tokens = tokens_per_pass(cfg, device) or 1 << 62
    groups = list(length_batches([len(x) for x in ids], chunk, max_tokens))
    chunks = [collate([ids[i] for i in g], pad_id, spec.causal, device) for g in groups]
    order = [i for g in groups for i in g]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))

    def loss_fn(reps: torch.Tensor) -> torch.Tensor:
        e = reps[inverse.to(reps.device)]  # back to (anchors, positives, negatives) order
        # x W: DDP averages gradients over W processes (see embedlab.loss.distributed_info_nce)
        return distributed_info_nce(e[:B], e[B : 2 * B], e[2 * B :], cfg.temperature) * W

    if len(ids) > chunk:  # within one chunk's memory the cache's extra no-grad forward buys nothing (0.59x on CPU)
        loss = grad_cache_step(embed, chunks, loss_fn, device, no_sync=no_sync)
    else:
        loss = loss_fn(torch.cat([embed(c) for c in chunks]))
        backward(loss)
    return float(loss.detach()) / W


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(cfg: Config, load=load_encoder) -> int:
    """Train, save, evaluate. ``load(key, adapter=None, device=..., max_length=...)`` returns an
    Encoder (tests pass a tiny random model here). Returns the process exit code."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import get_cosine_schedule_with_warmup

    # --- set-up: processes, model, data ------------------------------------------------------
    acc = Accelerator(mixed_precision="bf16" if cfg.bf16 and torch.cuda.is_available() else "no",
                      cpu=cfg.device == "cpu")
    main_proc = acc.is_main_process
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    torch.manual_seed(cfg.seed + acc.process_index)  # dropout differs per process, data order does not

    data = read_triplets(cfg.data, cfg.max_rows or None)
    enc = load(cfg.model, device=acc.device, max_length=cfg.max_length)
    spec = dataclasses.replace(enc.spec, prompt=cfg.prompt) if cfg.prompt else enc.spec
    tok = enc.tokenizer

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets or list(spec.lora_targets))
    try:
        model = get_peft_model(enc.model, lora)
    except ValueError as e:  # e.g. --lora-targets naming modules this model does not have
        raise DataError(f"LoRA does not fit {spec.key}: {str(e).splitlines()[0][:200]}") from None
    model.peft_config["default"].base_model_name_or_path = spec.key  # what the loader checks
    params = [p for p in model.parameters() if p.requires_grad]

    W = acc.num_processes
    global_batch = cfg.batch_size * W
    if len(data) < global_batch:
        raise SystemExit(f"error: {len(data)} triplets < one global batch of {global_batch}")
    steps = cfg.steps or max(1, math.floor(cfg.epochs * len(data) / global_batch))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, steps // 2), steps)
    model, optimizer = acc.prepare(model, optimizer)

    start, history = 0, []
    # A kill between save_checkpoint's two renames leaves only checkpoint.old: it is just as good.
    found = [c for c in (ckpt, ckpt.with_name(ckpt.name + ".old")) if (c / "state.pt").is_file()]
    if cfg.resume and found:
        state = torch.load(found[0] / "state.pt", weights_only=True)
        set_peft_model_state_dict(acc.unwrap_model(model), load_file(str(found[0] / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        start, history = state["step"], state["history"]
        acc.print(f"resumed from {found[0]} at step {start}")

    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        acc.print(f"{spec.key}: {len(data)} triplets, {steps} steps x {global_batch} triplets "
                  f"(effective contrastive batch {global_batch}: {2 * global_batch - 1} negatives per anchor, "
                  f"{W} process(es)), chunks of {cfg.chunk_size or 3 * cfg.batch_size} sentences, "
                  f"forward passes of <= {tokens_per_pass(cfg, acc.device) or 'any number of'} padded tokens, "
                  f"device {device_name(acc.device)}")

    def embed(batch: dict) -> torch.Tensor:
        with acc.autocast():
            return embed_batch(model, batch, spec)

    # --- training loop --------------------------------------------------------------------------
    model.train()
    t0, seen = time.perf_counter(), 0
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", disable=not main_proc)
    for step in bar:
        idx = batch_indices(step, len(data), global_batch, cfg.seed)
        idx = idx[acc.process_index * cfg.batch_size : (acc.process_index + 1) * cfg.batch_size]
        loss_value = contrastive_step(embed, tok, spec, enc.pad_id, [data.anchor[i] for i in idx],
                                      [data.positive[i] for i in idx], [data.negative[i] for i in idx], cfg, acc.device,
                                      backward=acc.backward, no_sync=lambda: acc.no_sync(model))
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            where = f"{ckpt} (step {history[-1][0] if history else 0})" if ckpt.exists() else "none written yet"
            acc.print(f"error: loss is {loss_value} at step {step + 1}; stopped without updating. Last good checkpoint: "
                      f"{where}. Try a lower --lr or check the data.")
            return 3
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += 3 * global_batch
        history.append([step + 1, round(loss_value, 5)])

        if main_proc and ((step + 1) % cfg.log_every == 0 or step + 1 == steps):
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", sent_s=f"{rate:.0f}")
            tqdm.write(f"step {step + 1}/{steps} loss {loss_value:.4f} lr {scheduler.get_last_lr()[0]:.3e} "
                       f"{rate:.1f} sentences/s")
        if main_proc and cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < steps:
            save_checkpoint(ckpt, acc.unwrap_model(model), optimizer, scheduler, step + 1, history)
        acc.wait_for_everyone()
    bar.close()
    wall = time.perf_counter() - t0

    # --- save the adapter, evaluate what was saved, write the record ------------------------------
    if not main_proc:
        return 0
    acc.unwrap_model(model).save_pretrained(str(out), save_embedding_layers=False)
    train_stats = {"steps": steps, "resumed_at": start or None, "wall_seconds": round(wall, 1),
                   "sentences_per_second": round(seen / wall, 1) if seen else None,
                   "peak_memory_mb": round(peak_memory_mb(acc.device), 1), "world_size": W,
                   "effective_contrastive_batch": global_batch, "loss_curve": history}
    record = {"config": dataclasses.asdict(cfg), "model": spec.key, "prompt": spec.prompt,
              "data": {"path": data.path, "sha256": data.sha256, "rows": len(data)},
              "device": device_name(acc.device), "trained_on": acc.device.type, "training": train_stats,
              "environment": environment(acc.device)}
    write_json_atomic(out / "training.json", record)  # written now so a failing evaluation loses nothing
    from embedlab.evaluation import run_eval

    # Evaluate what was saved, through the same loader the app uses (proves the adapter loads).
    tuned = load(cfg.model, adapter=out, device=acc.device)
    if cfg.prompt:
        tuned.spec = spec
    record["dev"] = run_eval(tuned, ["STSBenchmark-dev"], progress=True)["tasks"]
    tasks = [t for t in cfg.eval_tasks if t != "STSBenchmark-dev"]
    if tasks:
        # the same record format as `python -m embedlab eval`, so it can go under assets/results as is
        record["test"] = {**run_eval(tuned, tasks, limit=cfg.eval_limit or None, progress=True),
                          "trained_on": acc.device.type}
    write_json_atomic(out / "training.json", record)
    shutil.rmtree(ckpt, ignore_errors=True)
    acc.print(f"saved {out}: STSBenchmark dev {record['dev']['STSBenchmark-dev']:.2f}"
              + (f", test average {record['test']['average']:.2f}" if tasks else ""))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``python train.py ...``: bad data, model or adapter settings end in one line on stderr and exit 2."""
    cfg = parse_config(argv)
    try:
        return main(cfg)
    except (DataError, UnknownModelError, ModelUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
