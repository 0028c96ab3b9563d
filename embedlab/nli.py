"""NLI training triplets (anchor, positive, hard negative): read, validate, build from SNLI, MultiNLI and CAD.

Training data is any CSV with columns ``sent0,sent1,hard_neg`` (SimCSE's format), plain or
compressed (``.gz``, ``.xz``); extra columns (such as the multi-genre file's ``source``) are ignored.
Without ``hard_neg`` (pairs only) training uses in-batch negatives only. A user's own file in other
spellings and formats is checked and converted by :mod:`embedlab.userdata`.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import lzma
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable

from .files import DataError, decompress, read_data, write_bytes
from .sts import DATA_DIR, EXTRA_TASKS, TASKS, load_task

COLUMNS = ("sent0", "sent1", "hard_neg")
# the built-in triplets, relative to the repository: train.py's default --data, build-data's --out, the Train tab's
# built-in data; its sidecar (.json) holds the row count
BUILT_IN = "assets/data/NLI/snli_all_triplets.csv"
MAX_CHARS = 2000  # one sentence; NLI sentences are short, longer rows are almost certainly broken input

@dataclass
class Triplets:
    anchor: list[str]
    positive: list[str]
    negative: list[str]  # [] for a file without hard_neg: in-batch negatives only
    sha256: str  # of the file's bytes
    path: str

    def __len__(self) -> int:
        return len(self.anchor)

    @property
    def has_negatives(self) -> bool:
        return bool(self.negative)


def read_triplets(path: str | Path, max_rows: int | None = None) -> Triplets:
    """Read and validate a ``sent0,sent1[,hard_neg]`` CSV (UTF-8; extra columns ignored)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"training file {path} does not exist")
    raw = p.read_bytes()
    try:
        text = decompress(raw, str(path)).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte {e.start})") from None
    if "\x00" in text:
        raise DataError(f"{path} contains NUL bytes: a binary file, not a CSV text")
    reader = csv.DictReader(text.splitlines())
    try:
        header = reader.fieldnames or []
    except csv.Error as e:  # e.g. a 'header' longer than the csv module's field limit
        raise DataError(f"{path}: malformed CSV header ({e})") from None
    missing = [c for c in COLUMNS[:2] if c not in header]
    if missing:
        found = ",".join(str(h) for h in header)
        found = repr(found[:80] + ("…" if len(found) > 80 else ""))  # a 'header' can be a whole garbage line
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; need {','.join(COLUMNS[:2])}[,{COLUMNS[2]}] "
                        f"(found {found})")
    cols = COLUMNS if COLUMNS[2] in header else COLUMNS[:2]  # no hard_neg: in-batch negatives only
    a, pos, neg = [], [], []
    try:
        for i, row in enumerate(reader, start=2):
            vals = [(row.get(c) or "").strip() for c in cols]
            if not all(vals):
                raise DataError(f"{path} line {i}: empty {cols[[bool(v) for v in vals].index(False)]}")
            if max(map(len, vals)) > MAX_CHARS:
                raise DataError(f"{path} line {i}: a sentence longer than {MAX_CHARS} characters")
            a.append(vals[0]); pos.append(vals[1]); neg.extend(vals[2:])  # noqa: E702
            if max_rows and len(a) >= max_rows:
                break
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    if len(a) < 2:
        raise DataError(f"{path} has {len(a)} triplet(s); contrastive training needs at least 2")
    return Triplets(a, pos, neg, hashlib.sha256(raw).hexdigest(), str(p))


def normalise(s: str) -> str:
    """Compare sentences across tokenised (SNLI) and raw (STS) text: letters and digits only."""
    return re.sub(r"[^a-z0-9]+", "", s.lower())


@functools.lru_cache(maxsize=1)
def evaluation_sentences() -> frozenset[str]:
    """Normalised sentences of every evaluation set (all splits), for leakage filtering (read once: ~1 s)."""
    out: set[str] = set()
    for name in TASKS + EXTRA_TASKS:
        t = load_task(name)  # SICK-R in MTEB's form already holds every SICK split
        out.update(map(normalise, t.s1 + t.s2))
    return frozenset(out)


