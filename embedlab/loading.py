"""The one loader: registry key (+ adapter) -> :class:`~embedlab.encode.Encoder`.

A GGUF model's file comes from the first source that has exactly the registry's
bytes (:func:`embedlab.sources.locate_gguf`). It is dequantised once and cached as a plain
safetensors folder under :func:`cache_root` with a manifest holding the weights'
sha256, so later loads skip the slow GGUF path and a corrupt cache is detected and
rebuilt. Concurrent processes convert once (a file lock next to the folder).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import importlib.metadata
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
# Imported here, by the thread that imports this module (the app's main thread), not on first use: transformers'
# lazy attributes resolved by two threads at once (the warm-up loading a model while a request loads another)
# failed with "cannot import name 'AutoModel' from 'transformers'".
from peft import LoraConfig, PeftModel, set_peft_model_state_dict  # peft resolves transformers' names as it imports
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401  (gguf_tokenizer's)

from .adapters import AdapterError, AdapterInfo, inspect_adapter
from .compute import on_compute_thread
from .encode import Encoder
from .files import sha256_file, staged_folder, write_json
from .precision import resolve as resolve_precision
from .registry import ModelSpec, get_spec
from .side import Side, resolution_roots
from .sources import availability, locate_gguf

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the converted folder's layout changes


class ModelUnavailableError(RuntimeError):
    """A registered model that cannot be loaded here; the message says why."""


SPACE_DATA = Path("/data")  # a Hugging Face Space's persistent storage, when the Space has it


def cache_root() -> Path:
    """Root of embedlab's caches (converted models, embeddings, indexes).

    ``$EMBEDLAB_CACHE``; else ``/data/embedlab`` where ``/data`` exists and is
    writable (a Space's persistent storage: the one-time conversion survives
    restarts); else ``~/.cache/embedlab``.
    """
    if os.environ.get("EMBEDLAB_CACHE"):
        return Path(os.environ["EMBEDLAB_CACHE"])
    if SPACE_DATA.is_dir() and os.access(SPACE_DATA, os.W_OK | os.X_OK):
        return SPACE_DATA / "embedlab"
    return Path.home() / ".cache" / "embedlab"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gguf_file(spec: ModelSpec) -> Path:
    """Path of the spec's sha256-checked GGUF file, fetching or assembling it where needed."""
    found = locate_gguf(spec, download=True)
    if found.path is None:
        raise ModelUnavailableError(f"{spec.key}: {found.reason}")
    log.info("%s: GGUF from %s", spec.key, found.origin)
    return found.path


def _source_id(spec: ModelSpec) -> str:
    """Identifies the source weights by the GGUF's sha256, so every source shares one converted cache."""
    return f"gguf-sha256={spec.source.sha256}:tokenizer={spec.gguf_tokenizer}"


def write_manifest(folder: Path, source: str) -> None:
    """The converted folder's manifest: its format, source and the weights' size and sha256."""
    w = folder / "model.safetensors"
    write_json(folder / "manifest.json", {"format": CACHE_FORMAT, "source": source, "bytes": w.stat().st_size,
                                          "sha256": sha256_file(w)}, indent=1)


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

    path = gguf_file(spec)
    t0 = time.perf_counter()
    log.info("converting %s (one time, slow)", path.name)
    if spec.gguf_tokenizer == "spm_bpe":
        from .gguf_tokenizer import spm_bpe_tokenizer

        tok = spm_bpe_tokenizer(path)
    else:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with staged_folder(out_dir) as tmp:
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # the converted weights are plain floats
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_manifest(tmp, _source_id(spec))
    log.info("converted %s in %.1f s -> %s", path.name, time.perf_counter() - t0, out_dir)
    return out_dir


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if absent) for the block; waits for other processes."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(folder: Path, source: str, build: Callable[[Path], object]) -> None:
    """Make ``folder`` a valid cache of ``source``, calling ``build(folder)`` only when it is not.

    N processes starting at once (training ranks, app workers) build it once: the
    others wait on the lock and then find it valid.
    """
    if cache_is_valid(folder, source):
        return
    with _locked(folder.with_name(folder.name + ".lock")):
        if cache_is_valid(folder, source):  # another process built it while we waited
            return
        if folder.exists():
            log.warning("cached conversion %s is incomplete or stale; rebuilding", folder.name)
        build(folder)


def weights_dir(spec: ModelSpec) -> str:
    """A folder (or hub id) that ``from_pretrained`` loads for this spec, converting GGUF on first use."""
    src = spec.source
    if src.kind == "hub":
        return src.repo
    if src.kind == "package_dir":
        return str(importlib.metadata.distribution(src.dist).locate_file(src.path))
    folder = cache_root() / "models" / f"{spec.key}-v{CACHE_FORMAT}"
    build_once(folder, _source_id(spec), lambda out: convert_gguf(spec, out))
    return str(folder)


