"""NLI training triplets (anchor, positive, hard negative): read, validate, build from SNLI.

Training data is any CSV with columns ``sent0,sent1,hard_neg`` (SimCSE's format).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from .sts import DATA_DIR, EXTRA_TASKS, TASKS, load_task

COLUMNS = ("sent0", "sent1", "hard_neg")
MAX_CHARS = 2000  # one sentence; NLI sentences are short, longer rows are almost certainly broken input


class DataError(ValueError):
    """A training file that cannot be used, with the row or column at fault."""


@dataclass
class Triplets:
    anchor: list[str]
    positive: list[str]
    negative: list[str]
    sha256: str  # of the file's bytes
    path: str

    def __len__(self) -> int:
        return len(self.anchor)


def read_triplets(path: str | Path, max_rows: int | None = None) -> Triplets:
    """Read and validate a ``sent0,sent1,hard_neg`` CSV (UTF-8; extra columns ignored)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"training file {path} does not exist")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte {e.start})") from None
    if "\x00" in text:
        raise DataError(f"{path} contains NUL bytes: a binary file, not a CSV text")
    reader = csv.DictReader(text.splitlines())
    try:
        header = reader.fieldnames or []
    except csv.Error as e:  # e.g. a 'header' longer than the csv module's field limit
        raise DataError(f"{path}: malformed CSV header ({e})") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        found = ",".join(str(h) for h in header)
        found = repr(found[:80] + ("…" if len(found) > 80 else ""))  # a 'header' can be a whole garbage line
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; need {','.join(COLUMNS)} (found {found})")
    a, pos, neg = [], [], []
    try:
        for i, row in enumerate(reader, start=2):
            vals = [(row.get(c) or "").strip() for c in COLUMNS]
            if not all(vals):
                raise DataError(f"{path} line {i}: empty {COLUMNS[[bool(v) for v in vals].index(False)]}")
            if max(map(len, vals)) > MAX_CHARS:
                raise DataError(f"{path} line {i}: a sentence longer than {MAX_CHARS} characters")
            a.append(vals[0]); pos.append(vals[1]); neg.append(vals[2])  # noqa: E702
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


def evaluation_sentences() -> set[str]:
    """Normalised sentences of every evaluation set (all splits), for leakage filtering."""
    out: set[str] = set()
    for name in TASKS + EXTRA_TASKS:
        t = load_task(name)  # SICK-R in MTEB's form already holds every SICK split
        out.update(map(normalise, t.s1 + t.s2))
    return out


def build_snli_triplets(folder: Path | None = None) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """Every (premise, entailment, contradiction) combination in SNLI dev+test (SentEval format),
    minus triplets with any sentence that occurs in an evaluation set.

    Returns the triplets (sorted by premise order of appearance) and counts.
    """
    folder = folder or DATA_DIR / "NLI" / "snli_senteval"
    # Stored gzipped (2.5 MB -> 0.44 MB of the tree); SOURCES.md's sha256 are of the uncompressed files.
    lines = lambda name: gzip.decompress((folder / f"{name}.gz").read_bytes()).decode("utf-8").splitlines()  # noqa: E731
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
            if {normalise(p), normalise(e), normalise(c)} & banned:
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
