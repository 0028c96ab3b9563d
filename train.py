"""Contrastive fine-tuning of a small LM into a sentence encoder, with a LoRA adapter.

Reproduces arXiv 2408.00690: InfoNCE over (premise, entailment, contradiction)
triplets with in-batch and hard negatives, on the EOS-pooled embedding that
embedlab's encoder uses (one code path: embedlab.encode.embed_batch).

    python train.py --model smollm2-135m --steps 400 --batch-size 128 --lr 3e-4 --out runs/smol
    python train.py --config my.json --resume                     # continue a killed run
    python train.py ... --snapshot-steps 0,10,25,50,100,200       # + the adapter after those steps (replay)
    accelerate launch --num_processes 4 train.py ...              # 4x the in-batch negatives

The contrastive batch can be decoupled from memory by a gradient cache (--chunk-size
sentences with activations held at once), so --batch-size 1024 runs on a small GPU or the CPU.
The adapter is saved in the standard PEFT form with a Hub model card (README.md).
With --snapshot-steps, the adapter after each listed step is saved too (``<out>/snapshots/step-<N>/``,
float16) and evaluated like the final one; training.json lists them under ``snapshots``
(read by :func:`embedlab.adapters.snapshots`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from embedlab.adapters import SNAPSHOTS_DIR, AdapterError, save_adapter
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
    chunk_size: int = 0  # most sentences with activations held at once; a bigger batch uses the gradient cache; 0 = never
    max_tokens: int = 0  # padded tokens per forward pass; 0 = 512 on a CPU, 8192 on a GPU (see tokens_per_pass)
    max_length: int = 96  # tokens per sentence incl. EOS (SNLI sentences are far shorter)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    max_rows: int = 0  # use only the first N triplets (0 = all)
    eval_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    eval_limit: int = 0  # pairs per task in the final evaluation, dev included (0 = all)
    bf16: bool = True  # on a CUDA device: frozen base in bf16, bf16 autocast, LoRA weights fp32 (ignored on a CPU)
    resume: bool = False
    device: str = ""  # cpu, cuda, cuda:1 ...; "" = cuda if there is one (under accelerate launch: each rank's GPU)
    snapshot_steps: str = ""  # e.g. "0,10,25,50,100,200": also save and evaluate the adapter after these steps


class SetupError(ValueError):
    """Settings that cannot run here (e.g. --device naming a GPU this machine lacks)."""


def choose_device(requested: str, cuda_count: int, num_processes: int = 1) -> torch.device:
    """--device -> the device this process trains on ("" = cuda if there is one, else cpu).

    With several processes accelerate gives each rank its own GPU, so an explicit index is refused there.
    """
    if not requested:
        return torch.device("cuda" if cuda_count else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise SetupError(f"--device {requested!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise SetupError(f"--device {requested!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if cuda_count == 0:
            raise SetupError(f"--device {requested}: this machine has no CUDA device")
        if dev.index is not None and dev.index >= cuda_count:
            raise SetupError(f"--device {requested}: this machine has {cuda_count} CUDA device(s) (cuda:0..cuda:{cuda_count - 1})")
        if dev.index is not None and num_processes > 1:
            raise SetupError(f"--device {requested} with {num_processes} processes: each process takes the GPU of its "
                             "rank; choose GPUs with CUDA_VISIBLE_DEVICES instead")
    return dev


def mixed_precision(bf16: bool, device: torch.device) -> str:
    """accelerate's mixed_precision: bf16 only on a CUDA device (a CPU runs fp32, whatever the host has)."""
    return "bf16" if bf16 and device.type == "cuda" else "no"


