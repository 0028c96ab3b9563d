"""LoRA adapters as untrusted input: find, validate, describe, save and convert them.

An adapter is a PEFT folder: ``adapter_config.json`` + ``adapter_model.safetensors``
(optionally ``training.json`` written by train.py, and a ``README.md`` model card).
Pickled weights are refused: loading a pickle runs arbitrary code.

Key forms. PEFT names each LoRA tensor after the module path of the model it was
saved from. We save in the *causal-LM form* (``base_model.model.model.layers.0...``),
the form ``PeftModel.from_pretrained(AutoModelForCausalLM...)`` and the paper's hub
adapters use; adapters saved by older embedlab on the bare backbone (AutoModel) have
the *backbone form* (``base_model.model.layers.0...``), which the standard way loads
as nothing (PEFT only warns). :func:`backbone_state` reads either.
"""
from __future__ import annotations

import functools
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import ROOT
from .files import replace_files, sha256_file, write_json
from .registry import ModelSpec

ASSETS = ROOT / "assets"
ADAPTERS_DIR = ASSETS / "adapters"
MAX_ADAPTER_BYTES = 256 * 2**20  # a LoRA for a <3B model is a few MB; anything this big is not one
MAX_JSON_BYTES = 2**20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PEFT_PREFIX = "base_model.model."  # what PeftModel puts in front of the wrapped model's module paths
MAX_PROMPT_CHARS = 1000


