"""A side of a comparison: one embedder, spelled ``model[+adapter][@step]``, parsed once and passed everywhere.

    smollm2-135m               the base model
    smollm2-135m+nli-cft       with its shipped adapter (a folder under the allowed adapter folders)
    smollm2-135m+nli-cft@50    that adapter's training snapshot after 50 steps (training.json's snapshots)
    minilm-l6                  another model entirely

The same spelling is used by the UI's side pickers, the API, downloads and reproducibility records.
:func:`parse_side` validates a spec (type, length, model known and loadable here, adapter found under
the allowed folders and valid for the model, step listed) and raises :class:`SideError` naming the
valid specs. Adapter names are looked up among the folders found, never joined to a path, so a spec
cannot point outside the allowed folders.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ROOT
from .adapters import (ADAPTERS_DIR, AdapterError, AdapterInfo, TrainingRecord, inside, inspect_adapter, read_json,
                       snapshots)
from .files import memo_by_signature
from .messages import kind
from .registry import DEFAULT_MODEL, DEFAULT_PAIR, MODELS, get_spec
from .sources import available_models, hub_reachable

RUNS_DIR = ROOT / "runs"  # train.py's default output: local runs may be compared too
LIVE_PREFIX = "live-"  # adapter names of the app's live training runs (embedlab.live): resolved, never listed
MAX_SPEC_CHARS = 200
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"  # no leading dot: "..", ".hidden" are not adapter names
_SPEC = re.compile(rf"(?P<model>{_NAME})(?:\+(?P<adapter>{_NAME}(?:/{_NAME})?))?(?:@(?P<step>[0-9]{{1,9}}))?")  # ASCII digits only


class SideError(ValueError):
    """A side spec that cannot be used, with the reason and the valid specs in words. ``quoted``: the parts of
    the message that quote what was typed (shown as typed, even where they look like a server path)."""

    def __init__(self, message: str, quoted: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.quoted = quoted


@dataclass(frozen=True)
class Side:
    """One embedder: a model, optionally with a LoRA adapter, optionally at a training snapshot.

    Equal sides embed identically. ``weights`` is the PEFT folder to attach (None: the base
    weights, also for a snapshot at step 0, where LoRA's B is still zero).
    """

    model: str
    adapter: str | None = None  # the adapter's name (its folder name, or a registry hub repo)
    step: int | None = None  # a training snapshot's step; None = the adapter as shipped
    weights: Path | None = field(default=None, compare=False)
    folder: Path | None = field(default=None, compare=False)  # the adapter's own folder (its training record)
    sha256: str | None = field(default=None, compare=False)  # of the attached weights
    prompt: str | None = field(default=None, compare=False)  # the adapter's training prompt (None = registry's)
    hub: bool = field(default=False, compare=False)  # weights downloaded from the Hub (outside the allowed folders)

    @property
    def spec(self) -> str:
        """The canonical spelling, e.g. ``smollm2-135m+nli-cft@50``."""
        return self.model + (f"+{self.adapter}" if self.adapter else "") + (f"@{self.step}" if self.step is not None else "")

    @property
    def label(self) -> str:
        """Short name for plots and tables: the spec, with '(base)' for a bare model."""
        return self.spec if self.adapter else f"{self.model} (base)"

    def record(self) -> dict[str, Any]:
        """What makes this side's vectors, for reproducibility JSON."""
        spec = MODELS[self.model]
        return {"spec": self.spec, "model": self.model, "adapter": self.adapter, "step": self.step,
                "adapter_sha256": self.sha256, "prompt": self.prompt if self.prompt is not None else spec.prompt,
                "max_length": spec.max_length}


def adapter_roots() -> list[Path]:
    """Folders adapters may be loaded from (plus $EMBEDLAB_ADAPTER_DIRS, ':'-separated)."""
    extra = [Path(p) for p in os.environ.get("EMBEDLAB_ADAPTER_DIRS", "").split(":") if p]
    return [ADAPTERS_DIR, RUNS_DIR, *extra]


def live_root() -> Path:
    """Where the app's live training runs live ($EMBEDLAB_LIVE_DIR, else the gitignored ``live-runs/``): a run
    ``<model>+live-<id>`` is ``<root>/<model>/live-<id>``. Not one of :func:`adapter_roots`: nothing under it
    is listed to anyone; a spec naming a run's unguessable id resolves (:func:`parse_side`)."""
    return Path(os.environ.get("EMBEDLAB_LIVE_DIR") or ROOT / "live-runs")


def resolution_roots() -> list[Path]:
    """Folders an adapter named in a spec may be loaded from: :func:`adapter_roots` plus :func:`live_root`."""
    return [*adapter_roots(), live_root()]


def _live_folder(key: str, name: str) -> Path | None:
    """The live run ``name`` of model ``key`` (a folder holding an adapter), or None."""
    folder = live_root() / key / name
    if not ((folder / "adapter_config.json").is_file() and _base_of(folder) in MODELS[key].base_ids):
        return None
    try:
        os.utime(folder)  # in use: embedlab.live deletes a run's folder an hour after its last use
    except OSError:
        pass
    return folder


def _base_of(folder: Path) -> str | None:
    try:
        return str(read_json(folder / "adapter_config.json", "adapter_config.json").get("base_model_name_or_path") or "")
    except AdapterError:
        return None


def adapter_folders(key: str) -> dict[str, Path]:
    """{name: folder} of the adapters for model ``key`` under :func:`adapter_roots`: ``<root>/<key>/<name>``
    and ``<root>/<name>``; the first root that has a name wins (shipped adapters first). Only each
    folder's adapter_config.json is read here (its base model); the weights are checked by :func:`parse_side`."""
    spec = get_spec(key)
    roots = adapter_roots()
    out: dict[str, Path] = {}
    for root in roots:
        for parent in (root / key, root):
            try:
                folders = sorted(d for d in parent.iterdir() if d.is_dir())
            except OSError:
                continue
            for d in folders:
                # a link out of the allowed folders is no adapter: nothing behind it is read
                if d.name not in out and re.fullmatch(_NAME, d.name) and inside(d.resolve(), roots) \
                        and _base_of(d) in spec.base_ids:
                    out[d.name] = d
    return out


def hub_adapter_dir(key: str, repo: str) -> Path:
    """Download (or find in the HF cache) one of the registry's published adapters for ``key``."""
    if repo not in MODELS[key].hub_adapters:
        raise SideError(f"{repo} is not a published adapter for {key}")
    if not hub_reachable():
        raise SideError(f"{repo} needs the Hugging Face Hub, which is not reachable from this machine")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=["adapter_config.json", "adapter_model.safetensors"]))