def base_dtype(precision: str) -> torch.dtype:
    """dtype of the frozen base weights: bf16 when autocast would cast them to bf16 on every pass anyway."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def command_line(cfg: "Config") -> str:
    """``python train.py`` with the settings that differ from the defaults (recorded in training.json)."""
    flags = []
    for f in dataclasses.fields(Config):
        v, default = getattr(cfg, f.name), Config.__dataclass_fields__[f.name]
        default = default.default_factory() if default.default_factory is not dataclasses.MISSING else default.default
        if v == default or f.name == "resume":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            flags.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif isinstance(v, list):
            flags.append(" ".join([flag, *map(shlex.quote, v)]))
        else:
            flags.append(f"{flag} {shlex.quote(str(v))}")
    return " ".join(["python train.py", *flags])


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
    try:
        snapshot_step_list(cfg.snapshot_steps)
    except ValueError as e:
        ap.error(str(e))
    return cfg


def snapshot_step_list(text: str) -> list[int]:
    """``"0,10,25"`` -> [0, 10, 25] (sorted, distinct); ValueError naming the bad item."""
    out = set()
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or len(item) > 9:
            raise ValueError(f"--snapshot-steps: {item[:20]!r} is not a whole number >= 0 (write e.g. 0,10,25,50)")
        out.add(int(item))
    return sorted(out)


def batch_indices(step: int, n_rows: int, global_batch: int, seed: int) -> np.ndarray:
    """Triplet indices of the global batch at ``step``: a fresh seeded permutation per epoch.

    A pure function of (step, seed), so a resumed run sees exactly the batches an
    uninterrupted one would.
    """
    per_epoch = n_rows // global_batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[k * global_batch : (k + 1) * global_batch]


class TrainState:
    """Step, loss history and the snapshots taken so far, saved with accelerate's state (model,
    optimiser, scheduler, per-rank RNG)."""

    def __init__(self) -> None:
        self.step, self.history, self.snapshots = 0, [], []

    def state_dict(self) -> dict:
        return {"step": self.step, "history": self.history, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.history = int(state["step"]), [list(h) for h in state["history"]]
        self.snapshots = [dict(s) for s in state.get("snapshots", [])]  # checkpoints from before snapshots had none


def save_checkpoint(acc, path: Path) -> None:
    """``acc.save_state`` into a temp folder, then swapped in: a kill never leaves half a checkpoint.

    Every process calls it (each saves its own RNG state); the main process renames.
    """
    tmp = path.with_name(path.name + ".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def adapter_checkpoint_hooks(acc, model) -> None:
    """Checkpoints hold the LoRA weights only (not the frozen base: 0.5 GB for SmolLM2 in fp32)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save(models, weights, out_dir) -> None:
        if acc.is_main_process:
            state = get_peft_model_state_dict(acc.unwrap_model(model))
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, f"{out_dir}/adapter_model.safetensors")
        weights.clear()  # nothing else of the model goes into the checkpoint

    def load(models, in_dir) -> None:
        result = set_peft_model_state_dict(acc.unwrap_model(model), load_file(f"{in_dir}/adapter_model.safetensors"))
        if [k for k in result.missing_keys if "lora_" in k]:
            raise AdapterError(f"checkpoint {in_dir} lacks LoRA weights of this model")
        models.clear()

    acc.register_save_state_pre_hook(save)
    acc.register_load_state_pre_hook(load)


def tokens_per_pass(cfg: Config, device: torch.device) -> int:
    """Padded tokens per forward pass: --max-tokens, else 512 on a CPU (measured: 2.4x faster steps than
    no cap), else 8192 on a GPU (NOT measured on a GPU yet: enough rows per pass to fill a GPU with a
    small model, while length-sorted passes cut the padding of a random batch, ~3.2x its real tokens)."""
    return cfg.max_tokens or (512 if device.type == "cpu" else 8192)