class AdapterError(ValueError):
    """An adapter that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class AdapterInfo:
    """A validated adapter folder."""

    name: str  # short identifier, unique per encoder
    path: Path
    sha256: str  # of adapter_model.safetensors: identifies the weights in caches
    base: str  # base_model_name_or_path from its config
    r: int
    targets: tuple[str, ...]
    prompt: str | None = None  # the template it was trained with (training.json), None = the registry's


def read_json(path: Path, what: str) -> dict:
    """A size-capped JSON object from a regular file (a FIFO or device is refused before it can block)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what was opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise AdapterError(f"cannot read {what} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AdapterError(f"{what} is not a regular file")
        if st.st_size > MAX_JSON_BYTES:
            raise AdapterError(f"{what} is larger than {MAX_JSON_BYTES // 1024} KiB")
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise AdapterError(f"{what} is larger than {MAX_JSON_BYTES // 1024} KiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{what} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{what} must hold a JSON object")
    return data


RECORD_FILE = "training.json"  # the training record beside an adapter's weights (written by embedlab.training)


def read_training_record(folder: str | Path) -> dict[str, Any]:
    """The ``training.json`` in an adapter folder as the JSON object it is, or {} if there is none: a regular
    file only, at most 1 MiB, a JSON object; else :class:`AdapterError`. Read through :class:`TrainingRecord`
    (typed, validated); the object as is only serves to write a record back with fields added."""
    p = Path(folder) / RECORD_FILE
    if not os.path.lexists(p):
        return {}
    return read_json(p, RECORD_FILE)


def write_training_record(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (what :meth:`embedlab.training.Trainer.record` builds) as ``<folder>/training.json``,
    whole or not at all; returns the file."""
    path = Path(folder) / RECORD_FILE
    write_json(path, record)
    return path


SNAPSHOTS_DIR = "snapshots"  # <adapter>/snapshots/step-<N>/: PEFT folders like the adapter itself


@dataclass(frozen=True)
class Snapshot:
    """The adapter as it was after ``step`` optimizer steps (train.py --snapshot-steps), from training.json.

    ``path`` is the PEFT folder holding that step's weights: ``<adapter>/snapshots/step-<N>`` or the
    adapter folder itself for the final step; None only where no weights are needed (step 0: LoRA's B
    starts at zero, so the adapter at step 0 encodes exactly as the base model). A step whose weights are
    not shipped is not a snapshot: training.json's ``learning_curve`` keeps its metrics (every evaluated
    step, shipped or not; see :func:`embedlab.replay.adopt_snapshots`), as entries with no path.
    """

    step: int
    path: Path | None
    loss: float | None  # training loss at that step (None at step 0)
    dev: float | None  # STSBenchmark dev Spearman x100
    random_pair_cosine: float | None  # mean cosine of random text pairs (anisotropy; lower = more spread)
    rel: str | None = field(default=None, compare=False)  # the path as recorded, relative to the adapter folder


def _steps(entries: Any, key: str, what: str, folder: Path | None) -> tuple[Snapshot, ...]:
    """training.json's ``snapshots`` or ``learning_curve`` entries, validated, one per step, by step.

    Paths are relative to the adapter ``folder`` and may not leave it (resolved only when ``folder`` is
    given); a bad step, path or number raises :class:`AdapterError`."""
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise AdapterError(f"training.json's {key} must be a list")
    out: dict[int, Snapshot] = {}
    for e in entries:
        if not isinstance(e, dict) or type(e.get("step")) is not int or e["step"] < 0:
            raise AdapterError(f"training.json: each {what} needs a whole step >= 0")
        rel = e.get("path")
        path = None
        if rel is not None:
            if not isinstance(rel, str) or Path(rel).is_absolute():
                raise AdapterError(f"training.json: {what} {e['step']}'s path must be relative to the adapter")
            if folder is not None:
                path = (folder / rel).resolve()
                if not inside(path, [folder]):
                    raise AdapterError(f"training.json: {what} {e['step']}'s path leaves the adapter folder")

        def num(name: str) -> float | None:
            v = e.get(name)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise AdapterError(f"training.json: {what} {e['step']}'s {name} must be a number")
            return float(v)

        out[e["step"]] = Snapshot(e["step"], path, num("loss"), num("dev"), num("random_pair_cosine"), rel)
    return tuple(out[k] for k in sorted(out))


def _number(v: Any) -> int | float | None:
    """A JSON number as recorded (bool and anything else: None)."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _object(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


@dataclass(frozen=True)
class TrainingRecord:
    """training.json, typed: what :meth:`embedlab.training.Trainer.record` and ``finish`` write beside an
    adapter (the settings, the command, the device, the loss curve, scores and snapshots). The one reader
    behind the app's cards and tables, ``python -m embedlab report``, the model cards, the replay and the
    export. Every field is optional (a record may be partial or absent: ``bool(record)`` is False then);
    fields of the wrong type read as missing, except those that decide what is loaded or shown as steps:
    a bad ``prompt`` raises :class:`AdapterError` on reading, bad ``snapshots`` or ``learning_curve`` when
    they are read (an adapter with a broken snapshot list still loads). ``raw``: the JSON object as read, to
    write back unchanged with fields added (:func:`write_training_record`)."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    folder: Path | None = None  # the adapter folder (resolved) snapshot paths are relative to
    model: str | None = None  # registry key
    prompt: str | None = None  # the template it was trained with (None: the registry's)
    device: str | None = None  # the device's name, e.g. "NVIDIA H100 80GB HBM3"
    trained_on: str | None = None  # "cuda" or "cpu"
    command: str | None = None  # the train.py command line
    note: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # embedlab.training.Config as recorded
    data: dict[str, Any] = field(default_factory=dict)  # {"path", "sha256", "rows"} of the training file
    training: dict[str, Any] = field(default_factory=dict)  # steps, wall_seconds, loss_curve, ... (Trainer.record)
    dev: float | None = None  # STSBenchmark dev Spearman x100 of the final adapter
    test: dict[str, Any] = field(default_factory=dict)  # the evaluation record of the test tasks

    @classmethod
    def read(cls, folder: str | Path) -> TrainingRecord:
        """The record in adapter ``folder`` (an empty one when it has none); :class:`AdapterError` when unusable."""
        folder = Path(folder).resolve()
        return cls.from_dict(read_training_record(folder), folder)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], folder: Path | None = None) -> TrainingRecord:
        """A record from its JSON object; snapshot paths are resolved against ``folder`` when given."""
        raw = dict(raw)
        prompt = raw.get("prompt")
        return cls(
            raw=raw, folder=folder, model=_text(raw.get("model")),
            prompt=None if prompt is None else validate_prompt(prompt, "training.json's prompt"),
            device=_text(raw.get("device")), trained_on=_text(raw.get("trained_on")), command=_text(raw.get("command")),
            note=_text(raw.get("note")) or "", config=_object(raw.get("config")), data=_object(raw.get("data")),
            training=_object(raw.get("training")), dev=_number(_object(raw.get("dev")).get("STSBenchmark-dev")),
            test=_object(raw.get("test")))

    def __bool__(self) -> bool:
        return bool(self.raw)

    @functools.cached_property
    def snapshots(self) -> tuple[Snapshot, ...]:
        """The steps whose weights ship, by step (paths resolved when the record was read from a folder)."""
        return _steps(self.raw.get("snapshots"), "snapshots", "snapshot", self.folder)

    @functools.cached_property
    def learning_curve(self) -> tuple[Snapshot, ...]:
        """Every evaluated step, shipped or not (no paths), by step."""
        return _steps(self.raw.get("learning_curve"), "learning_curve", "learning_curve entry", None)

    def setting(self, name: str) -> Any:
        """A training setting (a :class:`embedlab.training.Config` field) as recorded, None when absent."""
        return self.config.get(name)

    def stat(self, name: str) -> Any:
        """A figure of the run as recorded (``steps``, ``effective_contrastive_batch``, ``wall_seconds``,
        ``sentences_per_second``, ``world_size``...: numbers where train.py wrote it), None when absent."""
        return self.training.get(name)

    @property
    def loss_curve(self) -> tuple[tuple[int, float], ...]:
        """(step, training loss) of every logged step."""
        curve = self.training.get("loss_curve")
        return tuple((int(p[0]), float(p[1])) for p in curve if isinstance(p, (list, tuple)) and len(p) == 2
                     and isinstance(p[0], int) and _number(p[1]) is not None) if isinstance(curve, list) else ()

    @property
    def dev_curve(self) -> tuple[tuple[int, float], ...]:
        """(step, STSBenchmark dev) of every evaluated step: ``learning_curve`` (which may list steps whose
        weights do not ship), else ``snapshots``."""
        return tuple((s.step, s.dev) for s in (self.learning_curve or self.snapshots) if s.dev is not None)

    @property
    def test_scores(self) -> dict[str, float]:
        """STS test task -> Spearman x100 of the final adapter ({} when not evaluated)."""
        return {k: v for k, v in _object(self.test.get("tasks")).items() if _number(v) is not None}

    @property
    def test_average(self) -> float | None:
        return _number(self.test.get("average"))


def snapshots(folder: str | Path) -> list[Snapshot]:
    """The snapshots training.json lists for the adapter in ``folder``, by step ([] when it lists none).

    training.json holds ``"snapshots": [{"step": 0, "path": null, "loss": null, "dev": 20.1,
    "random_pair_cosine": 0.94}, {"step": 50, "path": "snapshots/step-50", ...}, {"step": 300,
    "path": ".", ...}]`` with paths relative to the adapter folder. A path that leaves the folder,
    a bad step or a malformed entry raises :class:`AdapterError`.
    """
    return list(TrainingRecord.read(folder).snapshots)


def validate_prompt(prompt: Any, what: str = "prompt") -> str:
    """A prompt template: a string holding ``{s}`` once formatting works; else :class:`AdapterError`."""
    if not isinstance(prompt, str) or "{s}" not in prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise AdapterError(f"{what} must be a text of at most {MAX_PROMPT_CHARS} characters containing {{s}}")
    try:
        prompt.format(s="x")
    except (KeyError, IndexError, ValueError) as e:
        raise AdapterError(f"{what} {prompt[:60]!r} is not a valid template ({e.__class__.__name__}); "
                           "write literal braces as {{ and }}") from None
    return prompt


def hub_id(spec: ModelSpec) -> str | None:
    """The spec's Hugging Face Hub id (the ``owner/name`` among its base ids), or None."""
    return next((b for b in spec.base_ids if "/" in b), None)


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """``path`` is one of ``roots`` or lies under one (both resolved: a link out of a root is outside)."""
    return any(path == r or r in path.parents for r in (Path(x).resolve() for x in roots))


def inspect_adapter(path: str | Path, spec: ModelSpec, allowed_roots: Sequence[Path] | None = None) -> AdapterInfo:
    """Validate an adapter folder for ``spec``; raise :class:`AdapterError` saying what is wrong.

    Checks: inside ``allowed_roots`` (when given), a folder, safetensors weights
    (pickle refused), size limit, a readable LoRA config whose base model is this
    spec's, and weights whose header parses and whose tensors are all LoRA tensors.
    """
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise AdapterError("no adapter path given")
    p = Path(path).expanduser().resolve()
    if allowed_roots is not None and not inside(p, allowed_roots):
        raise AdapterError(f"{path} is outside the allowed adapter folders")
    if not p.is_dir():
        raise AdapterError(f"{path} is not a folder (an adapter is a folder with adapter_config.json)")
    cfg_path, w_path = p / "adapter_config.json", p / "adapter_model.safetensors"
    if not w_path.is_file():
        pickles = [f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise AdapterError(
                f"{path} has pickled weights ({', '.join(pickles)}), which can run code when loaded; "
                "only adapter_model.safetensors is accepted"
            )
        raise AdapterError(f"{path} has no adapter_model.safetensors")
    if not cfg_path.is_file():
        raise AdapterError(f"{path} has no adapter_config.json")
    size = w_path.stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise AdapterError(f"adapter weights are {size / 2**20:.0f} MiB; the limit is {MAX_ADAPTER_BYTES // 2**20} MiB")
    cfg = read_json(cfg_path, "adapter_config.json")
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"adapter type is {cfg.get('peft_type')!r}; only LoRA adapters are supported")
    base = str(cfg.get("base_model_name_or_path") or "")
    if base not in spec.base_ids:
        raise AdapterError(
            f"this adapter was trained for {base or 'an unnamed model'!r}, not for {spec.key} "
            f"(expected one of: {', '.join(spec.base_ids)})"
        )
    _check_weights(w_path)
    prompt = TrainingRecord.read(p).prompt  # also refuses an unreadable record (FIFO, oversized, not JSON)
    targets = cfg.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    digest = sha256_file(w_path)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", p.name)[:40] + "-" + digest[:8]
    return AdapterInfo(name, p, digest, base, int(cfg.get("r") or 0), targets, prompt)


def _check_weights(w_path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(w_path), framework="pt") as f:
            keys = list(f.keys())
            for k in keys:  # reading each tensor catches truncation past the header
                f.get_slice(k)[:1]
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterError(f"adapter_model.safetensors is corrupt or truncated ({str(e)[:120]})") from None
    if not keys:
        raise AdapterError("adapter_model.safetensors holds no tensors")
    bad = [k for k in keys if "lora_" not in k]
    if bad:
        raise AdapterError(f"adapter_model.safetensors holds non-LoRA tensors (e.g. {bad[0]})")


def shipped_adapters(key: str) -> list[Path]:
    """Adapter folders shipped under assets/adapters/<key>/ (sorted by name)."""
    root = ADAPTERS_DIR / key
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / "adapter_config.json").is_file())