def holds_evaluation_sentence(texts: Iterable[str], banned: Collection[str] | None = None) -> bool:
    """Whether any of ``texts`` is, once normalised, a sentence of an evaluation set: the contamination filter of
    the shipped training sets and the check of a user's file. ``banned``: normalised sentences (default: all of
    :func:`evaluation_sentences`). A text with no letter or digit (nothing left once normalised) matches nothing."""
    banned = evaluation_sentences() if banned is None else banned
    return any(k and k in banned for k in map(normalise, texts))


def build_snli_triplets(folder: Path | None = None) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """Every (premise, entailment, contradiction) combination in SNLI dev+test (SentEval format),
    minus triplets with any sentence that occurs in an evaluation set.

    Returns the triplets (sorted by premise order of appearance) and counts.
    """
    folder = folder or DATA_DIR / "NLI" / "snli_senteval"
    # Stored gzipped (2.5 MB -> 0.44 MB of the tree); SOURCES.md's sha256 are of the uncompressed files.
    lines = lambda name: read_data(folder / name).decode("utf-8").splitlines()  # noqa: E731
    groups: dict[str, dict[str, list[str]]] = {}
    for split in ("dev", "test"):
        s1, s2, lab = lines(f"s1.{split}"), lines(f"s2.{split}"), lines(f"labels.{split}")
        for p, h, l in zip(s1, s2, lab):
            g = groups.setdefault(p.strip(), {"entailment": [], "contradiction": []})
            if l.strip() in g and h.strip() not in g[l.strip()]:
                g[l.strip()].append(h.strip())
    banned = evaluation_sentences()
    out, dropped = [], 0
    for p, g in groups.items():
        for e, c in itertools.product(g["entailment"], g["contradiction"]):
            if holds_evaluation_sentence((p, e, c), banned):
                dropped += 1
                continue
            out.append((p, e, c))
    return out, {"premises": len(groups), "triplets": len(out), "dropped_overlap": dropped}


