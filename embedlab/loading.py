"""The one loader: registry key (+ adapter) -> :class:`~embedlab.encode.Encoder`.

GGUF models are dequantised once and cached as a plain safetensors folder
(``$EMBEDLAB_CACHE``, default ``~/.cache/embedlab``) with a manifest holding the
weights' sha256, so later loads skip the slow GGUF path and a corrupt cache is
detected and rebuilt.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from .adapters import AdapterError, AdapterInfo, inspect_adapter, sha256_file
from .compute import on_compute_thread
from .encode import Encoder
from .registry import ModelSpec, availability, get_spec

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the converted folder's layout changes


class ModelUnavailableError(RuntimeError):
    """A registered model that cannot be loaded here; the message says why."""


def cache_root() -> Path:
    """Root of embedlab's caches (converted models, embeddings, indexes)."""
    return Path(os.environ.get("EMBEDLAB_CACHE") or Path.home() / ".cache" / "embedlab")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gguf_file(spec: ModelSpec) -> Path:
    """Path of the spec's GGUF file (assembling it first where the package requires)."""
    src = spec.source
    if src.kind == "gguf_package":
        return Path(str(importlib.metadata.distribution(src.dist).locate_file(src.path)))
    if src.kind == "gguf_assemble":
        return Path(getattr(importlib.import_module(src.module), src.function)())
    raise ValueError(f"{spec.key} is not a GGUF model")


def _source_id(spec: ModelSpec) -> str:
    """Identifies the source weights without hashing them (package name + version + file)."""
    src = spec.source
    version = importlib.metadata.version(src.dist)
    return f"{src.dist}=={version}:{src.path or src.function}:tokenizer={spec.gguf_tokenizer}"


