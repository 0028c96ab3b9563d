"""Contrastive LoRA fine-tuning as a library: the loop ``train.py`` runs and the app's live training calls.

Reproduces arXiv 2408.00690: InfoNCE over (premise, entailment, contradiction) triplets with in-batch and
hard negatives, on the EOS-pooled embedding the encoder uses (one code path: :func:`embedlab.encode.embed_batch`).

    cfg = Config(model="smollm2-135m", steps=50, batch_size=32, lr=2e-4, out="runs/x")
    record = train(cfg)                                          # what train.py does
    trainer = Trainer(cfg, executor=compute.beside)              # what a live run does:
    for info in trainer.steps(should_stop=stop_requested, report_every=1):  # StepInfo after every step
        show(info.step, info.loss, info.lr, info.sentences_per_second)
    record = trainer.finish(evaluate=False)                      # the adapter of the steps done so far

Pieces, top to bottom: the precision (bf16 where the device has it), the typed :class:`Config` and its
checks, data order, the contrastive step (length-grouped passes, optional gradient cache), checkpoints
(accelerate state holding the LoRA weights only), snapshots, and the training record (training.json).
"""
import contextlib
import dataclasses
import math
import os
import resource
import shlex
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar

import numpy as np
import torch
# at import, not in Trainer(): a live run's thread resolving transformers' lazy names while a request's thread
# does the same can fail (embedlab/loading.py says more)
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from transformers import get_cosine_schedule_with_warmup

from . import precision
from .adapters import SNAPSHOTS_DIR, AdapterError, save_adapter, write_training_record
from .encode import collate, embed_batch, length_batches, tokenize
from .loading import load_encoder
from .loss import split_backward_step, distributed_info_nce, grad_cache_step, world_size
from .nli import BUILT_IN, DataError, read_triplets
from .files import swap_folder
from .provenance import device_name, environment
from .registry import DEFAULT_MODEL
from .sts import EXTRA_TASKS, TASKS

T = TypeVar("T")
Executor = Callable[[Callable[[], T]], T]  # run(fn) -> fn(), perhaps on another thread

# --- precision ----------------------------------------------------------------------------------

PRECISIONS = precision.CHOICES


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(``"bf16"`` or ``"fp32"``, a note or "") for ``--precision`` on ``device``: the embedding side's rule
    (:func:`embedlab.precision.resolve`: auto = bf16 on a CUDA device and on a CPU with native bf16, else fp32),
    so a run trains in the precision the app would embed in. bf16 on a CPU without it runs (emulated, slower)
    and says so."""
    try:
        p = precision.resolve(device, requested)
    except precision.PrecisionError:
        raise ConfigError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}") from None
    return p.name, ("bf16 on a CPU without native bf16: emulated, slower than fp32" if p.emulated else "")


def base_dtype(precision: str) -> torch.dtype:
    """dtype of the frozen base weights: bf16 when autocast would cast them to bf16 on every pass anyway."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device: torch.device):
    """The context of every training forward pass: bf16 autocast (LoRA weights stay fp32), or none."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- configuration ------------------------------------------------------------------------------

@dataclass
class Config:
    """Every training setting; train.py's flags are generated from these fields (--batch-size etc.)."""

    model: str = DEFAULT_MODEL  # registry key
    data: str = BUILT_IN  # CSV with sent0,sent1[,hard_neg] (no hard_neg: in-batch negatives only)
    out: str = f"runs/{DEFAULT_MODEL}-nli"  # adapter + training.json + checkpoint/ go here
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
    # auto = bf16 on a CUDA device and on a CPU with native bf16 (native_bf16), else fp32. bf16: the frozen
    # base in bf16 under bf16 autocast; the LoRA weights, their gradients and the optimiser stay fp32.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    resume: bool = False
    device: str = ""  # cpu, cuda, cuda:1 ...; "" = cuda if there is one (under accelerate launch: each rank's GPU)
    snapshot_steps: str = ""  # e.g. "0,10,25,50,100,200": also save and evaluate the adapter after these steps


