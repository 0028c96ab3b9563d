"""Text -> sentence embedding: tokenisation, batching and pooling.

One code path serves inference (:meth:`Encoder.embed`) and training
(:func:`embed_batch` with gradients), so the EOS a model is trained with is the
EOS it is evaluated with.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .compute import INTERACTIVE, background_batch_tokens, background_batches_timed, run_rows
from .precision import Precision
from .registry import ModelSpec

log = logging.getLogger(__name__)

MAX_TOKENS = 4096  # padded tokens per batch by default
COALESCE_ROWS = 64  # rows per batch by default, and the most rows requests may share in one pass
MAX_TEXT_CHARS = 20_000  # one text; longer is refused (it would be truncated to max_length tokens anyway)


class TextError(ValueError):
    """A text the encoder refuses (empty, not a string, too long)."""


@dataclass
class EncodeReport:
    """What happened during one encode call."""

    n_texts: int
    n_truncated: int  # texts cut to max_length tokens
    max_length: int
    seconds: float
    tokens: int  # real (non-pad) tokens processed


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Check a batch of texts; raise :class:`TextError` naming the first bad one."""
    if isinstance(texts, str):
        raise TextError("expected a list of texts, got a single string")
    out = list(texts)
    if not out:
        raise TextError("no texts given")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TextError(f"text {i + 1} is {type(t).__name__}, not a string")
        if not t.strip():
            raise TextError(f"text {i + 1} is empty or whitespace only")
        if len(t) > MAX_TEXT_CHARS:
            raise TextError(f"text {i + 1} has {len(t):,} characters; the limit is {MAX_TEXT_CHARS:,}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (e.g. from JSON "\ud800"): tokenisers cannot take it
            raise TextError(f"text {i + 1} is not valid Unicode (a lone surrogate at character {e.start + 1})") from None
    return out


def tokenize(tokenizer, spec: ModelSpec, texts: Sequence[str], max_length: int,
             prompt: str | None = None) -> tuple[list[list[int]], int]:
    """Token ids per text with the prompt (default: the spec's), BOS and EOS; and how many were truncated.

    Causal LMs: ``[BOS if spec.add_bos] + ids(prompt(text)) + [EOS]`` — the EOS is always
    kept, so truncation cuts the text, never the token we pool. Encoders: the
    tokenizer's own special tokens ([CLS] ... [SEP]).
    """
    template = spec.prompt if prompt is None else prompt
    prompted = [template.format(s=t) for t in texts]
    plain = tokenizer(prompted, add_special_tokens=False)["input_ids"]
    if spec.causal:
        prefix = [tokenizer.bos_token_id] if spec.add_bos and tokenizer.bos_token_id is not None else []
        eos_id = tokenizer.convert_tokens_to_ids(spec.eos_token)
        if eos_id is None or eos_id == tokenizer.unk_token_id:
            raise ValueError(f"{spec.key}: EOS token {spec.eos_token!r} is not in the tokenizer's vocabulary")
        budget = max_length - len(prefix) - 1
        ids = [prefix + x[:budget] + [eos_id] for x in plain]
    else:
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        ids = tokenizer(prompted, truncation=True, max_length=max_length)["input_ids"]
    return ids, sum(len(x) > budget for x in plain)


def collate(ids: Sequence[Sequence[int]], pad_id: int, left: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad id lists to one (B, L) batch. Left padding also gets explicit position ids.

    Position ids count real tokens only, so a left-padded text sees the same
    positions as it would alone (batched == one-at-a-time).
    """
    L = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), L), dtype=torch.long)
    for i, x in enumerate(ids):
        sl = slice(L - len(x), L) if left else slice(0, len(x))
        input_ids[i, sl] = torch.tensor(x, dtype=torch.long)
        mask[i, sl] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if left:
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if device.type == "cuda":  # page-locked host memory: the copy runs asynchronously with the GPU's work
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, d) hidden states + (B, L) mask -> (B, d) sentence vectors (not normalised).

    eos: the last real token of each row (works for left or right padding).
    mean: average over real tokens.
    """
    if pooling == "eos":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    raise ValueError(f"unknown pooling {pooling!r}")


def embed_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], spec: ModelSpec, **extra) -> torch.Tensor:
    """Backbone forward (no LM head) + pooling -> (B, d) float32, L2-normalised. Keeps the graph.

    ``model`` is the bare backbone (AutoModel, or a PeftModel around one), so the
    vocabulary-sized LM head is never computed. ``extra`` goes to the model's forward
    (PEFT's per-row ``adapter_names``).
    """
    # A causal LM would otherwise build a KV cache we never read.
    if spec.causal:
        extra["use_cache"] = False
    out = model(**batch, **extra)
    # pooled in float32 whatever the model ran in (a no-op for float32 hidden states)
    vec = pool(out.last_hidden_state.float(), batch["attention_mask"], spec.pooling)
    return F.normalize(vec, dim=-1)


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | Callable[[], int]) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first).

    A batch holds at most ``batch_size`` texts and ``max_tokens`` padded tokens (one text at least),
    so a few long texts do not force padding on many short ones. ``max_tokens`` may be a function,
    asked as each batch is formed: a consumer that measures each batch sizes the next.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cap = max_tokens if callable(max_tokens) else lambda: max_tokens
    cur: list[int] = []
    limit = cap()
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or width * (len(cur) + 1) > limit):
            yield cur
            cur = []
            limit = cap()  # asked once the consumer is done with the batch before
        cur.append(i)
    if cur:
        yield cur