def load_encoder(
    key: str | ModelSpec,
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    max_length: int | None = None,
    allowed_adapter_roots: Sequence[Path] | None = None,
    precision: str | None = None,
) -> Encoder:
    """Load a registered model as an :class:`Encoder`, optionally with a LoRA adapter.

    ``precision``: auto|bf16|fp32, default ``$EMBEDLAB_PRECISION`` (:mod:`embedlab.precision`); in bf16
    the weights are cast to bf16 or kept float32 under autocast, as the spec's ``bf16`` says (LoRA
    weights stay float32 either way). Raises :class:`ModelUnavailableError` (with the reason) when
    the model cannot load here, :class:`AdapterError` for an unusable adapter and
    :class:`~embedlab.precision.PrecisionError` for an unknown precision.
    """
    spec = key if isinstance(key, ModelSpec) else get_spec(key)
    ok, why = availability(spec)
    if not ok:
        raise ModelUnavailableError(f"{spec.key}: {why}")
    dev = torch.device(device) if device is not None else default_device()
    prec = resolve_precision(dev, precision)
    dtype = torch.bfloat16 if prec.bf16 and spec.bf16 == "weights" else torch.float32
    try:
        folder = weights_dir(spec)
        kw = {"trust_remote_code": spec.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModel.from_pretrained(folder, dtype=dtype, **kw).to(dev).eval()
    except (OSError, ValueError, ImportError) as e:
        raise ModelUnavailableError(f"{spec.key} failed to load: {str(e).splitlines()[0][:300]}") from e
    enc = Encoder(spec, model, tokenizer, dev, max_length or spec.max_length, weights_dir=folder, precision=prec)
    if adapter is not None:
        attach_adapter(enc, adapter, allowed_roots=allowed_adapter_roots)
    return enc


def attach_side(enc: Encoder, side: Side) -> str | None:
    """Attach ``side``'s weights to ``enc`` (its model's backbone); returns the name to embed under (None: the
    base weights). The weights must lie in the allowed adapter folders unless downloaded from the Hub, and
    embed with the side's prompt: a snapshot's folder may carry no record, and embeds with its adapter's."""
    if side.weights is None:
        return None
    info = attach_adapter(enc, side.weights, allowed_roots=None if side.hub else resolution_roots())
    if info.prompt != side.prompt:
        enc.adapters[info.name] = dataclasses.replace(info, prompt=side.prompt)
    return info.name


def attach_adapter(
    enc: Encoder, path: str | Path, allowed_roots: Sequence[Path] | None = None
) -> AdapterInfo:
    """Validate and load a LoRA adapter onto the encoder's backbone (no reload of the base).

    Accepts adapters saved in the causal-LM form (ours, the paper's hub adapters) and the
    older backbone form: the saved names are mapped explicitly onto the backbone's LoRA
    modules, and every LoRA tensor must be applied (PEFT would only warn and run the base
    model). Several adapters can be loaded, each under its ``info.name``; :meth:`Encoder.embed`
    names the adapter of each text and embeds it with the prompt that adapter was trained with
    (``info.prompt``). Loading the same weights twice is a no-op.
    """
    from safetensors.torch import load_file

    from .adapters import backbone_state

    info = inspect_adapter(path, enc.spec, allowed_roots)

    def load() -> None:
        name = info.name
        config = LoraConfig.from_pretrained(str(info.path))
        config.inference_mode = True
        # low_cpu_mem_usage: the new LoRA tensors are made on the meta device and the saved ones assigned, so attaching
        # draws nothing from torch's global random generator: a live run's dropout draws from it on another thread,
        # and a frame attached meanwhile made train.py --config of the run give other losses (tests/test_live.py)
        if not enc.adapters:
            enc.model = PeftModel(enc.model, config, adapter_name=name, low_cpu_mem_usage=True)
        else:
            enc.model.add_adapter(name, config, low_cpu_mem_usage=True)
        lora = _lora_params(enc, name)
        expected = {n.replace(f".{name}.", "."): n for n in lora}
        backbone = enc.model.get_base_model()
        prefixes = list(dict.fromkeys([getattr(backbone, "base_model_prefix", ""), "model"]))
        state = backbone_state(load_file(str(info.path / "adapter_model.safetensors")), set(expected), prefixes)
        result = set_peft_model_state_dict(enc.model, state, adapter_name=name, low_cpu_mem_usage=True)
        bad = [k for k in result.missing_keys if k in lora] + list(result.unexpected_keys)
        # Count what landed: every LoRA tensor of this adapter now holds the saved values (the tensors assigned, so
        # looked up again; one left on the meta device holds none)
        lora = {n: p for n, p in enc.model.named_parameters() if n in lora}
        for k, v in state.items():  # assigning took the layer's dtype (bf16 weights): LoRA's are float32, as PEFT makes them
            p = lora.get(expected.get(k, ""))
            if p is not None and not p.is_meta and p.dtype != torch.float32 and v.is_floating_point():
                p.data = v.to(device=p.device, dtype=torch.float32)
        applied = sum(not lora[expected[k]].is_meta and torch.equal(lora[expected[k]].detach().cpu(),
                                                                    v.to(lora[expected[k]].dtype))
                      for k, v in state.items())
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

    on_compute_thread(attach)
    return info


def _lora_params(enc: Encoder, name: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of the adapter loaded under ``name``, by their names in ``enc.model``."""
    return {n: p for n, p in enc.model.named_parameters() if "lora_" in n and f".{name}." in n}


def adapter_bytes(enc: Encoder, name: str) -> int:
    """Bytes of the LoRA weights loaded under ``name`` on ``enc`` (0 when none are)."""
    return sum(p.numel() * p.element_size() for p in _lora_params(enc, name).values())


def detach_adapter(enc: Encoder, name: str) -> None:
    """Remove the adapter loaded under ``name`` from ``enc`` (its weights freed); the last one unwraps the backbone,
    as it was before any was attached. On the compute thread, like attaching: passes never see it half removed."""
    def detach() -> None:
        if enc.adapters.pop(name, None) is None:
            return
        if not enc.adapters:
            enc.model = enc.model.unload()
        else:
            with warnings.catch_warnings():  # "adapter … was active": passes name their adapters (adapter_names)
                warnings.simplefilter("ignore", UserWarning)
                enc.model.delete_adapter(name)
        enc.model.eval()

    on_compute_thread(detach)
