"""Hugging Face Hub model cards (``README.md``) for adapter folders, generated from training.json.

The card is a pure function of the adapter's training record (:class:`embedlab.adapters.TrainingRecord`)
and the model's registry entry, so it
is regenerated, never edited: ``train.py`` writes it at the end of a run and
``python -m embedlab model-card`` rewrites the shipped ones.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from . import files
from .adapters import TrainingRecord, hub_id
from .registry import ModelSpec
from .sts import TASKS

# The MTEB datasets our 9 evaluation sets are (the Hub links model-index results to them).
MTEB_DATASETS = {
    "STS12": ("mteb/sts12-sts", "default"), "STS13": ("mteb/sts13-sts", "default"),
    "STS14": ("mteb/sts14-sts", "default"), "STS15": ("mteb/sts15-sts", "default"),
    "STS16": ("mteb/sts16-sts", "default"), "STS17": ("mteb/sts17-crosslingual-sts", "en-en"),
    "STSBenchmark": ("mteb/stsbenchmark-sts", "default"), "BIOSSES": ("mteb/biosses-sts", "default"),
    "SICK-R": ("mteb/sickr-sts", "default"),
}
# Registry licence names -> the Hub's licence identifiers.
HUB_LICENCES = {"Apache-2.0": "apache-2.0", "MIT": "mit", "Gemma Terms of Use": "gemma"}
# Training files whose name starts with a key here were built from these Hub datasets (see assets/data/SOURCES.md),
# and a note naming their sources ("": none beyond the datasets). The multi-genre file's third source,
# counterfactually-augmented SNLI, has no Hub dataset: its GitHub repository is named in the note instead.
TRAINING_DATASETS: dict[str, tuple[tuple[str, ...], str]] = {
    "snli_": (("stanfordnlp/snli",), ""),
    "nli_for_simcse": (("princeton-nlp/datasets-for-simcse",), ""),
    "multigenre_": (("stanfordnlp/snli", "nyu-mll/multi_nli"),
                    "SNLI dev+test, MultiNLI 1.0 dev and counterfactually-augmented SNLI train "
                    "(acmi-lab/counterfactually-augmented-data), built by `python -m embedlab build-data`"),
}
CARD_FILE = "README.md"


def usage_snippet(spec: ModelSpec, prompt: str, base_ref: str, adapter_ref: str, max_length: int) -> str:
    """Python that embeds sentences with the adapter the standard PEFT way (no embedlab needed).

    Same text handling as :func:`embedlab.encode.tokenize`: prompt, optional BOS, EOS
    appended after truncation, left padding with position ids counting real tokens,
    last-layer hidden state at the EOS, L2-normalised.
    """
    bos = "[tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []" if spec.add_bos else "[]"
    return f'''import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base_id = {base_ref!r}
adapter_id = {adapter_ref!r}
tokenizer = AutoTokenizer.from_pretrained(base_id)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), adapter_id).eval()
eos = tokenizer.convert_tokens_to_ids({spec.eos_token!r})
bos = {bos}


def embed(texts: list[str]) -> torch.Tensor:
    """(N, hidden size) L2-normalised embeddings: the last layer's state at an appended EOS."""
    ids = [bos + tokenizer({prompt!r}.format(s=t), add_special_tokens=False)["input_ids"][: {max_length} - len(bos) - 1]
           + [eos] for t in texts]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[eos] * (width - len(x)) + x for x in ids])  # left padding
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True)
    return F.normalize(out.hidden_states[-1][:, -1].float(), dim=-1)