def _write_manifest(folder: Path, source: str) -> None:
    w = folder / "model.safetensors"
    manifest = {"format": CACHE_FORMAT, "source": source, "bytes": w.stat().st_size, "sha256": sha256_file(w)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def cache_is_valid(folder: Path, source: str, check_hash: bool = True) -> bool:
    """The converted folder is complete and its weights match the manifest."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
        w = folder / "model.safetensors"
        ok = m["format"] == CACHE_FORMAT and m["source"] == source and w.stat().st_size == m["bytes"]
        return bool(ok and (not check_hash or sha256_file(w) == m["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_gguf(spec: ModelSpec, out_dir: Path) -> Path:
    """Dequantise the spec's GGUF once into a safetensors folder (fp32: bit-identical weights).

    ``save_pretrained`` refuses GGUF-loaded models, so config, tokenizer and state
    dict are written separately. Written to a temporary folder and renamed, so a
    killed conversion never leaves a half folder behind.
    """
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    path = gguf_file(spec)
    t0 = time.perf_counter()
    log.info("converting %s (one time, slow)", path.name)
    if spec.gguf_tokenizer == "spm_bpe":
        from .gguf_tokenizer import spm_bpe_tokenizer

        tok = spm_bpe_tokenizer(path)
    else:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # the converted weights are plain floats
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_manifest(tmp, _source_id(spec))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s -> %s", path.name, time.perf_counter() - t0, out_dir)
    return out_dir


def weights_dir(spec: ModelSpec) -> str:
    """A folder (or hub id) that ``from_pretrained`` loads for this spec, converting GGUF on first use."""
    src = spec.source
    if src.kind == "hub":
        return src.repo
    if src.kind == "package_dir":
        return str(importlib.metadata.distribution(src.dist).locate_file(src.path))
    folder = cache_root() / "models" / f"{spec.key}-v{CACHE_FORMAT}"
    source = _source_id(spec)
    if not cache_is_valid(folder, source):
        if folder.exists():
            log.warning("cached conversion at %s is incomplete or corrupt; rebuilding", folder)
        convert_gguf(spec, folder)
    return str(folder)


def load_encoder(
    key: str | ModelSpec,
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    max_length: int | None = None,
    allowed_adapter_roots: Sequence[Path] | None = None,
) -> Encoder:
    """Load a registered model as an :class:`Encoder` (float32), optionally with a LoRA adapter.

    Raises :class:`ModelUnavailableError` (with the reason) when the model cannot
    load here and :class:`AdapterError` for an unusable adapter.
    """
    from transformers import AutoModel, AutoTokenizer

    spec = key if isinstance(key, ModelSpec) else get_spec(key)
    ok, why = availability(spec)
    if not ok:
        raise ModelUnavailableError(f"{spec.key}: {why}")
    dev = torch.device(device) if device is not None else default_device()
    try:
        folder = weights_dir(spec)
        kw = {"trust_remote_code": spec.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModel.from_pretrained(folder, dtype=torch.float32, **kw).to(dev).eval()
    except (OSError, ValueError, ImportError) as e:
        raise ModelUnavailableError(f"{spec.key} failed to load: {str(e).splitlines()[0][:300]}") from e
    enc = Encoder(spec, model, tokenizer, dev, max_length or spec.max_length, weights_dir=folder)
    if adapter is not None:
        attach_adapter(enc, adapter, allowed_roots=allowed_adapter_roots)
    return enc


def attach_adapter(
    enc: Encoder, path: str | Path, allowed_roots: Sequence[Path] | None = None, activate: bool = True
) -> AdapterInfo:
    """Validate and load a LoRA adapter onto the encoder's backbone (no reload of the base).

    Accepts adapters saved in the causal-LM form (ours, the paper's hub adapters) and the
    older backbone form: the saved names are mapped explicitly onto the backbone's LoRA
    modules, and every LoRA tensor must be applied (PEFT would only warn and run the base
    model). Several adapters can be loaded; :meth:`Encoder.encode` picks one with
    ``use_adapter`` and embeds its texts with the prompt it was trained with
    (``info.prompt``). Loading the same weights twice is a no-op.
    """
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    from .adapters import backbone_state

    info = inspect_adapter(path, enc.spec, allowed_roots)

    def load() -> None:
        name = info.name
        config = LoraConfig.from_pretrained(str(info.path))
        config.inference_mode = True
        if not enc.adapters:
            enc.model = PeftModel(enc.model, config, adapter_name=name)
        else:
            enc.model.add_adapter(name, config)
        lora = {n: p for n, p in enc.model.named_parameters() if "lora_" in n and f".{name}." in n}
        expected = {n.replace(f".{name}.", "."): n for n in lora}
        backbone = enc.model.get_base_model()
        prefixes = list(dict.fromkeys([getattr(backbone, "base_model_prefix", ""), "model"]))
        state = backbone_state(load_file(str(info.path / "adapter_model.safetensors")), set(expected), prefixes)
        result = set_peft_model_state_dict(enc.model, state, adapter_name=name)
        bad = [k for k in result.missing_keys if k in lora] + list(result.unexpected_keys)
        # Count what landed: every LoRA tensor of this adapter now holds the saved values.
        applied = sum(torch.equal(lora[expected[k]].detach().cpu(), v.to(lora[expected[k]].dtype)) for k, v in state.items())
        if bad or applied != len(lora):
            raise AdapterError(f"adapter {info.path.name}: {applied} of {len(lora)} LoRA tensors applied")

    def attach() -> None:  # on the compute thread: it changes the model other requests are running
        if info.name not in enc.adapters:
            first = not enc.adapters
            try:
                load()
            except (RuntimeError, ValueError, KeyError, OSError, TypeError) as e:
                # undo a half-attached adapter so the encoder stays as it was
                if first and isinstance(enc.model, PeftModel):
                    enc.model = enc.model.unload()
                elif info.name in getattr(enc.model, "peft_config", {}):
                    enc.model.delete_adapter(info.name)
                if isinstance(e, AdapterError):
                    raise
                # e.g. shape mismatch: an adapter for another width that claims the same base
                raise AdapterError(f"adapter does not fit {enc.spec.key}: {str(e).splitlines()[0][:200]}") from e
            enc.model.eval()
            enc.adapters[info.name] = info
            enc._mode = "?"  # loading switched the model's adapter state: set it again before the next batch
        if activate:
            enc.active_adapter = info.name

    on_compute_thread(attach)
    return info