def field_types() -> dict[str, Any]:
    """Config field -> its type (int, float, str, bool, list[str] or the precision's Literal)."""
    return typing.get_type_hints(Config)


class ConfigError(ValueError):
    """A setting out of its range; the message names the flag."""


class SetupError(ValueError):
    """Settings that cannot run here (e.g. --device naming a GPU this machine lacks)."""


class LossNotFinite(RuntimeError):
    """The loss became NaN or infinite; nothing after the last checkpoint was saved."""


def check_config(cfg: Config) -> None:
    """ConfigError naming the first setting out of range (the CLI prints it as a usage error)."""
    for name in ("batch_size", "lora_r", "lora_alpha", "max_length", "log_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps", "warmup_steps", "chunk_size", "max_tokens", "ckpt_every", "max_rows", "eval_limit", "seed"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    if not (0 <= cfg.lora_dropout < 1 and cfg.weight_decay >= 0 and cfg.epochs > 0):
        raise ConfigError("--lora-dropout must be in [0, 1), --weight-decay >= 0 and --epochs > 0")
    if unknown_tasks := [t for t in cfg.eval_tasks if t not in TASKS + EXTRA_TASKS]:
        raise ConfigError(f"unknown evaluation task(s) {', '.join(unknown_tasks)}; known: {', '.join(TASKS + EXTRA_TASKS)}")
    if cfg.prompt and "{s}" not in cfg.prompt:
        raise ConfigError('--prompt must contain {s} where the sentence goes, e.g. "{s} means: "')
    if cfg.batch_size < 2:
        raise ConfigError("--batch-size must be >= 2 (in-batch negatives)")
    if not (cfg.temperature > 0 and cfg.lr > 0):
        raise ConfigError("--temperature and --lr must be > 0")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"--precision {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    try:
        snapshot_step_list(cfg.snapshot_steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def command_line(cfg: Config) -> str:
    """``python train.py`` with the settings that differ from the defaults (recorded in training.json)."""
    flags = []
    for f in dataclasses.fields(Config):
        v = getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
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


def tokens_per_pass(cfg: Config, device: torch.device) -> int:
    """Padded tokens per forward pass: --max-tokens, else 512 on a CPU (measured: 2.4x faster steps than
    no cap), else 8192 on a GPU (NOT measured on a GPU yet: enough rows per pass to fill a GPU with a
    small model, while length-sorted passes cut the padding of a random batch, ~3.2x its real tokens)."""
    return cfg.max_tokens or (512 if device.type == "cpu" else 8192)


# --- data order and the step ----------------------------------------------------------------------

def batch_indices(step: int, n_rows: int, global_batch: int, seed: int) -> np.ndarray:
    """Triplet indices of the global batch at ``step``: a fresh seeded permutation per epoch.

    A pure function of (step, seed), so a resumed run sees exactly the batches an
    uninterrupted one would.
    """
    per_epoch = n_rows // global_batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[k * global_batch : (k + 1) * global_batch]


def _call(fn: Callable[[], T]) -> T:
    return fn()


def contrastive_step(embed, tok, spec, pad_id: int, anchors: list[str], positives: list[str], negatives: list[str],
                     cfg: Config, device: torch.device, backward=lambda loss: loss.backward(),
                     no_sync=None, executor: Executor = _call) -> torch.Tensor:
    """Forward + backward of one InfoNCE step on this process's B triplets (no optimiser step). ``negatives``
    empty (pairs only): each anchor's negatives are the other positives of the batch (in-batch negatives only).

    ``embed(batch) -> (n, d)`` normalised embeddings with graph. ``executor(fn) -> fn()`` runs each unit
    of work (a forward pass; the loss and its backward; with the gradient cache a pass and its backward),
    perhaps on another thread, so ``embed`` must set its own autocast. Returns the global loss as a
    detached 0-d tensor on the device (reading it is a host sync: the caller batches those).
    """
    B, W = len(anchors), world_size()
    ids, _ = tokenize(tok, spec, anchors + positives + negatives, cfg.max_length)
    # Forward passes of sentences of similar length, so little of each is padding. A random batch
    # of SNLI sentences padded to its longest is ~3.2x its real tokens; on a CPU, passes of at most
    # 512 padded tokens made a 32-triplet step 2.4x faster (16.8 -> 7.1 s, same loss and gradients).
    # On a GPU passes are bigger (tokens_per_pass), since small ones waste the device.
    chunk = cfg.chunk_size or len(ids)
    groups = list(length_batches([len(x) for x in ids], chunk, tokens_per_pass(cfg, device)))
    chunks = [collate([ids[i] for i in g], pad_id, spec.causal, device) for g in groups]
    order = [i for g in groups for i in g]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))

    def loss_fn(reps: torch.Tensor) -> torch.Tensor:
        e = reps[inverse.to(reps.device)]  # back to (anchors, positives, negatives) order
        # x W: DDP averages gradients over W processes (see embedlab.loss.distributed_info_nce)
        return distributed_info_nce(e[:B], e[B : 2 * B], e[2 * B :] if negatives else None, cfg.temperature) * W

    if len(ids) > chunk:  # within one chunk's memory the cache's extra no-grad forward buys nothing (0.59x on CPU)
        loss = grad_cache_step(embed, chunks, loss_fn, device, no_sync=no_sync, run=executor)
    elif len(chunks) == 1 or W > 1:
        # One backward through every pass. Across processes it must be one: DDP arms its gradient all-reduce at each
        # forward outside no_sync, so a backward per pass would all-reduce the first pass's gradients alone
        reps = [executor(lambda c=c: embed(c)) for c in chunks]

        def loss_and_backward() -> torch.Tensor:
            loss = loss_fn(torch.cat(reps))  # one pass: as before, bit for bit (tests/test_userdata.py)
            backward(loss)
            return loss

        loss = executor(loss_and_backward)
    else:  # each pass's backward is a unit of its own: one backward of them all held the executor for seconds
        loss = split_backward_step(embed, chunks, loss_fn, run=executor)
    return loss.detach() / W


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- checkpoints ----------------------------------------------------------------------------------

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
        swap_folder(tmp, path)  # by way of <path>.old: a kill in between leaves that one, which resume also reads
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