def loadable_models() -> list[str]:
    """Registry keys that can load here, default model first."""
    ok = [k for k, (can, _) in available_models().items() if can]
    return sorted(ok, key=lambda k: k != DEFAULT_MODEL)


def valid_specs() -> list[str]:
    """Every side spec that parses here: each loadable model, its adapters, their snapshots."""
    return [s for key in loadable_models() for s in valid_specs_of(key, adapter_folders(key))]


def valid_specs_of(key: str, folders: dict[str, Path]) -> list[str]:
    """``key``, its adapters (``folders``: :func:`adapter_folders`) and their snapshots, as specs."""
    out = [key]
    for name, folder in folders.items():
        out.append(f"{key}+{name}")
        try:
            out += [f"{key}+{name}@{s.step}" for s in snapshots(folder)]
        except AdapterError:  # a malformed or unreadable record: the adapter itself may still parse
            pass
    if MODELS[key].hub_adapters and hub_reachable():
        out += [f"{key}+{repo}" for repo in MODELS[key].hub_adapters]
    return out


def side_choices() -> list[tuple[str, str]]:
    """(label, spec) for the side pickers: each valid spec with what it is (and where an adapter was trained)."""
    out = []
    for key in loadable_models():
        folders = adapter_folders(key)
        for s in valid_specs_of(key, folders):
            _, _, rest = s.partition("+")
            name, _, step = rest.partition("@")
            what = (MODELS[key].title if not rest else f"training snapshot, step {step}" if step
                    else "adapter" + _trained_on(folders.get(name)))
            out.append((f"{s} — {what}", s))
    return out


def _trained_on(folder: Path | None) -> str:
    """' · GPU-trained' / ' · CPU-trained' from an adapter's training record ('' when it says nothing)."""
    try:
        rec = TrainingRecord.read(folder) if folder is not None else TrainingRecord()
    except AdapterError:  # unreadable record (a FIFO, too large): no tag; parsing the spec says more
        return ""
    if not rec.trained_on:
        return ""
    return " · GPU-trained" if rec.trained_on == "cuda" else " · CPU-trained"


def model_sides(key: str) -> tuple[Side, Side]:
    """``key``'s base vs ``key`` with its first adapter (shipped ones first; the base again when it has none)."""
    a = parse_side(key)
    names = list(adapter_folders(key))
    return a, (parse_side(f"{key}+{names[0]}") if names else a)


def default_sides() -> tuple[Side, Side]:
    """What the lab shows first: the registry's DEFAULT_PAIR, or :func:`model_sides` of the first loadable
    model when that pair cannot load here (its model not installed, its adapter missing)."""
    models = loadable_models()
    if not models:
        raise SideError("no model can be loaded here")
    if models[0] == DEFAULT_MODEL:
        try:
            return parse_side(DEFAULT_PAIR[0]), parse_side(DEFAULT_PAIR[1])
        except SideError:
            pass
    return model_sides(models[0])


def model_pairs() -> list[tuple[Side, Side]]:
    """Each loadable model's base vs its first adapter (:func:`model_sides`), the default pair first; models
    without an adapter are left out. The page offers each as one click."""
    first = default_sides()
    rest = [p for p in map(model_sides, loadable_models()) if p[1].adapter is not None and p[0].model != first[0].model]
    return [first, *rest]