# --- key forms ------------------------------------------------------------------------------------

def causal_lm_prefix(backbone, trust_remote_code: bool = False) -> str:
    """Where the backbone (AutoModel) sits inside its AutoModelForCausalLM, e.g. ``"model"`` for Llama.

    Found by building the causal LM on the meta device (no memory, no weights) and
    looking for the child of the backbone's class; the class's ``base_model_prefix``
    otherwise.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(backbone.config, trust_remote_code=trust_remote_code)
        for name, child in lm.named_children():
            if type(child) is type(backbone):
                return name
        return str(lm.base_model_prefix)
    except (ValueError, KeyError, ImportError, OSError):
        return str(getattr(backbone, "base_model_prefix", "") or "model")


def to_causal_lm_keys(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Backbone-form PEFT keys (``base_model.model.layers...``) -> causal-LM form (``base_model.model.<prefix>.layers...``)."""
    out = {}
    for k, v in state.items():
        if not k.startswith(PEFT_PREFIX):
            raise AdapterError(f"unexpected adapter tensor name {k[:80]!r}")
        out[PEFT_PREFIX + prefix + "." + k[len(PEFT_PREFIX):]] = v
    return out


def backbone_state(state: Mapping[str, Any], expected: set[str], prefixes: Sequence[str]) -> dict[str, Any]:
    """Saved LoRA tensors -> the backbone form, matched explicitly against ``expected``.

    ``expected``: the backbone-form names (``base_model.model.layers.0...lora_A.weight``)
    the model has for this adapter. Each saved key is taken as is (backbone form) or
    with one of ``prefixes`` after ``base_model.model.`` removed (causal-LM form). Every
    expected tensor must be found exactly once and every saved tensor used; else
    :class:`AdapterError` saying how many did not match (PEFT itself only warns).
    """
    out: dict[str, Any] = {}
    unmatched = []
    for k, v in state.items():
        cands = [k] + [PEFT_PREFIX + k[len(PEFT_PREFIX) + len(p) + 1:] for p in prefixes
                       if p and k.startswith(PEFT_PREFIX + p + ".")]
        hit = next((c for c in cands if c in expected), None)
        if hit is None or hit in out:
            unmatched.append(k)
        else:
            out[hit] = v
    missing = sorted(expected - set(out))
    if unmatched or missing:
        example = (unmatched or missing)[0]
        why = (f"{len(unmatched)} saved tensor(s) fit no module, e.g. {example[:100]!r}" if unmatched
               else f"{len(missing)} missing from the file, e.g. {example[:100]!r}")
        raise AdapterError(f"adapter weights do not match the model: {len(out)} of {len(expected)} LoRA tensors "
                           f"would be applied ({why})")
    return out