def contrastive_step(embed, tok, spec, pad_id: int, anchors: list[str], positives: list[str], negatives: list[str],
                     cfg: Config, device: torch.device, backward=lambda loss: loss.backward(),
                     no_sync=None) -> torch.Tensor:
    """Forward + backward of one InfoNCE step on this process's B triplets (no optimiser step).

    ``embed(batch) -> (n, d)`` normalised embeddings with graph. Returns the global loss as a
    detached 0-d tensor on the device (reading it is a host sync: the caller batches those).
    """
    B, W = len(anchors), world_size()
    ids, _ = tokenize(tok, spec, anchors + positives + negatives, cfg.max_length)
    # Forward passes of sentences of similar length, so little of each is padding. A random batch
    # of SNLI sentences padded to its longest is ~3.2x its real tokens; on a CPU, passes of at most
    # 512 padded tokens made a 32-triplet step 2.4x faster (16.8 -> 7.1 s, same loss and gradients).
    # On a GPU passes are bigger (tokens_per_pass), since small ones waste the device.
    chunk = cfg.chunk_size or len(ids)
    max_tokens = tokens_per_pass(cfg, device)
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
    return loss.detach() / W


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(cfg: Config, load=load_encoder) -> int:
    """Train, save, evaluate. ``load(key, adapter=None, device=..., max_length=...)`` returns an
    Encoder (tests pass a tiny random model here). Returns the process exit code."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    # --- set-up: processes, device, model, data -------------------------------------------------
    requested = choose_device(cfg.device, torch.cuda.device_count(), int(os.environ.get("WORLD_SIZE", "1")))
    if requested.type == "cuda" and requested.index is not None:
        torch.cuda.set_device(requested)  # accelerate's single-process "cuda" is the current device
    precision = mixed_precision(cfg.bf16, requested)
    acc = Accelerator(mixed_precision=precision, cpu=requested.type == "cpu")
    device = acc.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    main_proc = acc.is_main_process
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    torch.manual_seed(cfg.seed + acc.process_index)  # dropout differs per process, data order does not

    data = read_triplets(cfg.data, cfg.max_rows or None)
    with acc.local_main_process_first():  # one process converts a GGUF on first use, the others then read it
        enc = load(cfg.model, device=device, max_length=cfg.max_length)
    spec = dataclasses.replace(enc.spec, prompt=cfg.prompt) if cfg.prompt else enc.spec
    tok = enc.tokenizer
    # The frozen base in bf16 on a GPU: autocast would otherwise cast its fp32 weights on every pass.
    # PEFT keeps the LoRA weights (the only trained ones) in fp32 (autocast_adapter_dtype).
    enc.model.to(base_dtype(precision))

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets or list(spec.lora_targets))
    try:
        model = get_peft_model(enc.model, lora)
    except ValueError as e:  # e.g. --lora-targets naming modules this model does not have
        raise DataError(f"LoRA does not fit {spec.key}: {str(e).splitlines()[0][:200]}") from None
    params = [p for p in model.parameters() if p.requires_grad]

    W = acc.num_processes
    global_batch = cfg.batch_size * W
    if len(data) < global_batch:
        raise SystemExit(f"error: {len(data)} triplets < one global batch of {global_batch}")
    steps = cfg.steps or max(1, math.floor(cfg.epochs * len(data) / global_batch))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, steps // 2), steps)
    model, optimizer = acc.prepare(model, optimizer)
    state = TrainState()
    acc.register_for_checkpointing(scheduler, state)
    adapter_checkpoint_hooks(acc, model)

    # A kill between save_checkpoint's two renames leaves only checkpoint.old: it is just as good.
    found = [c for c in (ckpt, ckpt.with_name(ckpt.name + ".old"))
             if (c / "adapter_model.safetensors").is_file() and (c / "random_states_0.pkl").is_file()]
    if cfg.resume and found:
        acc.load_state(str(found[0]))  # LoRA weights, optimiser, scheduler, step/history, each rank's own RNG
        acc.print(f"resumed from {found[0]} at step {state.step}")
    start, history = state.step, state.history
    ckpt_step = start if found and cfg.resume else None  # step of the last checkpoint on disk
    # Snapshots before the final step (which is the adapter itself); steps past the end are dropped.
    wanted = snapshot_step_list(cfg.snapshot_steps)
    snap_steps = {s for s in wanted if s < steps}
    if main_proc and len(snap_steps) < len([s for s in wanted if s != steps]):
        acc.print(f"note: snapshot steps after the last step ({steps}) are skipped: "
                  f"{', '.join(str(s) for s in wanted if s > steps)}")

    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        uses_cache = 0 < cfg.chunk_size < 3 * cfg.batch_size
        cache_note = f"gradient cache, chunks of {cfg.chunk_size} sentences" if uses_cache else "no gradient cache"
        acc.print(f"{spec.key}: {len(data)} triplets, {steps} steps x {global_batch} triplets "
                  f"(effective contrastive batch {global_batch}: {2 * global_batch - 1} negatives per anchor, "
                  f"{W} process(es)), {cache_note}, "
                  f"forward passes of <= {tokens_per_pass(cfg, device)} padded tokens, "
                  f"device {device_name(device)}, precision {precision}")

    def embed(batch: dict) -> torch.Tensor:
        with acc.autocast():
            return embed_batch(model, batch, spec)

    evaluator: list = []  # one more encoder of the base, loaded at the first snapshot; each snapshot attaches to it

    def take_snapshot(step: int) -> None:
        """Save the adapter as it is after ``step`` steps (float16) and evaluate it like the final one.

        Step 0 needs no weights when the training prompt is the registry's: LoRA's B starts at zero, so
        the adapter then encodes exactly as the base model (tests/test_train.py checks it). The RNG
        state is restored afterwards: loading and LoRA initialisation draw from it, and a run with
        snapshots must train exactly as one without.
        """
        from embedlab.evaluation import run_eval
        from embedlab.loading import attach_adapter

        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            if not evaluator:
                evaluator.append(load(cfg.model, device=device))
            ev = evaluator[0]
            rel, use = None, None
            if step > 0 or spec.prompt != enc.spec.prompt:
                rel = f"{SNAPSHOTS_DIR}/step-{step}"
                save_adapter(acc.unwrap_model(model), out / rel, spec, dtype=torch.float16)
                # the prompt travels with the weights: attach_adapter embeds with the one in training.json
                write_json_atomic(out / rel / "training.json", {"model": spec.key, "prompt": spec.prompt, "step": step,
                                                                "snapshot_of": "../.."})
                use = attach_adapter(ev, out / rel).name
            r = run_eval(ev, ["STSBenchmark-dev"], adapter=use, limit=cfg.eval_limit or None)
        state.snapshots.append({"step": step, "path": rel, "dev": r["tasks"]["STSBenchmark-dev"],
                                "random_pair_cosine": r["random_pair_cosine"]})
        tqdm.write(f"snapshot step {step}: STSBenchmark dev {r['tasks']['STSBenchmark-dev']:.2f}"
                   + (f", random-pair cosine {r['random_pair_cosine']:.3f}" if r["random_pair_cosine"] is not None else "")
                   + (f" ({rel})" if rel else " (= the base model)"))

    if start == 0 and 0 in snap_steps:
        if main_proc:
            out.mkdir(parents=True, exist_ok=True)
            take_snapshot(0)
        acc.wait_for_everyone()

    # --- training loop --------------------------------------------------------------------------
    model.train()
    t0, seen = time.perf_counter(), 0
    pending: list[torch.Tensor] = []  # losses still on the device: read in one sync at log/checkpoint steps
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", disable=not main_proc)
    for step in bar:
        idx = batch_indices(step, len(data), global_batch, cfg.seed)
        idx = idx[acc.process_index * cfg.batch_size : (acc.process_index + 1) * cfg.batch_size]
        pending.append(contrastive_step(embed, tok, spec, enc.pad_id, [data.anchor[i] for i in idx],
                                        [data.positive[i] for i in idx], [data.negative[i] for i in idx], cfg,
                                        device, backward=acc.backward, no_sync=lambda: acc.no_sync(model)))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += 3 * global_batch
        done = step + 1
        if done in snap_steps:
            if main_proc:
                take_snapshot(done)
            acc.wait_for_everyone()
        log_now = done % cfg.log_every == 0 or done == steps
        ckpt_now = bool(cfg.ckpt_every) and done % cfg.ckpt_every == 0 and done < steps
        if not (log_now or ckpt_now):
            continue
        # Every process holds the same global loss, so all of them stop together.
        values = torch.stack(pending).tolist()
        first = done - len(values) + 1
        pending.clear()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            where = f"{ckpt} (step {ckpt_step})" if ckpt_step is not None else "none written yet"
            acc.print(f"error: loss is {values[bad]} at step {first + bad}; stopped, nothing after the last checkpoint "
                      f"was saved. Last good checkpoint: {where}. Try a lower --lr or check the data.")
            return 3
        history.extend([first + i, round(v, 5)] for i, v in enumerate(values))
        if main_proc and log_now:
            rate = seen / (time.perf_counter() - t0)
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lr:.2e}", sent_s=f"{rate:.0f}")
            tqdm.write(f"step {done}/{steps} loss {values[-1]:.4f} lr {lr:.3e} {rate:.1f} sentences/s")
        if ckpt_now:
            state.step = done
            save_checkpoint(acc, ckpt)
            ckpt_step = done
    bar.close()
    wall = time.perf_counter() - t0

    # --- save the adapter, evaluate what was saved, write the record ------------------------------
    if not main_proc:
        return 0
    save_adapter(acc.unwrap_model(model), out, spec)  # the standard PEFT (causal-LM) form
    train_stats = {"steps": steps, "resumed_at": start or None, "wall_seconds": round(wall, 1),
                   "sentences_per_second": round(seen / wall, 1) if seen else None,
                   "peak_memory_mb": round(peak_memory_mb(device), 1), "world_size": W, "precision": precision,
                   "tokens_per_pass": tokens_per_pass(cfg, device),
                   "effective_contrastive_batch": global_batch, "loss_curve": history}
    record = {"config": dataclasses.asdict(cfg), "command": command_line(cfg), "model": spec.key, "prompt": spec.prompt,
              "data": {"path": data.path, "sha256": data.sha256, "rows": len(data)},
              "device": device_name(device), "trained_on": device.type, "training": train_stats,
              "environment": environment(device)}
    write_json_atomic(out / "training.json", record)  # written now so a failing evaluation loses nothing
    from embedlab.evaluation import run_eval
    from embedlab.modelcard import write_card

    # Evaluate what was saved, through the same loader the app uses (proves the adapter loads, with the
    # prompt it was trained with: attach_adapter reads it back from training.json).
    tuned = load(cfg.model, adapter=out, device=device)
    dev = run_eval(tuned, ["STSBenchmark-dev"], adapter=next(iter(tuned.adapters)), limit=cfg.eval_limit or None,
                   progress=True)
    record["dev"] = dev["tasks"]
    if wanted:  # the final step is always a snapshot: the adapter itself
        losses = {s: loss for s, loss in history}
        final = {"step": steps, "path": ".", "dev": dev["tasks"]["STSBenchmark-dev"],
                 "random_pair_cosine": dev["random_pair_cosine"]}
        record["snapshots"] = [{"step": e["step"], "path": e["path"], "loss": losses.get(e["step"]), "dev": e["dev"],
                                "random_pair_cosine": e["random_pair_cosine"]} for e in [*state.snapshots, final]]
    tasks = [t for t in cfg.eval_tasks if t != "STSBenchmark-dev"]
    if tasks:
        # the same record format as `python -m embedlab eval`, so it can go under assets/results as is
        record["test"] = {**run_eval(tuned, tasks, adapter=next(iter(tuned.adapters)), limit=cfg.eval_limit or None,
                                    progress=True),
                          "trained_on": device.type, "trained_device": record["device"]}
    write_json_atomic(out / "training.json", record)
    write_card(out, spec)
    shutil.rmtree(ckpt, ignore_errors=True)
    acc.print(f"saved {out}: STSBenchmark dev {record['dev']['STSBenchmark-dev']:.2f}"
              + (f", test average {record['test']['average']:.2f}" if tasks else ""))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``python train.py ...``: bad data, model or adapter settings end in one line on stderr and exit 2."""
    cfg = parse_config(argv)
    try:
        return main(cfg)
    except (DataError, UnknownModelError, ModelUnavailableError, SetupError, AdapterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