def _to_float32(x):
    """Floating tensors (also inside a tuple, e.g. rotary cos/sin) as float32; anything else as is."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.float()
    if isinstance(x, tuple):
        return tuple(_to_float32(v) for v in x)
    return x


@contextlib.contextmanager
def _float32_inside(module: torch.nn.Module, device_type: str) -> Iterator[None]:
    """While this block runs, ``module``'s forward runs with autocast off and its floating inputs in float32
    (its weights are float32: bf16 autocast keeps them so). Hooks, removed at the end of the block."""
    inner: list[torch.autocast] = []

    def enter(_m, args, kwargs):
        inner.append(ctx := torch.autocast(device_type, enabled=False))
        ctx.__enter__()
        return tuple(_to_float32(a) for a in args), {k: _to_float32(v) for k, v in kwargs.items()}

    def leave(_m, _args, _out):
        inner.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter, with_kwargs=True), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while inner:  # a forward that raised never reached its post-hook
            inner.pop().__exit__(None, None, None)


# PEFT's name for "no adapter" in a per-row ``adapter_names`` list (peft.tuners.lora). Only
# :meth:`Encoder._route` spells it: everywhere else the base model is ``None``.
_PEFT_BASE = "__base__"


@dataclass
class Encoder:
    """A loaded backbone (+ optional LoRA adapters) that turns texts into vectors.

    Built by :func:`embedlab.loading.load_encoder`. Every forward pass names the adapter of each
    row (``None`` = the base weights), so no call depends on state an earlier call left behind.
    Thread-safe: every forward pass and every change of the model (attaching adapters) runs on the
    one compute thread (:mod:`embedlab.compute`), one batch at a time.
    """

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    max_length: int
    weights_dir: str = ""
    adapters: dict = field(default_factory=dict)  # name -> AdapterInfo
    # what the forward passes run in; bf16 as the weights' dtype or under autocast: spec.bf16
    precision: Precision = field(default_factory=lambda: Precision("fp32", "fp32"))
    # (model, its modules named by spec.bf16_fp32_modules): found at the first bf16 pass, again if the model changes
    _fp32_found: tuple | None = field(default=None, init=False, repr=False, compare=False)
    # seconds per padded token of this encoder's recent background batches (a moving average; None: none yet),
    # which sizes the next one in a serving process (compute.background_batch_tokens)
    _s_per_token: float | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return int(tok.pad_token_id)
        # Causal LMs often have no pad token: the EOS serves (it is masked anyway).
        return int(tok.convert_tokens_to_ids(self.spec.eos_token)) if self.spec.eos_token else 0

    def prompt_for(self, name: str | None) -> str:
        """The prompt template texts get for adapter ``name`` (None = base): the one the adapter was
        trained with (its training record), else the registry's."""
        info = self.adapters.get(name) if name is not None else None
        return info.prompt if info is not None and info.prompt is not None else self.spec.prompt

    def check_adapter(self, name: str | None) -> str | None:
        """``name`` if that adapter is loaded (None = base passes), else KeyError naming the loaded ones."""
        if name is not None and name not in self.adapters:
            raise KeyError(f"adapter {name!r} is not loaded; loaded: {', '.join(self.adapters) or 'none'}")
        return name

    def embed(
        self,
        texts: Sequence[str],
        adapters: str | None | Sequence[str | None] = None,
        *,
        priority: int = INTERACTIVE,
        progress: bool = False,
        return_report: bool = False,
        batch_size: int = COALESCE_ROWS,
        max_tokens: int | None = None,
    ) -> np.ndarray | tuple[np.ndarray, EncodeReport]:
        """Texts -> float32 (N, d) L2-normalised embeddings, in input order.

        ``adapters``: one loaded adapter's name for every text, ``None`` for the base weights, or a
        list with one entry per text (rows of several adapters share one PEFT mixed-adapter pass: on a
        CPU a short request then costs one read of the weights rather than one per side). Each text
        gets its adapter's training prompt (:meth:`prompt_for`). Texts longer than ``max_length``
        tokens are truncated and counted in the report (and logged). ``max_tokens``: padded tokens
        per batch; by default 4096, or for background work in a serving process as many as this encoder's
        last background batches say fit in :func:`embedlab.compute.configure_for_serving`'s seconds.

        Each length-sorted batch is one entry on the compute thread, so work of a higher priority can
        run between two batches of a long job; interactive entries queued at the same moment share
        one forward pass (:func:`embedlab.compute.run_rows`).
        """
        t0 = time.perf_counter()
        texts = validate_texts(texts)
        if adapters is None or isinstance(adapters, str):
            names = [adapters] * len(texts)
        else:
            names = list(adapters)
            if len(names) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(names)} adapter names")
        for a in dict.fromkeys(names):
            self.check_adapter(a)
        # background work in a serving process: each batch as large as fits the time budget, from what this
        # encoder's background batches have cost so far (timed in _forward_rows)
        timed = max_tokens is None and priority != INTERACTIVE and background_batches_timed()
        if max_tokens is None:
            max_tokens = MAX_TOKENS
        # Each side is embedded with its own prompt: the adapter's training prompt, the registry's for the base.
        prompts = [self.prompt_for(n) for n in names]
        ids: list[list[int]] = [[] for _ in texts]
        n_trunc = 0
        for prompt in dict.fromkeys(prompts):
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            part, cut = tokenize(self.tokenizer, self.spec, [texts[i] for i in rows], self.max_length, prompt)
            n_trunc += cut
            for i, x in zip(rows, part):
                ids[i] = x
        if n_trunc:
            log.warning("%d of %d texts truncated to %d tokens", n_trunc, len(texts), self.max_length)
        lengths = [len(x) for x in ids]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        run = functools.partial(self._forward_rows, batch_size=batch_size, max_tokens=max_tokens, timed=timed)
        key = ("encode", id(self), batch_size, max_tokens, timed)
        cap = (lambda: background_batch_tokens(self._s_per_token) or MAX_TOKENS) if timed else max_tokens
        bar = tqdm(total=len(texts), desc=f"encode {self.spec.key}", unit="text", disable=not progress)
        for idx in length_batches(lengths, batch_size, cap):
            # Interactive rows may share a pass with other requests' rows (up to batch_size in all); a
            # background batch runs alone, so what a job writes to a cache does not depend on its neighbours
            # (its size may follow the time budget: a vector's last float bits may differ from another batching's).
            share = batch_size if priority == INTERACTIVE else len(idx)
            out[idx] = np.stack(run_rows(key, [(ids[i], names[i]) for i in idx], run, priority, share))
            bar.update(len(idx))
        bar.close()
        report = EncodeReport(len(texts), n_trunc, self.max_length, time.perf_counter() - t0, sum(lengths))
        return (out, report) if return_report else out

    def _numerics(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in: bf16 autocast where this model's bf16 is autocast, with the
        modules of ``spec.bf16_fp32_modules`` run in float32 (autocast off inside them)."""
        if not (self.precision.bf16 and self.spec.bf16 == "autocast"):
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        for module in self._fp32_modules():
            stack.enter_context(_float32_inside(module, self.device.type))
        return stack

    def _fp32_modules(self) -> list[torch.nn.Module]:
        """The modules ``spec.bf16_fp32_modules`` names (found once per model; LoRA adapters attach inside them)."""
        if not self.spec.bf16_fp32_modules:
            return []
        found = self._fp32_found
        if found is None or found[0] is not self.model:
            pats = [re.compile(rf"(?:.*\.)?(?:{p})") for p in self.spec.bf16_fp32_modules]
            found = (self.model, [m for n, m in self.model.named_modules() if any(p.fullmatch(n) for p in pats)])
            self._fp32_found = found
        return found[1]

    def _route(self, names: list[str | None]) -> dict:
        """The forward pass's keyword naming each row's adapter (None = base): PEFT's per-row
        ``adapter_names``; nothing for a backbone without adapters."""
        if not self.adapters:
            return {}
        return {"adapter_names": [_PEFT_BASE if n is None else n for n in names]}

    def _forward_rows(self, rows: list[tuple[list[int], str | None]], batch_size: int, max_tokens: int,
                      timed: bool = False) -> np.ndarray:
        """Compute thread: (token ids, adapter name or None) per row -> (N, d) float32, in length-sorted
        batches of at most ``batch_size`` rows and ``max_tokens`` padded tokens. ``timed``: each batch's
        seconds per padded token go into the encoder's average, which sizes its background batches."""
        if self.model.training:  # walking ~5K modules costs 10 ms: only if something left training on
            self.model.eval()
        ids = [r[0] for r in rows]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for idx in length_batches([len(x) for x in ids], batch_size, max_tokens):
            start = time.perf_counter()
            batch = collate([ids[i] for i in idx], self.pad_id, left=self.spec.causal, device=self.device)
            with torch.inference_mode(), self._numerics():
                vec = embed_batch(self.model, batch, self.spec, **self._route([rows[i][1] for i in idx]))
            out[idx] = vec.cpu().numpy()
            if timed:  # only ever on the compute thread (run_rows): one writer; readers see a whole float
                cost = (time.perf_counter() - start) / (len(idx) * max(len(ids[i]) for i in idx))
                last = self._s_per_token
                self._s_per_token = cost if last is None else 0.7 * last + 0.3 * cost  # one slow batch smoothed out
        return out