def save_adapter(model, out: str | Path, spec: ModelSpec, adapter_name: str = "default", dtype=None) -> Path:
    """Save a PeftModel over the spec's backbone in the standard causal-LM form.

    The keys become those ``PeftModel.from_pretrained(AutoModelForCausalLM...)`` expects,
    ``base_model_name_or_path`` the Hub id, ``task_type`` CAUSAL_LM. Encoders (BERT-like)
    keep the backbone form, which is already theirs. ``dtype`` (e.g. ``torch.float16``, for
    training snapshots: half the bytes) casts the saved tensors; loaders copy them into the
    model's fp32 LoRA weights. Returns the folder.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out)
    state = {k: v.detach().cpu().to(dtype or v.dtype).contiguous()
             for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
    config = model.peft_config[adapter_name]
    base = model.get_base_model()
    if spec.causal:
        state = to_causal_lm_keys(state, causal_lm_prefix(base, spec.trust_remote_code))
        config.task_type = "CAUSAL_LM"
    elif not config.task_type:
        config.task_type = "FEATURE_EXTRACTION"
    config.base_model_name_or_path = hub_id(spec) or spec.key

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        cfg = json.loads((tmp / "adapter_config.json").read_text())
        cfg["auto_mapping"] = None  # the backbone class PEFT notes for task_type None; the standard form names none
        cfg["inference_mode"] = True
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    replace_files(out, write)
    return out


def convert_adapter(path: str | Path, spec: ModelSpec, backbone) -> bool:
    """Rewrite an adapter folder saved in the backbone form into the causal-LM form, in place.

    ``backbone``: the spec's AutoModel (for where it sits inside the causal LM). Also
    sets the config's base model to the Hub id. Tensors are copied bit for bit. Returns
    False when the folder already is in the standard form.
    """
    from safetensors.torch import load_file, save_file

    info = inspect_adapter(path, spec)
    state = load_file(str(info.path / "adapter_model.safetensors"))
    cfg = read_json(info.path / "adapter_config.json", "adapter_config.json")
    prefix = causal_lm_prefix(backbone, spec.trust_remote_code)
    lm_form = all(k.startswith(PEFT_PREFIX + prefix + ".") for k in state)
    base_id = hub_id(spec) or spec.key
    if lm_form and cfg.get("base_model_name_or_path") == base_id and cfg.get("task_type") == "CAUSAL_LM":
        return False
    if not lm_form:
        state = to_causal_lm_keys(state, prefix)
    cfg.update(base_model_name_or_path=base_id, task_type="CAUSAL_LM", auto_mapping=None)

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    replace_files(info.path, write)
    return True
