"""Evaluate an encoder on the STS sets and produce the JSON record we commit and show."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .compute import BACKGROUND
from .encode import Encoder
from .provenance import environment
from .sts import TASKS, evaluate

ANISOTROPY_TEXTS = 1000  # STSBenchmark sentences sampled for the random-pair cosine


def anisotropy_texts(seed: int = 0) -> tuple[str, ...]:
    """The sentences whose random pairs measure anisotropy (same sample in the CLI and the app)."""
    from .corpora import builtin

    return builtin("stsb").sample(ANISOTROPY_TEXTS, seed=seed).texts


def random_pair_cosines(vectors: np.ndarray, n_pairs: int = 2000, seed: int = 0) -> np.ndarray:
    """Cosines of random distinct pairs of rows of (N, d) L2-normalised vectors -> (<= n_pairs,) float32."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(vectors), n_pairs), rng.integers(0, len(vectors), n_pairs)
    keep = i != j
    return np.einsum("ij,ij->i", vectors[i[keep]], vectors[j[keep]]).astype(np.float32)


def run_eval(
    enc: Encoder,
    tasks: Sequence[str] = TASKS,
    limit: int | None = None,
    sick: str = "mteb",
    adapter: str | None = None,
    progress: bool | Callable[[int, int, str], None] = False,
) -> dict:
    """Run :func:`embedlab.sts.evaluate` and return the record
    ``{"model","adapter","adapter_sha256","tasks","average","pairs","seconds",...}``.

    ``adapter``: the name of an adapter loaded on ``enc``, None = the base weights.
    ``progress``: True for a tqdm bar, or a callback ``(done, total, task)``.
    """
    info = enc.adapters[enc.check_adapter(adapter)] if adapter is not None else None
    bar = None
    if progress is True:
        bar = tqdm(total=len(tasks), desc="STS", unit="task")

        def progress(done: int, total: int, name: str) -> None:
            bar.n = done
            bar.set_postfix_str(name)
            bar.refresh()

    encode = functools.partial(enc.embed, adapters=adapter, priority=BACKGROUND)  # interactive work goes first
    result = evaluate(encode, tasks, limit=limit, sick=sick, progress=progress or None)
    if bar is not None:
        bar.close()
    aniso = None
    if limit is None:  # full runs also record how alike random sentences look (anisotropy)
        aniso = float(random_pair_cosines(encode(list(anisotropy_texts()))).mean())
    return {
        "model": enc.spec.key,
        "adapter": str(info.path) if info else None,
        "adapter_sha256": info.sha256 if info else None,
        "tasks": {k: round(v, 4) for k, v in result.tasks.items()},
        "average": round(result.average, 4),
        "pairs": result.pairs,
        "seconds": round(result.seconds, 2),
        "random_pair_cosine": None if aniso is None else round(aniso, 4),
        "limit": limit,
        "sick": sick,
        "prompt": enc.prompt_for(adapter),
        "max_length": enc.max_length,
        "precision": enc.precision.name,
        "environment": environment(enc.device, enc.precision),
    }