def write_triplets(rows: list[tuple[str, str, str]], path: Path) -> str:
    """Write the CSV and return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the multi-genre set: SNLI dev+test, MultiNLI 1.0 dev, counterfactually-augmented SNLI train -------------

NLI_DIR = DATA_DIR / "NLI"
MULTIGENRE_COLUMNS = (*COLUMNS, "source")
# source name -> file under assets/data/NLI (xz-compressed; SOURCES.md has the uncompressed sha256)
MNLI_FILES = {"mnli_dev_matched": "mnli_dev/multinli_1.0_dev_matched.csv.xz",
              "mnli_dev_mismatched": "mnli_dev/multinli_1.0_dev_mismatched.csv.xz"}
CAD_FILE = "cad_snli/all_combined_train.tsv.xz"
SNLI_SOURCE = "snli_devtest"
CAD_SOURCE = "cad_snli_train"


def _text(path: Path) -> str:
    return read_data(path).decode("utf-8")


Group = dict  # {"premise": str, "entailment": [str], "contradiction": [str]}


def _add(groups: dict[str, Group], key: str, premise: str, hypothesis: str, label: str) -> None:
    g = groups.setdefault(key, {"premise": premise, "entailment": [], "contradiction": []})
    if label in ("entailment", "contradiction") and hypothesis not in g[label]:
        g[label].append(hypothesis)


def mnli_groups(text: str) -> dict[str, Group]:
    """MultiNLI rows (``pairID,sentence1,sentence2,label``) grouped by premise: a premise's pairs share
    ``pairID`` minus its last letter (e/n/c, the prompt the annotator answered; the class is ``label``,
    which differs from that letter for ~2% of pairs). Groups in order of first appearance."""
    groups: dict[str, Group] = {}
    for row in csv.DictReader(io.StringIO(text)):
        pid = (row.get("pairID") or "").strip()
        if len(pid) < 2 or pid[-1] not in "enc":
            raise DataError(f"MultiNLI pairID {pid!r} does not end in e, n or c")
        _add(groups, pid[:-1], row["sentence1"].strip(), row["sentence2"].strip(), row["label"].strip())
    return groups


def cad_groups(text: str) -> dict[str, Group]:
    """Counterfactually-augmented SNLI rows (``sentence1\tsentence2\tgold_label``) grouped by premise text
    (an edited premise is a premise of its own)."""
    groups: dict[str, Group] = {}
    for row in csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        p = row["sentence1"].strip()
        _add(groups, p, p, row["sentence2"].strip(), row["gold_label"].strip())
    return groups


def group_triplets(groups: dict[str, Group]) -> list[tuple[str, str, str]]:
    """Every (premise, entailment, contradiction) combination of each group, groups in order."""
    return [(g["premise"], e, c) for g in groups.values() for e, c in itertools.product(g["entailment"], g["contradiction"])]


def select_triplets(sources: dict[str, list[tuple[str, str, str]]], banned: Collection[str]) -> tuple[list[tuple[str, str, str, str]], dict[str, dict[str, int]]]:
    """Sources in order -> rows ``(sent0, sent1, hard_neg, source)`` and per-source counts.

    Drops, in this order: triplets holding a sentence of an evaluation set (``banned``: normalised
    sentences), degenerate ones (positive and hard negative the same once normalised), and duplicates of
    a triplet already kept (same three sentences once normalised; the first source keeps it)."""
    seen: set[tuple[str, str, str]] = set()
    rows: list[tuple[str, str, str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    for name, triplets in sources.items():
        c = counts[name] = {"candidates": len(triplets), "dropped_overlap": 0, "dropped_degenerate": 0,
                            "dropped_duplicate": 0, "kept": 0}
        for t in triplets:
            key = tuple(normalise(x) for x in t)
            if holds_evaluation_sentence(t, banned):
                c["dropped_overlap"] += 1
            elif not all(key) or key[1] == key[2]:
                c["dropped_degenerate"] += 1
            elif key in seen:
                c["dropped_duplicate"] += 1
            else:
                seen.add(key)
                rows.append((*t, name))
                c["kept"] += 1
    return rows, counts


def build_multigenre_triplets(folder: Path | None = None, banned: Collection[str] | None = None
                              ) -> tuple[list[tuple[str, str, str, str]], dict[str, dict[str, int]]]:
    """One multi-genre set: our SNLI triplets (:func:`build_snli_triplets`, already filtered), then MultiNLI 1.0
    dev matched and mismatched, then counterfactually-augmented SNLI train; every source filtered for evaluation
    overlap and the whole deduplicated (:func:`select_triplets`). Returns rows with their source and per-source
    counts (``premises`` added: groups read from the source)."""
    folder = folder or NLI_DIR
    banned = evaluation_sentences() if banned is None else banned
    snli, snli_counts = build_snli_triplets(folder / "snli_senteval")
    groups = {name: mnli_groups(_text(folder / rel)) for name, rel in MNLI_FILES.items()}
    groups[CAD_SOURCE] = cad_groups(_text(folder / CAD_FILE))
    sources = {SNLI_SOURCE: snli, **{name: group_triplets(g) for name, g in groups.items()}}
    rows, counts = select_triplets(sources, banned)
    # SNLI's own evaluation-overlap drops happened in build_snli_triplets: count them here too
    counts[SNLI_SOURCE]["candidates"] += snli_counts["dropped_overlap"]
    counts[SNLI_SOURCE]["dropped_overlap"] += snli_counts["dropped_overlap"]
    counts[SNLI_SOURCE]["premises"] = snli_counts["premises"]
    for name, g in groups.items():
        counts[name]["premises"] = len(g)
    return rows, counts


def write_multigenre(rows: list[tuple[str, str, str, str]], path: Path) -> str:
    """Write ``sent0,sent1,hard_neg,source`` rows as CSV, xz-compressed when ``path`` ends in ``.xz``
    (deterministic: fixed preset, no timestamp); returns the sha256 of the uncompressed CSV."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(MULTIGENRE_COLUMNS)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    write_bytes(path, lzma.compress(data, preset=9 | lzma.PRESET_EXTREME) if path.suffix == ".xz" else data)
    return hashlib.sha256(data).hexdigest()
