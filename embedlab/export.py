"""Leave the lab: a side (``model[+adapter][@step]``) as a sentence-transformers model folder.

``python -m embedlab export SIDE OUT`` writes a folder that ``SentenceTransformer(OUT)`` loads with no
embedlab installed and that embeds exactly as the lab does (:func:`embedlab.encode.tokenize` and
:func:`embedlab.encode.pool`):

- the backbone with the LoRA merged into its weights (PEFT's ``merge_and_unload``), safetensors,
  float32 by default or bfloat16 on request;
- a tokenizer whose post-processor (``tokenizers.processors.TemplateProcessing``) adds on its own what the
  lab adds by hand: the BOS where the registry says ``add_bos``, the registry's EOS at the end; truncation to
  the lab's ``max_length`` cuts the text, never those tokens (the tokenizer reserves room for them);
- ``Pooling`` in last-token mode for causal models (mean for encoders), then ``Normalize``;
- the adapter's prompt as the default sentence-transformers prompt, where it is a prefix (``"… {s}"``);
  a template with text after ``{s}`` cannot be expressed there and is written into the card instead;
- a model card (README.md) and ``embedlab_export.json`` (what was exported, from which weights).

Padding: the lab pads causal batches on the left and passes position ids that count real tokens only.
sentence-transformers passes no position ids, so left padding would shift every position of a short text;
its last-token pooling finds the last real token on either side (``attention_mask.flip(1).max(1)``). The
export therefore pads on the **right**: a causal model's real tokens never see the pads after them, and
keep positions 0..n-1, exactly as alone or in the lab.

The folder is built in a staging folder beside ``OUT``, checked (token ids equal the lab's; vectors equal the
lab's for a few probe texts at batch sizes 1 and all), and only then renamed to ``OUT``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .files import folder_bytes, swap_folder
from .registry import MODELS, ModelSpec
from .side import Side, parse_side, training_record

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
PROMPT_NAME = "embedlab"  # the prompt's name in config_sentence_transformers.json (the default prompt)
RECORD_FILE = "embedlab_export.json"
# Lowest cosine between the lab's float32 vectors and the export's, per dtype, checked before OUT is written.
MIN_COSINE = {torch.float32: 0.9999, torch.bfloat16: 0.99}
PROBES = (
    "A man is playing a guitar.",
    "Someone plays an instrument on stage while the crowd cheers loudly.",
    "A dog runs.",
    "Die Katze schläft auf dem Sofa — très bien, 猫.",
    " leading and trailing spaces ",
    # longer than any registry max_length: the tokenizer must cut the text and keep BOS/EOS
    "The quick brown fox jumps over the lazy dog. " * 60,
)


class ExportError(ValueError):
    """An export that cannot be made (bad output folder, a prompt or tokenizer that cannot be expressed,
    a check that failed); the message says why."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    side: str
    dtype: str
    bytes: int
    seconds: float
    min_cosine: float  # lowest cosine, lab vs export, over the probe texts
    note: str = ""  # a prompt the export cannot apply by itself


# --- the lab's side of things: the one place that calls the lab's encoder --------------------------------

def load_side(side: Side, device: str | torch.device = "cpu"):
    """(encoder, adapter name or None): ``side``'s backbone with its weights attached as the lab attaches them
    (:func:`embedlab.loading.attach_side`)."""
    from .loading import attach_side, load_encoder

    # fp32 whatever EMBEDLAB_PRECISION says: the merged weights must be the fp32 ones, and the reference vectors
    # the export is checked against (cosine >= 0.9999) must not carry bf16's rounding
    enc = load_encoder(side.model, device=device, precision="fp32")
    return enc, attach_side(enc, side)