# --- the loop ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepInfo:
    """What a caller sees after each optimiser step."""

    step: int  # steps done
    steps: int  # steps planned
    loss: float
    lr: float  # the learning rate of the next step
    sentences_per_second: float  # since this run (or its resumption) started
    seconds: float  # wall time since then


class Trainer:
    """One training run: set up in ``__init__`` (device, precision, model, data, optimiser, resume), trained by
    iterating :meth:`steps`, saved by :meth:`finish`. :func:`train` runs the three.

    ``load(key, adapter=None, device=..., max_length=...)`` returns an Encoder (tests pass a tiny random model).
    ``executor(fn) -> fn()`` runs every forward pass, backward and optimiser step (a live run checks its stop
    before each: :func:`embedlab.compute.beside`); each unit sets its own autocast and grad mode.
    """

    def __init__(self, cfg: Config, *, load=load_encoder, executor: Executor = _call, progress: bool = False,
                 name: str | None = None) -> None:

        check_config(cfg)
        self.cfg, self.load, self.executor, self.progress = cfg, load, executor, progress
        # how log lines and errors name the run: its folder, unless the caller must not show that (the app's
        # live runs: the folder holds the run's secret id, and a Space's log may be public)
        self.name = name or cfg.out
        requested = choose_device(cfg.device, torch.cuda.device_count(), int(os.environ.get("WORLD_SIZE", "1")))
        if requested.type == "cuda" and requested.index is not None:
            torch.cuda.set_device(requested)  # accelerate's single-process "cuda" is the current device
        self.precision, self.precision_note = resolve_precision(cfg.precision, requested)
        # Autocast is ours (see embed), not accelerate's mixed_precision: its state is one per process and refuses
        # a second precision, while one process (the app, the tests) may run several trainings.
        self.acc = acc = Accelerator(cpu=requested.type == "cpu")
        device = acc.device
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.out = Path(cfg.out)
        self.ckpt = self.out / "checkpoint"
        torch.manual_seed(cfg.seed + acc.process_index)  # dropout differs per process, data order does not

        self.data = read_triplets(cfg.data, cfg.max_rows or None)
        with acc.local_main_process_first():  # one process converts a GGUF on first use, the others then read it
            self.enc = enc = load(cfg.model, device=device, max_length=cfg.max_length, precision=cfg.precision)
        self.spec = dataclasses.replace(enc.spec, prompt=cfg.prompt) if cfg.prompt else enc.spec
        # The frozen base in bf16: autocast would otherwise cast its fp32 weights on every pass.
        # PEFT keeps the LoRA weights (the only trained ones) in fp32 (autocast_adapter_dtype).
        enc.model.to(base_dtype(self.precision))
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_targets or list(self.spec.lora_targets))
        try:
            model = get_peft_model(enc.model, lora)
        except ValueError as e:  # e.g. --lora-targets naming modules this model does not have
            raise DataError(f"LoRA does not fit {self.spec.key}: {str(e).splitlines()[0][:200]}") from None
        params = [p for p in model.parameters() if p.requires_grad]

        self.world = acc.num_processes
        self.global_batch = cfg.batch_size * self.world
        if len(self.data) < self.global_batch:
            raise DataError(f"{len(self.data)} triplets < one global batch of {self.global_batch}")
        self.total = cfg.steps or max(1, math.floor(cfg.epochs * len(self.data) / self.global_batch))
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, self.total // 2), self.total)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.state = TrainState()
        acc.register_for_checkpointing(self.scheduler, self.state)
        adapter_checkpoint_hooks(acc, self.model)

        # A kill between save_checkpoint's two renames leaves only checkpoint.old: it is just as good.
        found = [c for c in (self.ckpt, self.ckpt.with_name(self.ckpt.name + ".old"))
                 if (c / "adapter_model.safetensors").is_file() and (c / "random_states_0.pkl").is_file()]
        if cfg.resume and found:
            acc.load_state(str(found[0]))  # LoRA weights, optimiser, scheduler, step/history, each rank's own RNG
            acc.print(f"resumed from {found[0].name} at step {self.state.step} ({self.name})")
        self.start = self.done = self.state.step
        # the step the model's weights are at: ``done``, or ``done + 1`` between the optimiser step and the step's
        # bookkeeping. A live run reads it between two units, where it may snapshot the weights mid-step
        self.weights_step = self.done
        self.ckpt_step = self.start if found and cfg.resume else None  # step of the last checkpoint on disk
        # Snapshots before the final step (which is the adapter itself); steps past the end are dropped.
        self.wanted = snapshot_step_list(cfg.snapshot_steps)
        self.snap_steps = {s for s in self.wanted if s < self.total}
        self._evaluator = None  # a second encoder of the base, loaded at the first snapshot
        self.seen, self.wall = 0, 0.0
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if len(self.snap_steps) < len([s for s in self.wanted if s != self.total]):
                acc.print(f"note: snapshot steps after the last step ({self.total}) are skipped: "
                          f"{', '.join(str(s) for s in self.wanted if s > self.total)}")
            if self.precision_note:
                acc.print(f"note: {self.precision_note}")
            uses_cache = 0 < cfg.chunk_size < (3 if self.data.has_negatives else 2) * cfg.batch_size
            cache_note = f"gradient cache, chunks of {cfg.chunk_size} sentences" if uses_cache else "no gradient cache"
            acc.print(f"{self.spec.key}: {len(self.data)} triplets, {self.total} steps x {self.global_batch} triplets "
                      f"(effective contrastive batch {self.global_batch}: "
                      f"{(2 if self.data.has_negatives else 1) * self.global_batch - 1} negatives per "
                      f"anchor, {self.world} process(es)), {cache_note}, forward passes of <= "
                      f"{tokens_per_pass(cfg, device)} padded tokens, device {device_name(device)}, "
                      f"precision {self.precision}")

    def embed(self, batch: dict) -> torch.Tensor:
        """(n, d) normalised embeddings with graph, under this run's precision (autocast is per thread: set here)."""
        with autocast(self.precision, self.device):
            return embed_batch(self.model, batch, self.spec)

    def _optimiser_step(self) -> None:
        self.optimizer.step()
        self.weights_step = self.done + 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def steps(self, should_stop: Callable[[], bool] | None = None, report_every: int = 0) -> Iterator[StepInfo]:
        """Train up to the planned steps, yielding a StepInfo every ``report_every`` steps (0: at log steps,
        --log-every) and after the last one. Stops early when ``should_stop()`` is true (asked before every
        step) or when the caller stops iterating; then :meth:`finish` saves what was done.

        A loss is read from the device (a host sync) only when it is logged, checkpointed or yielded, so a
        NaN or infinite loss raises LossNotFinite at the next of those steps.
        """
        cfg, acc, data, main_proc = self.cfg, self.acc, self.data, self.acc.is_main_process
        if self.done == 0 and 0 in self.snap_steps and not self.state.snapshots:
            if main_proc:
                self.take_snapshot(0)
            acc.wait_for_everyone()
        from tqdm.auto import tqdm

        self.model.train()
        t0, seen0 = time.perf_counter(), self.seen
        pending: list[torch.Tensor] = []  # losses still on the device
        bar = tqdm(total=self.total, initial=self.done, desc="train", disable=not (main_proc and self.progress))
        try:
            while self.done < self.total and not (should_stop is not None and should_stop()):
                idx = batch_indices(self.done, len(data), self.global_batch, cfg.seed)
                idx = idx[acc.process_index * cfg.batch_size : (acc.process_index + 1) * cfg.batch_size]
                pending.append(contrastive_step(
                    self.embed, self.enc.tokenizer, self.spec, self.enc.pad_id, [data.anchor[i] for i in idx],
                    [data.positive[i] for i in idx], [data.negative[i] for i in idx] if data.has_negatives else [],
                    cfg, self.device,
                    backward=acc.backward, no_sync=lambda: acc.no_sync(self.model), executor=self.executor))
                self.executor(self._optimiser_step)
                self.seen += (3 if data.has_negatives else 2) * self.global_batch
                self.done = done = self.done + 1
                bar.update(1)
                if done in self.snap_steps:
                    if main_proc:
                        self.take_snapshot(done)
                    acc.wait_for_everyone()
                log_now = done % cfg.log_every == 0 or done == self.total
                ckpt_now = bool(cfg.ckpt_every) and done % cfg.ckpt_every == 0 and done < self.total
                report_now = log_now if not report_every else (done % report_every == 0 or done == self.total)
                if not (log_now or ckpt_now or report_now):
                    continue
                self._record_losses(pending)
                elapsed = time.perf_counter() - t0
                info = StepInfo(done, self.total, self.state.history[-1][1], self.scheduler.get_last_lr()[0],
                                (self.seen - seen0) / elapsed, elapsed)
                if main_proc and log_now:
                    line = (f"step {done}/{self.total} loss {info.loss:.4f} lr {info.lr:.3e} "
                            f"{info.sentences_per_second:.1f} sentences/s")
                    bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", sent_s=f"{info.sentences_per_second:.0f}")
                    bar.write(line) if self.progress else acc.print(line)
                if ckpt_now:
                    self.state.step = done
                    save_checkpoint(acc, self.ckpt)
                    self.ckpt_step = done
                if report_now:
                    yield info
            if pending:  # stopped between log steps: the losses of the last steps belong to the record
                self._record_losses(pending)
        finally:
            bar.close()
            self.wall += time.perf_counter() - t0
            if pending:  # the caller stopped iterating (GeneratorExit): keep what can be read
                with contextlib.suppress(LossNotFinite):
                    self._record_losses(pending)

    def _record_losses(self, pending: list[torch.Tensor]) -> None:
        """Read the pending losses (one sync), append them to the history; LossNotFinite at the first bad one.

        Every process holds the same global loss, so all of them stop together."""
        values = torch.stack(pending).tolist()
        pending.clear()
        first = self.done - len(values) + 1
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            where = f"{self.name}: {self.ckpt.name} (step {self.ckpt_step})" if self.ckpt_step is not None else "none written yet"
            raise LossNotFinite(f"loss is {values[bad]} at step {first + bad}; stopped, nothing after the last "
                                f"checkpoint was saved. Last good checkpoint: {where}. Try a lower --lr or check the data.")
        self.state.history.extend([first + i, round(v, 5)] for i, v in enumerate(values))

    def take_snapshot(self, step: int) -> None:
        """Save the adapter as it is after ``step`` steps (float16) and evaluate it like the final one.

        Step 0 needs no weights when the training prompt is the registry's: LoRA's B starts at zero, so
        the adapter then encodes exactly as the base model (tests/test_train.py checks it). The RNG
        state is restored afterwards: loading and LoRA initialisation draw from it, and a run with
        snapshots must train exactly as one without.
        """
        from tqdm.auto import tqdm

        from .evaluation import run_eval
        from .loading import attach_adapter

        device, spec = self.device, self.spec
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            if self._evaluator is None:
                self._evaluator = self.load(self.cfg.model, device=device, precision=self.cfg.precision)
            ev = self._evaluator
            rel, use = None, None  # None: the base model (step 0 with the registry prompt)
            if step > 0 or spec.prompt != self.enc.spec.prompt:
                rel = f"{SNAPSHOTS_DIR}/step-{step}"
                self.executor(lambda: save_adapter(self.acc.unwrap_model(self.model), self.out / rel, spec,
                                                   dtype=torch.float16))
                # the prompt travels with the weights: attach_adapter embeds with the one in training.json
                write_training_record(self.out / rel, {"model": spec.key, "prompt": spec.prompt, "step": step,
                                                       "snapshot_of": "../.."})
                use = attach_adapter(ev, self.out / rel).name
            r = run_eval(ev, ["STSBenchmark-dev"], adapter=use, limit=self.cfg.eval_limit or None)
        self.state.snapshots.append({"step": step, "path": rel, "dev": r["tasks"]["STSBenchmark-dev"],
                                     "random_pair_cosine": r["random_pair_cosine"]})
        tqdm.write(f"snapshot step {step}: STSBenchmark dev {r['tasks']['STSBenchmark-dev']:.2f}"
                   + (f", random-pair cosine {r['random_pair_cosine']:.3f}" if r["random_pair_cosine"] is not None else "")
                   + (f" ({rel})" if rel else " (= the base model)"))

    def record(self) -> dict:
        """The training record (training.json) of the steps done so far, before evaluation."""
        cfg, data, device = self.cfg, self.data, self.device
        trained = self.done - self.start
        stats = {"steps": self.done, "resumed_at": self.start or None, "wall_seconds": round(self.wall, 1),
                 "sentences_per_second": round(self.seen / self.wall, 1) if self.seen and self.wall else None,
                 "peak_memory_mb": round(peak_memory_mb(device), 1), "world_size": self.world,
                 "precision": self.precision, "tokens_per_pass": tokens_per_pass(cfg, device),
                 "effective_contrastive_batch": self.global_batch, "loss_curve": self.state.history}
        if self.done < self.total:
            stats["stopped_early"] = {"planned_steps": self.total, "trained_now": trained}
        if self.precision_note:
            stats["precision_note"] = self.precision_note
        return {"config": dataclasses.asdict(cfg), "command": command_line(cfg), "model": self.spec.key,
                "prompt": self.spec.prompt, "data": {"path": data.path, "sha256": data.sha256, "rows": len(data)},
                "device": device_name(device), "trained_on": device.type, "precision": self.precision,
                "training": stats, "environment": environment(device, precision.resolve(device, cfg.precision))}

    def finish(self, evaluate: bool = True) -> dict | None:
        """Save the adapter of the steps done (standard PEFT form), training.json and the model card; with
        ``evaluate`` also STSBenchmark dev and the test tasks of the config, through the app's own loader.
        Returns the record (None on processes other than the main one)."""
        if not self.acc.is_main_process:
            return None
        from .evaluation import run_eval
        from .modelcard import write_card

        out, cfg = self.out, self.cfg
        self.executor(lambda: save_adapter(self.acc.unwrap_model(self.model), out, self.spec))
        record = self.record()
        write_training_record(out, record)  # written now so a failing evaluation loses nothing
        if evaluate:
            # Evaluate what was saved, through the same loader the app uses (proves the adapter loads, with the
            # prompt it was trained with: attach_adapter reads it back from training.json).
            tuned = self.load(cfg.model, adapter=out, device=self.device, precision=cfg.precision)
            name = next(iter(tuned.adapters))  # the one adapter just attached (None would be the base model)
            dev = run_eval(tuned, ["STSBenchmark-dev"], adapter=name, limit=cfg.eval_limit or None,
                           progress=self.progress)
            record["dev"] = dev["tasks"]
            if self.wanted:  # the final step is always a snapshot: the adapter itself
                losses = {s: loss for s, loss in self.state.history}
                final = {"step": self.done, "path": ".", "dev": dev["tasks"]["STSBenchmark-dev"],
                         "random_pair_cosine": dev["random_pair_cosine"]}
                record["snapshots"] = [{"step": e["step"], "path": e["path"], "loss": losses.get(e["step"]),
                                        "dev": e["dev"], "random_pair_cosine": e["random_pair_cosine"]}
                                       for e in [*self.state.snapshots, final]]
            tasks = [t for t in cfg.eval_tasks if t != "STSBenchmark-dev"]
            if tasks:
                # the same record format as `python -m embedlab eval`, so it can go under assets/results as is
                record["test"] = {**run_eval(tuned, tasks, adapter=name, limit=cfg.eval_limit or None, progress=self.progress),
                                  "trained_on": self.device.type, "trained_device": record["device"]}
            write_training_record(out, record)
        write_card(out, self.spec)
        shutil.rmtree(self.ckpt, ignore_errors=True)
        msg = f"saved {self.name}"
        if "dev" in record:
            msg += f": STSBenchmark dev {record['dev']['STSBenchmark-dev']:.2f}"
        if "test" in record:
            msg += f", test average {record['test']['average']:.2f}"
        self.acc.print(msg)
        return record


def train(cfg: Config, *, load=load_encoder, on_step: Callable[[StepInfo], None] | None = None,
          should_stop: Callable[[], bool] | None = None, executor: Executor = _call, evaluate: bool = True,
          progress: bool = False) -> dict | None:
    """Set up, train (``on_step`` after every step; ``should_stop`` asked before each), save, evaluate.

    Returns the training record (None on processes other than the main one). Raises LossNotFinite,
    DataError, SetupError, ConfigError, AdapterError and the loader's errors.
    """
    trainer = Trainer(cfg, load=load, executor=executor, progress=progress)
    for info in trainer.steps(should_stop=should_stop, report_every=1 if on_step is not None else 0):
        if on_step is not None:
            on_step(info)
    return trainer.finish(evaluate=evaluate)