def seeded_sides() -> list[tuple[tuple[Side, Side], tuple[str, ...]]]:
    """What ``build-cache`` ships (assets/cache): each of :func:`model_pairs` whose model names
    ``seed_corpora`` in the registry, with those corpora."""
    return [(p, MODELS[p[0].model].seed_corpora) for p in model_pairs() if MODELS[p[0].model].seed_corpora]


def _short_list(specs: list[str]) -> str:
    """Specs for a message: an adapter's snapshots folded into one entry, ``m+a (@0, @50, @300)``."""
    steps: dict[str, list[str]] = {}
    for s in specs:
        head, at, step = s.partition("@")
        steps.setdefault(head, [])
        if at:
            steps[head].append("@" + step)
    return ", ".join(h + (f" ({', '.join(st)})" if st else "") for h, st in steps.items())


def _refuse(what: str, reason: str, quoted: tuple[str, ...] = ()) -> SideError:
    valid = valid_specs()
    sep = " " if reason.startswith(("must ", "is ", "has ")) else ": "
    return SideError(f"{what}{sep}{reason}. Valid sides here: {_short_list(valid) if valid else 'none'}", quoted)


def parse_side(value: Any, what: str = "side") -> Side:
    """``value`` (a spec such as ``smollm2-135m+nli-cft@50``) -> a validated :class:`Side`.

    Raises :class:`SideError` saying what is wrong and listing the valid specs.
    """
    if not isinstance(value, str):
        raise _refuse(what, f"must be a side spec (text) such as '{DEFAULT_MODEL}+nli-cft', not {kind(value)}")
    text = value.strip()
    if not text:
        raise _refuse(what, "is empty")
    if len(text) > MAX_SPEC_CHARS:
        raise _refuse(what, f"has {len(text):,} characters; a side spec has at most {MAX_SPEC_CHARS}")
    m = _SPEC.fullmatch(text)
    if m is None:
        shown = text if len(text) <= 60 else text[:57] + "…"
        raise _refuse(what, f"{shown!r} is not spelled model[+adapter][@step]", (repr(shown),))
    key, name, step = m["model"], m["adapter"], m["step"]
    if key not in MODELS:
        raise _refuse(what, f"unknown model {key!r}")
    ok, why = available_models()[key]
    if not ok:
        raise _refuse(what, f"{key} cannot be loaded here ({why})")
    if name is None:
        if step is not None:
            raise _refuse(what, f"a step needs an adapter ({key}+<adapter>@{step})")
        return Side(key)
    spec = MODELS[key]
    hub = "/" in name
    if hub:
        try:
            folder = hub_adapter_dir(key, name)
        except SideError as e:
            raise _refuse(what, str(e)) from None
    else:
        folder = _live_folder(key, name) if name.startswith(LIVE_PREFIX) else adapter_folders(key).get(name)
        if folder is None:
            raise _refuse(what, f"no adapter {name!r} for {key} in the allowed adapter folders")
    roots = None if hub else resolution_roots()
    info = _inspect(folder, spec.key, roots)
    if step is None:
        return Side(key, name, None, info.path, info.path, info.sha256, info.prompt, hub)
    listed = snapshots(info.path)
    snap = next((s for s in listed if s.step == int(step)), None)
    if snap is None:
        steps = ", ".join(str(s.step) for s in listed) or "none (its training.json lists no snapshots)"
        raise _refuse(what, f"{key}+{name} has no snapshot at step {int(step)}; its steps: {steps}")
    if snap.path is None:  # step 0: no weights needed, the base model's vectors
        return Side(key, name, snap.step, None, info.path, None, info.prompt, hub)
    snap_info = _inspect(snap.path, spec.key, [info.path])
    # a snapshot embeds with the prompt its adapter was trained with (its folder may carry no record)
    prompt = snap_info.prompt if snap_info.prompt is not None else info.prompt
    return Side(key, name, snap.step, snap_info.path, info.path, snap_info.sha256, prompt, hub)


def _inspect(folder: Path, key: str, roots: list[Path] | None) -> AdapterInfo:
    """:func:`inspect_adapter`, remembered while the folder's files are unchanged (it reads every tensor)."""
    return _inspect_memo(folder, key, tuple(map(str, roots)) if roots is not None else None)


@memo_by_signature(maxsize=64)
def _inspect_memo(folder: Path, key: str, roots: tuple[str, ...] | None) -> AdapterInfo:
    return inspect_adapter(folder, MODELS[key], [Path(r) for r in roots] if roots is not None else None)


def training_record(side: Side) -> TrainingRecord:
    """The training record of ``side``'s adapter (an empty one for a base model)."""
    return TrainingRecord.read(side.folder) if side.folder is not None else TrainingRecord()


__all__ = ["Side", "SideError", "parse_side", "valid_specs", "side_choices", "default_sides", "model_pairs", "seeded_sides", "model_sides", "adapter_roots",
           "resolution_roots", "live_root", "LIVE_PREFIX",
           "adapter_folders", "ROOT", "RUNS_DIR"]
