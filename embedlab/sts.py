"""STS evaluation sets and the Spearman evaluator (MTEB conventions).

Readers return :class:`STSTask` (sentence pairs + gold scores). STS12-16 pool all
subsets of a year; pairs whose gold score is blank are skipped; SICK-R uses
train+trial+test like MTEB (``sick="test"`` gives SentEval's test-only variant).
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.stats import spearmanr

from . import ROOT
from .files import open_data

DATA_DIR = Path(os.environ.get("EMBEDLAB_DATA") or ROOT / "assets" / "data")

TASKS: tuple[str, ...] = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STSBenchmark", "BIOSSES", "SICK-R")
EXTRA_TASKS: tuple[str, ...] = ("STSBenchmark-dev",)  # for choosing settings; never tune on test
# Pair counts MTEB reports; a reader that disagrees is a bug.
EXPECTED_PAIRS = {
    "STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186, "STS17": 250,
    "STSBenchmark": 1379, "STSBenchmark-dev": 1500, "BIOSSES": 100, "SICK-R": 9927,
}
SICK_SPLITS = {"mteb": ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"), "test": ("SICK_test_annotated.txt",)}


@dataclass
class STSTask:
    """Sentence pairs with gold similarity scores."""

    name: str
    s1: list[str]
    s2: list[str]
    gold: np.ndarray  # float32 (N,), the set's own scale (0-5 or 1-5)
    subset: list[str] = field(default_factory=list)  # source subset per pair (genre, year...)

    def __len__(self) -> int:
        return len(self.gold)

    def subsample(self, n: int, seed: int = 0) -> "STSTask":
        """A seeded random subset of ``n`` pairs (order kept), for quick runs."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return STSTask(self.name, [self.s1[i] for i in idx], [self.s2[i] for i in idx], self.gold[idx],
                       [self.subset[i] for i in idx] if self.subset else [])


def _tsv(path: Path) -> list[list[str]]:
    # QUOTE_NONE: sentences contain bare quotes; STSBenchmark rows may carry extra columns.
    with open_data(path) as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _read_semeval(folder: str, prefix: str) -> tuple[list[str], list[str], list[float], list[str]]:
    s1, s2, gold, sub = [], [], [], []
    root = DATA_DIR / folder
    for gs in sorted(root.glob(f"{prefix}.gs.*.txt")):
        name = gs.name[len(prefix) + 4 : -4]
        rows = _tsv(root / f"{prefix}.input.{name}.txt")
        scores = gs.read_text(encoding="utf-8").splitlines()
        if len(rows) != len(scores):
            raise ValueError(f"{gs.name}: {len(scores)} scores for {len(rows)} pairs")
        for row, sc in zip(rows, scores):
            if not sc.strip():
                continue  # pair without a gold score (not annotated)
            s1.append(row[0].strip())
            s2.append(row[1].strip())
            gold.append(float(sc))
            sub.append(name)
    return s1, s2, gold, sub


def _read_stsb(split: str) -> tuple[list[str], list[str], list[float], list[str]]:
    rows = _tsv(DATA_DIR / "STSBenchmark" / f"sts-{split}.csv")
    return [r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows], [f"{r[0]}/{r[1]}" for r in rows]


def _read_biosses() -> tuple[list[str], list[str], list[float], list[str]]:
    rows = _tsv(DATA_DIR / "BIOSSES" / "biosses.tsv")[1:]
    return [r[1] for r in rows], [r[2] for r in rows], [float(r[-1]) for r in rows], ["biomedical"] * len(rows)


def _read_sick(sick: str) -> tuple[list[str], list[str], list[float], list[str]]:
    s1, s2, gold, sub = [], [], [], []
    for fname in SICK_SPLITS[sick]:
        rows = _tsv(DATA_DIR / "SICK" / fname)
        head = rows[0]
        a, b, r = head.index("sentence_A"), head.index("sentence_B"), head.index("relatedness_score")
        for row in rows[1:]:
            s1.append(row[a]); s2.append(row[b]); gold.append(float(row[r])); sub.append(fname[5:-4])  # noqa: E702
    return s1, s2, gold, sub


def load_task(name: str, sick: str = "mteb") -> STSTask:
    """Read one evaluation set from ``DATA_DIR``."""
    readers: dict[str, Callable[[], tuple]] = {
        "STS12": lambda: _read_semeval("STS12-en-test", "STS"),
        "STS13": lambda: _read_semeval("STS13-en-test", "STS"),
        "STS14": lambda: _read_semeval("STS14-en-test", "STS"),
        "STS15": lambda: _read_semeval("STS15-en-test", "STS"),
        "STS16": lambda: _read_semeval("STS16-en-test", "STS2016"),
        "STS17": lambda: _read_semeval("STS17", "STS"),
        "STSBenchmark": lambda: _read_stsb("test"),
        "STSBenchmark-dev": lambda: _read_stsb("dev"),
        "BIOSSES": _read_biosses,
        "SICK-R": lambda: _read_sick(sick),
    }
    if name not in readers:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS + EXTRA_TASKS)}")
    if sick not in SICK_SPLITS:
        raise ValueError(f"sick must be one of {', '.join(SICK_SPLITS)}")
    s1, s2, gold, sub = readers[name]()
    return STSTask(name, s1, s2, np.asarray(gold, dtype=np.float32), sub)


def spearman100(pred: np.ndarray, gold: np.ndarray) -> float:
    """Spearman rank correlation x100 (nan when undefined, e.g. constant input)."""
    if len(pred) < 2:
        return float("nan")
    return float(spearmanr(pred, gold).statistic * 100.0)


def pair_cosines(embed: Callable[[list[str]], np.ndarray], s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
    """Cosine per pair, encoding each distinct sentence once. ``embed`` returns L2-normalised rows."""
    uniq = list(dict.fromkeys([*s1, *s2]))
    pos = {s: i for i, s in enumerate(uniq)}
    E = embed(uniq)
    a = E[[pos[s] for s in s1]]
    b = E[[pos[s] for s in s2]]
    return np.einsum("ij,ij->i", a, b).astype(np.float32)


@dataclass
class EvalResult:
    tasks: dict[str, float]
    pairs: dict[str, int]
    seconds: float

    @property
    def average(self) -> float:
        return float(np.mean(list(self.tasks.values()))) if self.tasks else float("nan")


def evaluate(
    embed: Callable[[list[str]], np.ndarray],
    tasks: Sequence[str] = TASKS,
    limit: int | None = None,
    sick: str = "mteb",
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalResult:
    """Spearman x100 between cosine and gold for each task.

    ``embed``: texts -> float32 (N, d) L2-normalised. ``limit``: a seeded random
    subsample of that many pairs per task. ``progress(done, total, task)`` is
    called before each task and at the end.
    """
    t0 = time.perf_counter()
    scores, counts = {}, {}
    for i, name in enumerate(tasks):
        if progress:
            progress(i, len(tasks), name)
        task = load_task(name, sick=sick)
        if limit:
            task = task.subsample(limit)
        scores[name] = spearman100(pair_cosines(embed, task.s1, task.s2), task.gold)
        counts[name] = len(task)
    if progress:
        progress(len(tasks), len(tasks), "done")
    return EvalResult(scores, counts, time.perf_counter() - t0)