a, b, c = embed(["A man is playing a guitar.", "Someone plays an instrument.", "A dog runs in the park."])
print(f"similar: {{float(a @ b):.3f}}  unrelated: {{float(a @ c):.3f}}")
'''


def _weights_note(spec: ModelSpec) -> str:
    """Which exact weights the adapter was trained on (a GGUF model's file, and its Hub twin if any)."""
    src = spec.source
    if not src.gguf_name:
        return f"Trained on {spec.title} (embedlab's `{spec.key}`)."
    text = (f"Trained on the dequantised weights of the GGUF `{src.gguf_name}` (sha256 `{src.sha256}`), embedlab's "
            f"`{spec.key}`; the original weights above give close but not identical embeddings.")
    twin = getattr(src, "hub_twin", None)
    if twin is not None:
        text += (f" For the exact weights load `AutoModelForCausalLM.from_pretrained(\"{twin.repo}\", "
                 f"gguf_file=\"{twin.filename}\", revision=\"{twin.revision}\")` (needs the `gguf` package).")
    return text


def _record(record: TrainingRecord | Mapping[str, Any]) -> TrainingRecord:
    return record if isinstance(record, TrainingRecord) else TrainingRecord.from_dict(record)


def _training_datasets(record: TrainingRecord) -> tuple[tuple[str, ...], str]:
    """(the Hub datasets the training file was built from, a note naming its sources) by its file name."""
    name = Path(str(record.data.get("path", ""))).name
    return next((v for prefix, v in TRAINING_DATASETS.items() if name.startswith(prefix)), ((), ""))


def command_of(record: TrainingRecord | Mapping[str, Any]) -> str:
    """The training command: as recorded by train.py, else rebuilt from every recorded setting."""
    record = _record(record)
    if record.command is not None:
        return record.command
    flags = []
    for k, v in record.config.items():
        if k in ("resume", "config") or v in ("", None, []):
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            flags.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            flags.append(flag + " " + " ".join(map(str, v)))
        else:
            flags.append(f"{flag} {json.dumps(v) if isinstance(v, str) and ' ' in v else v}")
    return "python train.py " + " ".join(flags)


def _yaml_scalar(v: Any) -> str:
    return json.dumps(v)  # a JSON string or number is valid YAML


def model_index(name: str, scores: Mapping[str, float]) -> list[str]:
    """YAML lines of the Hub's model-index for the STS test scores (Spearman x100 of cosine)."""
    lines = ["model-index:", f"- name: {_yaml_scalar(name)}", "  results:"]
    for task in TASKS:
        if task not in scores:
            continue
        ds, cfg = MTEB_DATASETS[task]
        lines += ["  - task:", "      type: STS", "    dataset:", f"      type: {ds}", f"      name: MTEB {task}",
                  f"      config: {cfg}", "      split: test", "    metrics:", "    - type: cosine_spearman",
                  f"      value: {round(float(scores[task]), 2)}"]
    return lines


def _or(v: Any) -> Any:
    """A recorded value, or "?" where the record has none."""
    return "?" if v is None else v


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def snapshot_lines(record: TrainingRecord | Mapping[str, Any]) -> list[str]:
    """The card's "Training snapshots" section: every evaluated step (``learning_curve``, else the
    ``snapshots`` list) with where its weights are; [] when the record has none."""
    record = _record(record)
    snaps = {s.step: s for s in record.snapshots}
    curve = {s.step: s for s in record.learning_curve}
    steps = sorted(set(snaps) | set(curve))
    if not steps:
        return []

    def where(step: int) -> str:
        if step not in snaps:
            return "not shipped"
        path = snaps[step].rel
        return "the base model" if path is None else ("this adapter" if path == "." else f"`{path}`")

    rows = []
    for step in steps:
        e = snaps.get(step) or curve[step]
        rows.append(f"| {step} | {where(step)} | {_num(e.loss, '.4f')} | {_num(e.dev, '.2f')} | "
                    f"{_num(e.random_pair_cosine, '.3f')} |")
    return ["", "## Training snapshots", "",
            "The adapter as it was during training, saved by `train.py --snapshot-steps` as PEFT folders of the same "
            "form (float16 weights): load one exactly like the adapter above. Step 0 is the base model (LoRA's B "
            "starts at zero). Training loss at that step, STSBenchmark dev Spearman x100, and the mean cosine of "
            "random sentence pairs (lower = embeddings spread out more).", "",
            "| step | weights | training loss | STSBenchmark dev | random-pair cosine |", "|---|---|---|---|---|", *rows]


def render_card(spec: ModelSpec, record: TrainingRecord | Mapping[str, Any], name: str) -> str:
    """The README.md text for adapter ``name`` of ``spec`` from its training record."""
    record = _record(record)
    base = hub_id(spec) or spec.key
    test = record.test
    scores = record.test_scores
    prompt = record.prompt or spec.prompt
    datasets, data_note = _training_datasets(record)
    tags = ["sentence-embeddings", "sentence-similarity", "feature-extraction", "lora", "peft",
            "contrastive-learning", "embedlab", f"base_model:adapter:{base}"]
    head = ["---", f"base_model: {base}", "library_name: peft", f"license: {HUB_LICENCES.get(spec.licence, 'other')}",
            "language:", "- en", "pipeline_tag: sentence-similarity", "tags:", *[f"- {_yaml_scalar(t)}" for t in tags]]
    if datasets:
        head += ["datasets:", *[f"- {d}" for d in datasets]]
    if scores:
        head += model_index(f"{spec.key}-{name}", scores)
    head.append("---")

    device = record.device or "unknown device"
    rows = [f"| {t} | {scores[t]:.2f} |" for t in TASKS if t in scores]
    dev = record.dev
    body = [
        f"# {spec.key} {name}: a sentence encoder by contrastive LoRA fine-tuning",
        "",
        f"A LoRA adapter (r={_or(record.setting('lora_r'))}, alpha={_or(record.setting('lora_alpha'))}, on "
        f"{', '.join(record.setting('lora_targets') or spec.lora_targets)}) that turns [{base}](https://huggingface.co/{base}) "
        "into a sentence encoder, following *Improving Text Embeddings for Smaller Language Models Using Contrastive "
        "Fine-tuning* (arXiv 2408.00690): InfoNCE over (premise, entailment, contradiction) triplets with in-batch and "
        f"hard negatives, temperature {_or(record.setting('temperature'))}. The embedding is the last layer's hidden state at "
        f"an EOS token (`{spec.eos_token}`) appended to the text" + (f", which goes in as `{prompt}`" if prompt != "{s}"
                                                                      else "") + ".",
        "",
        _weights_note(spec),
        "",
        "## Usage",
        "",
        "```python",
        usage_snippet(spec, prompt, base, "path/to/this/folder (or its Hub repo id)",
                      int(test.get("max_length") or spec.max_length)).rstrip(),
        "```",
        "",
        "## Training",
        "",
        f"- device: {device}" + (f", {record.stat('world_size')} process(es)" if record.stat("world_size") else ""),
        f"- data: `{record.data.get('path', '?')}`, {record.data.get('rows', '?')} triplets"
        + (f" ({data_note})" if data_note else f" (from {', '.join(datasets)})" if datasets else ""),
        f"- {_or(record.stat('steps'))} steps x {_or(record.stat('effective_contrastive_batch'))} triplets, "
        f"lr {_or(record.setting('lr'))}, {_or(record.stat('wall_seconds'))} s"
        + (f", {record.stat('sentences_per_second')} sentences/s" if record.stat("sentences_per_second") else ""),
        "- command:",
        "",
        "```bash",
        command_of(record),
        "```",
        "",
        "## Results",
        "",
        "Spearman correlation x100 between cosine similarity and the gold scores, on the test splits "
        f"(SICK-R: {test.get('sick', 'mteb')} pairs)" + (f"; STSBenchmark dev: {dev:.2f}" if dev is not None else "")
        + ".",
        "",
        "| task | Spearman |",
        "|---|---|",
        *rows,
    ]
    if record.test_average is not None:
        body.append(f"| average | {record.test_average:.2f} |")
    body += snapshot_lines(record)
    return "\n".join(head + [""] + body) + "\n"


def write_card(folder: str | Path, spec: ModelSpec) -> Path:
    """Write ``README.md`` into an adapter folder from its training.json; returns its path."""
    folder = Path(folder)
    path = folder / CARD_FILE
    files.write_text(path, render_card(spec, TrainingRecord.read(folder), folder.name))
    return path
