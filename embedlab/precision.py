"""Which number format the forward passes run in: ``EMBEDLAB_PRECISION=auto|bf16|fp32``.

``auto`` (the default) is bf16 on a GPU and on a CPU with native bf16 instructions (x86
``avx512_bf16`` or ``amx_bf16``: AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and
later; ARM ``bf16``/``sve_bf16``), else fp32. ``bf16`` forced on a CPU without them still works:
torch emulates it, slower, and the log and the status line say so once. How a model runs in bf16
(its weights cast, or fp32 weights under autocast) is registry data: ``ModelSpec.bf16``.

Measured on this project's CPU (AMD EPYC, avx512_bf16), a busy 2-core machine: SmolLM2 in bf16
autocast embeds 4.8x faster than in fp32 (``bench/encode.py``), min cosine to fp32 0.9988 on 384 STS-B
sentences; per-model figures in ``bench/precision.py`` and the registry (``ModelSpec.bf16``).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

ENV = "EMBEDLAB_PRECISION"
CHOICES = ("auto", "bf16", "fp32")
# CPU capability flags (torch.cpu.get_capabilities) that mean bf16 arithmetic in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


# Said in every record of vectors that may come from an embedding cache (a view's corpus): the cache keys
# hold no precision, so a bf16 process serves the shipped fp32 caches. Measured (bench/precision.py --caches
# 32): the shipped SmolLM2 caches against fresh bf16 vectors, cosine >= 0.9992 on every text checked.
CACHED_VECTORS_NOTE = ("vectors read from an embedding cache may have been computed in the other precision: the "
                       "shipped caches (assets/cache) hold fp32 vectors stored in 8 bits (cosine >= 0.9999 to them). bf16 and fp32 vectors of "
                       "one text differ little: cosine >= 0.9992 on the texts checked against the shipped caches, "
                       ">= 0.9988 on 384 STS-B sentences (SmolLM2 base; bench/precision.py, bench/encode.py)")


class PrecisionError(ValueError):
    """A precision setting that is not one of :data:`CHOICES`."""


def requested(value: str | None = None) -> str:
    """``value`` (else ``$EMBEDLAB_PRECISION``, else ``auto``), checked: one of :data:`CHOICES`."""
    raw = value if value is not None else os.environ.get(ENV, "auto")
    choice = raw.strip().lower()
    if choice not in CHOICES:
        source = "--precision" if value is not None else ENV
        raise PrecisionError(f"{source}={raw!r} is not a precision; use one of: {', '.join(CHOICES)}")
    return choice


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 in hardware (torch's own cpuinfo-based detection)."""
    caps = torch.cpu.get_capabilities()
    return any(bool(caps.get(flag, False)) for flag in NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """The precision the forward passes of one device run in.

    ``name``: "bf16" or "fp32" (what records, cache keys and the status line say). ``requested``: the
    setting it came from. ``emulated``: bf16 on a CPU without native bf16 (works, slower).
    """

    name: str
    requested: str
    emulated: bool = False

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def describe(self) -> str:
        """One phrase for people: ``bf16``, ``fp32``, or bf16 with why it is slow."""
        if self.emulated:
            return "bf16 (emulated: this CPU has no native bf16, so it runs slower than fp32 would)"
        return self.name if self.requested != "auto" else f"{self.name} (auto)"


_warned: set[str] = set()


def resolve(device: torch.device | str | None, setting: str | None = None) -> Precision:
    """The precision for ``device`` (None = the default device) under ``setting`` (default:
    ``$EMBEDLAB_PRECISION``). Raises :class:`PrecisionError` for a value outside :data:`CHOICES`.
    """
    choice = requested(setting)
    dev = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    native = dev.type != "cpu" or cpu_has_native_bf16()
    if choice == "fp32" or (choice == "auto" and not native):
        return Precision("fp32", choice)
    p = Precision("bf16", choice, emulated=not native)
    if p.emulated and "emulated" not in _warned:
        _warned.add("emulated")
        log.warning("%s=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): torch emulates it, "
                    "slower than fp32; use auto or fp32 for speed", ENV)
    return p
