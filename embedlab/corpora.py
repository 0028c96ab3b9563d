"""Text collections for the map and search views: built-in corpora and validated user uploads."""
from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .cache import corpus_sha256
from .files import open_data
from .nli import BUILT_IN
from .sts import DATA_DIR

MAX_UPLOAD_BYTES = 2 * 2**20
MAX_TEXTS = 20_000  # an uploaded corpus (lines)
MAX_PAIRS = 2_000  # batch pair mode
MAX_CHARS = 2_000  # one text in an upload
# Characters of distinct sentences in one batch of pairs: what bounds its work (every distinct sentence is
# embedded by base and tuned). ~200K characters (~50K tokens) take ~40 s of background compute on 2 cores;
# the STSBenchmark test set (1,379 pairs) has ~140K.
MAX_PAIR_CHARS = 200_000
MIN_TEXTS = 4  # a corpus (a map needs neighbours)


class InputError(ValueError):
    """User input the app cannot use; the message is shown to the user as is."""


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    description: str
    uploaded: bool = False  # a user's upload: its cached vectors are evictable, its maps are kept in memory only

    @functools.cached_property
    def sha256(self) -> str:
        return corpus_sha256(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def sample_indices(self, n: int, seed: int = 0) -> list[int]:
        """Sorted positions of a seeded sample of at most n texts."""
        if n >= len(self):
            return list(range(len(self)))
        import numpy as np

        return sorted(np.random.default_rng(seed).choice(len(self), size=n, replace=False).tolist())

    def sample(self, n: int, seed: int = 0) -> "Corpus":
        """A seeded sample of at most n texts (label mix kept), e.g. to fit a map."""
        if n >= len(self):
            return self
        idx = self.sample_indices(n, seed)
        return Corpus(f"{self.name} ({n} of {len(self)})", tuple(self.texts[i] for i in idx),
                      tuple(self.labels[i] for i in idx), self.description, self.uploaded)


def _dedupe(texts: list[str], labels: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    seen: dict[str, str] = {}
    for t, l in zip(texts, labels):
        seen.setdefault(t, l)
    return tuple(seen), tuple(seen.values())


@functools.lru_cache(maxsize=None)
def builtin(name: str) -> Corpus:
    """Built-in corpora: topics (96 sentences, 8 topics), snli (premise/entailment/contradiction), stsb (10K)."""
    if name == "topics":
        rows = list(csv.DictReader(open(DATA_DIR / "topics_demo.csv", encoding="utf-8")))
        t, l = _dedupe([r["text"] for r in rows], [r["label"] for r in rows])
        return Corpus("topics", t, l, "96 sentences in 8 topics, written for this demo")
    if name == "snli":
        rows = list(csv.DictReader(open(DATA_DIR / "NLI" / Path(BUILT_IN).name, encoding="utf-8")))[:300]
        texts, labels = [], []
        for r in rows:
            texts += [r["sent0"], r["sent1"], r["hard_neg"]]
            labels += ["premise", "entailment", "contradiction"]
        t, l = _dedupe(texts, labels)
        return Corpus("snli", t, l, "300 SNLI premises with an entailment and a contradiction each (training data)")
    if name == "stsb":
        texts, labels = [], []
        for split in ("test", "dev", "train"):
            with open_data(DATA_DIR / "STSBenchmark" / f"sts-{split}.csv") as f:
                for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    texts += [r[5], r[6]]
                    labels += [r[0].replace("main-", "")] * 2
        t, l = _dedupe(texts, labels)
        return Corpus("stsb", t[:10_000], l[:10_000], "10,000 STSBenchmark sentences (captions, news, forums)")
    raise InputError(f"unknown corpus {name!r}; built-in: {', '.join(BUILTINS)}")


BUILTINS = {"topics": "Topics demo (96)", "snli": "SNLI triplets (900)", "stsb": "STSBenchmark (10K)"}


def read_upload(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """A file's bytes, refusing a missing file, a folder, or one over ``max_bytes`` before reading it
    (a 2 GB upload never enters memory)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise InputError(f"{p.name} is not a file")
        if size > max_bytes:
            raise InputError(f"{p.name} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:g} MiB")
        return p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {p.name} ({e.strerror})") from None


def decode_upload(data: bytes | str, what: str = "file", max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """Bytes -> text; refuses empty, oversized, non-UTF-8 and binary input with a clear message."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not data or not data.strip():
        raise InputError(f"the {what} is empty")
    if len(data) > max_bytes:
        raise InputError(f"the {what} is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:g} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"the {what} is not UTF-8 text (bad byte at position {e.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise InputError(f"the {what} looks binary (contains NUL bytes); upload plain text or CSV")
    return text


def clean_text(s: str, keep: str = "\t") -> str:
    """Drop control characters (except those in ``keep``) and strip: they break tokenisers' whitespace
    handling and the table display."""
    return "".join(ch for ch in s if ch >= " " or ch in keep).strip()


def _csv_rows(reader) -> list:
    """All rows of a CSV reader; a malformed file (e.g. a field over csv's 131,072-character limit) is an InputError."""
    try:
        return list(reader)
    except csv.Error as e:
        raise InputError(f"malformed CSV: {e}") from None


def parse_corpus(data: bytes | str, filename: str = "upload.txt", max_texts: int = MAX_TEXTS,
                 max_bytes: int = MAX_UPLOAD_BYTES) -> Corpus:
    """A .txt (one text per line) or .csv (column 'text', optional 'label') upload -> Corpus.

    The default limits are the web app's; the command line (``python -m embedlab embed``) raises them.
    """
    text = decode_upload(data, max_bytes=max_bytes)
    if filename.lower().endswith(".csv"):
        rows = _csv_rows(csv.DictReader(io.StringIO(text)))
        if not rows or "text" not in rows[0]:
            raise InputError("a CSV corpus needs a header row with a 'text' column (and optionally 'label')")
        texts = [clean_text(r.get("text") or "") for r in rows]
        labels = [clean_text(r.get("label") or "") or "-" for r in rows]
    else:
        texts = [clean_text(line) for line in text.splitlines()]
        labels = ["-"] * len(texts)
    keep = [(t, l) for t, l in zip(texts, labels) if t]
    if len(keep) > max_texts:
        raise InputError(f"found {len(keep):,} texts; the limit is {max_texts:,}")
    long = next((i for i, (t, _) in enumerate(keep) if len(t) > MAX_CHARS), None)
    if long is not None:
        raise InputError(f"text {long + 1} has {len(keep[long][0]):,} characters; the limit is {MAX_CHARS:,}")
    t, l = _dedupe([k[0] for k in keep], [k[1] for k in keep])
    if len(t) < MIN_TEXTS:  # counted after removing duplicates: "x" four times is one text
        raise InputError(f"found {len(t)} distinct non-empty text(s); a corpus needs at least {MIN_TEXTS}")
    return Corpus(filename.rsplit("/", 1)[-1][:60], t, l, f"uploaded: {len(t)} distinct texts", uploaded=True)


def parse_pairs(data: bytes | str) -> tuple[list[str], list[str], list[float] | None]:
    """Pairs, one per line: ``s1<TAB>s2[<TAB>gold]`` (or CSV ``s1,s2[,gold]`` with that header)."""
    text = decode_upload(data, "pair list")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].replace(" ", "").lower().startswith(("s1,s2", "sentence1,sentence2")):
        rows = _csv_rows(csv.reader(io.StringIO("\n".join(lines[1:]))))
    else:
        rows = [ln.split("\t") for ln in lines]
    if not rows:
        raise InputError("no pairs found")
    if len(rows) > MAX_PAIRS:
        raise InputError(f"found {len(rows):,} pairs; the limit is {MAX_PAIRS:,}")
    s1, s2, gold = [], [], []
    for i, r in enumerate(rows, 1):
        if len(r) < 2 or not clean_text(r[0]) or not clean_text(r[1]):
            raise InputError(f"line {i}: expected two sentences separated by a tab (or CSV s1,s2[,gold])")
        a, b = clean_text(r[0]), clean_text(r[1])
        if max(len(a), len(b)) > MAX_CHARS:
            raise InputError(f"line {i}: a sentence longer than {MAX_CHARS:,} characters")
        s1.append(a); s2.append(b)  # noqa: E702
        if len(r) > 2 and r[2].strip():
            try:
                g = float(r[2])
            except ValueError:
                g = math.nan
            if not math.isfinite(g):  # "nan" and "inf" parse as floats but rank nothing
                raise InputError(f"line {i}: gold score {r[2][:20]!r} is not a number")
            gold.append(g)
    if gold and len(gold) != len(s1):
        raise InputError("give a gold score on every line or on none")
    chars = sum(map(len, dict.fromkeys(s1 + s2)))
    if chars > MAX_PAIR_CHARS:
        raise InputError(f"these pairs hold {chars:,} characters of distinct sentences; the limit is "
                         f"{MAX_PAIR_CHARS:,} per request: split the list")
    return s1, s2, (gold or None)
