"""LoRA adapters as untrusted input: find, validate and describe them.

An adapter is a PEFT folder: ``adapter_config.json`` + ``adapter_model.safetensors``
(optionally ``training.json`` written by train.py). Pickled weights are refused:
loading a pickle runs arbitrary code.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .registry import ModelSpec

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ADAPTERS_DIR = ASSETS / "adapters"
MAX_ADAPTER_BYTES = 256 * 2**20  # a LoRA for a <3B model is a few MB; anything this big is not one
MAX_JSON_BYTES = 2**20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


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
    record: dict[str, Any] = field(default_factory=dict, compare=False)  # training.json, if any


def sha256_file(path: Path, chunk: int = 2**22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path, what: str) -> dict:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise AdapterError(f"{what} is larger than {MAX_JSON_BYTES // 1024} KiB; not an adapter config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{what} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{what} must hold a JSON object")
    return data


def _inside(path: Path, roots: Sequence[Path]) -> bool:
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
    if allowed_roots is not None and not _inside(p, allowed_roots):
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
    cfg = _read_json(cfg_path, "adapter_config.json")
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"adapter type is {cfg.get('peft_type')!r}; only LoRA adapters are supported")
    base = str(cfg.get("base_model_name_or_path") or "")
    if base not in spec.base_ids:
        raise AdapterError(
            f"this adapter was trained for {base or 'an unnamed model'!r}, not for {spec.key} "
            f"(expected one of: {', '.join(spec.base_ids)})"
        )
    _check_weights(w_path)
    record = _read_json(p / "training.json", "training.json") if (p / "training.json").is_file() else {}
    targets = cfg.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    digest = sha256_file(w_path)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", p.name)[:40] + "-" + digest[:8]
    return AdapterInfo(name, p, digest, base, int(cfg.get("r") or 0), targets, record)


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