def encode_side(enc, adapter: str | None, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """The lab's vectors of ``texts`` under ``adapter`` of ``enc`` (None = base weights): (N, d) float32."""
    return enc.embed(list(texts), adapter, batch_size=batch_size)


def lab_vectors(side: Side | str, texts: Sequence[str], device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """What an export of ``side`` must reproduce: the lab's vectors of ``texts``."""
    side = parse_side(side) if isinstance(side, str) else side
    enc, name = load_side(side, device)
    return encode_side(enc, name, texts, batch_size)


# --- pieces of the folder ----------------------------------------------------------------------------------

def prompt_parts(template: str) -> tuple[str, str]:
    """(text before ``{s}``, text after) of a prompt template, after ``str.format`` (so ``{{`` is ``{``)."""
    mark = "\x00embedlab-text\x00"
    before, sep, after = template.format(s=mark).partition(mark)
    if not sep:
        raise ExportError(f"prompt template {template!r} has no {{s}}")
    return before, after


def side_prompt(side: Side) -> str:
    """The template the lab embeds ``side``'s texts with."""
    return side.prompt if side.prompt is not None else MODELS[side.model].prompt


def export_tokenizer(lab_tokenizer, spec: ModelSpec, max_length: int, scratch: Path):
    """A copy of the lab's tokenizer (through ``scratch``, a folder it is saved to and read back from), made to
    add on its own what :func:`embedlab.encode.tokenize` adds by hand, truncate to ``max_length`` and pad on
    the right (see the module's docstring)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    lab_tokenizer.save_pretrained(str(scratch))
    tok = AutoTokenizer.from_pretrained(str(scratch), trust_remote_code=spec.trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{spec.key}: the export needs a fast tokenizer (its post-processor adds BOS/EOS)")
    tok.model_max_length = max_length
    tok.padding_side = "right"
    if getattr(tok, "chat_template", None):  # an embedding model has no chat: sentence-transformers would apply it
        tok.chat_template = None
    if not spec.causal:  # an encoder's own special tokens ([CLS] ... [SEP]) are the lab's too
        return tok
    eos_id = tok.convert_tokens_to_ids(spec.eos_token)
    if eos_id is None or eos_id == tok.unk_token_id:
        raise ExportError(f"{spec.key}: EOS token {spec.eos_token!r} is not in the tokenizer's vocabulary")
    bos = tok.bos_token if spec.add_bos and tok.bos_token_id is not None else None
    tok.eos_token = spec.eos_token  # a GGUF's tokenizer may name another token (SmolLM2's says <|im_start|>)
    if tok.pad_token is None:
        tok.pad_token = spec.eos_token  # the lab's pad (masked either way)
    for attr, on in (("add_bos_token", bos is not None), ("add_eos_token", True)):
        if hasattr(type(tok), attr):  # transformers' own switches: keep them in step with the post-processor
            setattr(tok, attr, on)
    specials = ([(bos, tok.bos_token_id)] if bos else []) + [(spec.eos_token, eos_id)]
    b = f"{bos}:0 " if bos else ""
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{b}$A:0 {spec.eos_token}:0",
        pair=f"{b}$A:0 {spec.eos_token}:0 {bos + ':1 ' if bos else ''}$B:1 {spec.eos_token}:1",
        special_tokens=specials)
    return tok


def merged_backbone(enc, adapter: str | None, dtype: torch.dtype) -> torch.nn.Module:
    """The encoder's backbone with ``adapter`` merged into its weights (the encoder is spent after this)."""
    model = enc.model
    if enc.adapters:
        if adapter is None:
            model = model.unload()  # the base weights, LoRA layers removed unmerged
        else:
            model = model.merge_and_unload(safe_merge=True, adapter_names=[adapter])
    enc.model = None  # merged weights must never serve as the lab's encoder again
    return model.to(device="cpu", dtype=dtype).eval()


def _scores(side: Side) -> tuple[dict[str, float], str]:
    """(STS test scores x100, where they come from) for the card: the adapter's training record, or the
    base model's result file; empty for a snapshot (its record has dev scores only)."""
    from . import ROOT

    if side.adapter is not None and side.step is None:
        return training_record(side).test_scores, "the adapter's training record (project evaluator)"
    if side.adapter is None:
        path = ROOT / "assets" / "results" / f"{side.model}-base.json"
        if path.is_file():
            return dict(json.loads(path.read_text()).get("tasks") or {}), f"assets/results/{path.name}"
    return {}, ""


def render_card(side: Side, spec: ModelSpec, dtype: str, max_length: int, prompt: str, note: str,
                record: dict[str, Any]) -> str:
    """The exported folder's README.md."""
    from .adapters import hub_id
    from .modelcard import HUB_LICENCES, model_index
    from .sts import TASKS

    base = hub_id(spec) or spec.key
    scores, scores_from = _scores(side)
    name = side.spec.replace("+", "-").replace("@", "-step")
    head = ["---", f"base_model: {base}", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
            f"license: {HUB_LICENCES.get(spec.licence, 'other')}", "language:", "- en", "tags:",
            *[f"- {t}" for t in ("sentence-transformers", "sentence-similarity", "feature-extraction", "embedlab",
                                 *(["lora-merged"] if side.adapter else []))]]
    if scores:
        head += model_index(name, scores)
    head.append("---")
    what = (f"`{spec.key}` with the LoRA adapter `{side.adapter}`" + (f" as it was after {side.step} training steps"
            if side.step is not None else "") + " merged into its weights") if side.adapter else f"`{spec.key}` as it is"
    if spec.causal:
        tokens = (("`" + spec.eos_token + "` is appended to every text") +
                  (", and the tokenizer's BOS put before it" if record["tokenizer"]["bos"] else "") +
                  f"; the embedding is the last layer's hidden state at that EOS (last-token pooling), L2-normalised. "
                  f"Texts longer than {max_length} tokens (BOS and EOS included) are cut, keeping the EOS. The tokenizer "
                  "pads on the right, so batching does not change a text's positions: any batch size gives the same "
                  "vectors.")
    else:
        tokens = (f"Mean of the last layer's token states, L2-normalised; texts are cut to {max_length} tokens.")
    body = [f"# {side.spec} (sentence-transformers export)", "",
            f"{spec.title}: {what}, exported by [embedlab](https://arxiv.org/abs/2408.00690) "
            "(contrastive LoRA fine-tuning of small language models for sentence embeddings).", "",
            "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer",
            "model = SentenceTransformer(\"path/to/this/folder\")",
            "vectors = model.encode([\"A man is playing a guitar.\", \"Someone plays an instrument.\"])",
            "```", "", "## What it does to a text", "", tokens, ""]
    if note:
        body += ["**Prompt.** " + note, ""]
    elif prompt != "{s}":
        body += [f"**Prompt.** Every text goes in as `{prompt}`: the default prompt `{PROMPT_NAME}` "
                 "(`config_sentence_transformers.json`) prepends it; `encode(..., prompt_name=None)` would not.", ""]
    body += ["## Provenance", "", f"- side: `{side.spec}`; weights {dtype}; max_seq_length {max_length}",
             f"- base model: {base}" + (f" (dequantised from the GGUF `{spec.source.gguf_name}`, sha256 "
                                       f"`{spec.source.sha256}`)" if spec.source.gguf_name else "")]
    if side.adapter:
        body.append(f"- adapter weights sha256: `{side.sha256}`")
    body += [f"- command: `{record['command']}`",
             f"- checked at export: cosine to the lab's vectors ≥ {record['check']['min_cosine']:.6f} on "
             f"{record['check']['texts']} probe texts at batch sizes 1 and {record['check']['texts']}", ""]
    if scores:
        body += ["## Results", "", f"Spearman x100 of cosine vs gold, test splits, from {scores_from}.", "",
                 "| task | Spearman |", "|---|---|", *[f"| {t} | {scores[t]:.2f} |" for t in TASKS if t in scores], ""]
    body += ["## Licence", "", f"The weights are {spec.title}'s: {spec.licence}."]
    if spec.licence == "Gemma Terms of Use":
        body.append("Gemma is provided under and subject to the Gemma Terms of Use found at "
                    "ai.google.dev/gemma/terms; this folder holds a modified version (a LoRA adapter merged into it).")
    return "\n".join(head + [""] + body) + "\n"


# --- the export -------------------------------------------------------------------------------------------

def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"{out} exists and is not empty; choose a new folder or pass --force to replace it")
        if not (out / RECORD_FILE).is_file():
            raise ExportError(f"{out} is not empty and holds no earlier export ({RECORD_FILE}): "
                              "--force replaces only an earlier export, never other files")


def _publish_modes(folder: Path) -> None:
    """Ordinary permissions (the umask's) for the staged folder: temporary files and folders are private."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def export_side(side: Side | str, out: str | Path, dtype: str = "float32", force: bool = False,
                device: str = "cpu", command: str | None = None) -> ExportReport:
    """Write ``side`` as a sentence-transformers folder at ``out`` (see the module's docstring)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer

    from .encode import tokenize

    t0 = time.perf_counter()
    side = parse_side(side) if isinstance(side, str) else side
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    dtype_name = str(torch_dtype).removeprefix("torch.")
    out = Path(out).absolute()
    _check_out(out, force)
    spec = MODELS[side.model]
    template = side_prompt(side)
    prefix, suffix = prompt_parts(template)
    note = ""
    if suffix:
        note = (f"the lab embeds every text as `{template}`, with text after the sentence, which a sentence-"
                "transformers prompt (a prefix) cannot express. This folder applies no prompt: format each text "
                f"yourself, `{template!r}.format(s=text)`, before `encode`.")
        prefix = ""

    enc, adapter = load_side(side, device)
    max_length = enc.max_length
    lab_tokenizer = enc.tokenizer
    probes = list(PROBES)
    expected = encode_side(enc, adapter, probes, batch_size=len(probes))
    expected_ids, _ = tokenize(enc.tokenizer, spec, probes, max_length, template)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        hf, st_dir = stage / "hf", stage / "st"
        model = merged_backbone(enc, adapter, torch_dtype)
        model.save_pretrained(str(hf), safe_serialization=True)
        del model, enc
        tok = export_tokenizer(lab_tokenizer, spec, max_length, stage / "tokenizer")
        tok.save_pretrained(str(hf))
        bos = spec.causal and tok.bos_token_id is not None and spec.add_bos
        transformer = Transformer(str(hf), max_seq_length=max_length, model_kwargs={"dtype": torch_dtype},
                                  modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                                  module_output_name="token_embeddings")
        dim = transformer.get_embedding_dimension()
        pooling = Pooling(dim, pooling_mode="lasttoken" if spec.pooling == "eos" else "mean")
        prompts = {PROMPT_NAME: prefix} if prefix else None
        st = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu", prompts=prompts,
                                 default_prompt_name=PROMPT_NAME if prefix else None)
        st.save(str(st_dir), create_model_card=False)
        del st, transformer
        shutil.rmtree(hf)

        # --- check the folder as a user gets it ---
        got_ids = AutoTokenizer.from_pretrained(str(st_dir))([prefix + t if not suffix else template.format(s=t)
                                                               for t in probes], truncation=True)["input_ids"]
        if got_ids != expected_ids:
            bad = next(i for i, (a, b) in enumerate(zip(got_ids, expected_ids)) if a != b)
            raise ExportError(f"the exported tokenizer gives other token ids than the lab for probe {bad + 1}: "
                              f"{got_ids[bad][:8]}… vs {expected_ids[bad][:8]}…")
        st = SentenceTransformer(str(st_dir), device="cpu")
        texts = [template.format(s=t) for t in probes] if suffix else probes
        worst = 1.0
        for bs in (1, len(probes)):
            vec = st.encode(texts, batch_size=bs, convert_to_numpy=True)
            worst = min(worst, float(np.min(np.sum(vec.astype(np.float64) * expected, axis=1))))
        del st
        if worst < MIN_COSINE[torch_dtype]:
            raise ExportError(f"the export's vectors differ from the lab's: lowest cosine {worst:.6f} < "
                              f"{MIN_COSINE[torch_dtype]} over {len(probes)} probe texts")

        record = {
            "side": side.record(), "dtype": dtype_name, "max_seq_length": max_length, "pooling": pooling.pooling_mode,
            "prompt": template, "st_prompt": prefix or None, "prompt_note": note or None,
            "tokenizer": {"adds": (f"{tok.bos_token} text {spec.eos_token}" if bos else f"text {spec.eos_token}")
                          if spec.causal else "its own special tokens", "bos": bool(bos), "padding_side": "right"},
            "check": {"texts": len(probes), "min_cosine": round(worst, 7), "batch_sizes": [1, len(probes)]},
            "command": command or f"python -m embedlab export {side.spec} {out.name}"
                                  + (f" --dtype {dtype}" if dtype_name != "float32" else ""),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(),
        }
        (st_dir / RECORD_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (st_dir / "README.md").write_text(render_card(side, spec, dtype_name, max_length, template, note, record),
                                          encoding="utf-8")
        _publish_modes(st_dir)
        size = folder_bytes(st_dir)
        swap_folder(st_dir, out, old=stage / "old")  # out: empty, or an earlier export under --force
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportReport(out, side.spec, dtype_name, size, time.perf_counter() - t0, worst, note)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("sentence-transformers", "transformers", "tokenizers", "peft", "torch"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
