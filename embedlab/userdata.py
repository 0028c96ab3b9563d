"""A user's own training file (CSV, TSV or JSONL with anchor/positive[/negative] columns), checked for live training.

    data = load_triplets_file(Path("upload.csv"))       # or parse_triplets(raw_bytes, "upload.csv")
    data.rows, data.has_negatives, data.warnings         # what the Train tab shows
    data.write_csv(run_dir / "data.csv")                 # sent0,sent1[,hard_neg]: what train.py reads

Every problem is a :class:`DataFileError` with a short message for the user: no server path, and what the file held
quoted back cut to ~80 characters. Texts are cleaned (control characters dropped, runs of whitespace made one space),
cut to :data:`MAX_TEXT_CHARS`; rows with an empty text are skipped and duplicate rows dropped, each counted in the
warnings. Without a negative column training uses in-batch negatives only.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .corpora import MAX_UPLOAD_BYTES, InputError, clean_text, decode_upload, read_upload
from .messages import kind, short
from .nli import COLUMNS, DataError, holds_evaluation_sentence
from .sts import DATA_DIR

EXAMPLE_FILE = DATA_DIR / "examples" / "paraphrases.csv"  # 40 original rows (anchor, positive, negative): a sample to offer
MIN_ROWS = 16  # usable rows after dropping duplicates: fewer cannot fill a contrastive batch worth training on
MAX_ROWS = 20_000  # rows in the file (before dropping any)
MAX_BYTES = MAX_UPLOAD_BYTES  # 2 MiB, as every upload of the app
# Longer texts are cut, not refused: training reads only the first --max-length tokens (96 by default, ~400
# characters of English) of each text anyway, so a long one is still a usable row.
MAX_TEXT_CHARS = 1000
ROLES = ("anchor", "positive", "negative")  # in the order of COLUMNS (sent0, sent1, hard_neg)
# Column names (CSV/TSV header, JSONL keys) of each role, the first the one we suggest. Matched case-insensitively,
# ignoring spaces, "_" and "-" ("Hard Neg" = hard_neg). sentence-transformers' names, SimCSE's, then synonyms.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "anchor": ("anchor", "sent0", "query", "question", "premise", "sentence1", "text1"),
    "positive": ("positive", "sent1", "pos", "document", "passage", "answer", "paraphrase", "entailment", "sentence2",
                 "text2"),
    "negative": ("negative", "hard_neg", "neg", "hard_negative", "sent2", "contradiction"),
}
# extension -> format; None: decided by the content (see parse_triplets)
EXTENSIONS: dict[str, str | None] = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
                                     ".ndjson": "jsonl", ".json": "jsonl", ".txt": None, "": None}
DELIMITERS = {"csv": ",", "tsv": "\t"}
OTHER_DELIMITERS = (",", "\t", ";")  # also tried on the header: the one finding most columns wins (a TSV named .csv, Excel's ';')
FIELD_LIMIT = csv.field_size_limit()  # csv's own (131,072 characters); not raised: it is process-wide


class DataFileError(DataError):
    """A training file the app cannot use; the message is shown to the user as is."""


@dataclass
class UserData:
    """A checked training file: the usable rows (cleaned, cut, deduplicated) and what was done to get them."""

    rows: int  # usable rows kept
    has_negatives: bool  # False: training uses in-batch negatives only
    dropped_duplicates: int  # rows equal to an earlier row (texts compared case-insensitively)
    eval_overlap: int  # kept rows holding a sentence of an evaluation set (STS*, SICK-R, BIOSSES)
    warnings: list[str]  # one line each, for the user
    anchor: list[str]
    positive: list[str]
    negative: list[str]  # [] when has_negatives is False
    sha256: str  # of the normalised rows as write_csv writes them (= training.json's data sha256)
    csv_path: Path | None = None  # set by write_csv
    format: str = "csv"  # csv, tsv or jsonl: how the file was read
    columns: dict[str, str] = field(default_factory=dict)  # role -> the column name the file used
    dropped_unusable: int = 0  # rows with an empty text (or positive = negative)
    cut_texts: int = 0  # texts cut to MAX_TEXT_CHARS

    def summary(self) -> str:
        """One line for the user, e.g. "40 rows (anchor, positive, negative) read as CSV"."""
        cols = "anchor, positive, negative" if self.has_negatives else "anchor, positive: in-batch negatives only"
        return f"{self.rows:,} rows ({cols}) read as {self.format.upper()}"

    def csv_bytes(self) -> bytes:
        """The rows as a ``sent0,sent1[,hard_neg]`` CSV (UTF-8, "\\n" line ends): what training reads."""
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        cols = [self.anchor, self.positive] + ([self.negative] if self.has_negatives else [])
        w.writerow(COLUMNS[: len(cols)])
        w.writerows(zip(*cols))
        return buf.getvalue().encode("utf-8")

    def write_csv(self, dst: Path) -> Path:
        """Write :meth:`csv_bytes` to ``dst`` whole or not at all; sets and returns :attr:`csv_path`."""
        files.write_bytes(dst, self.csv_bytes())
        self.csv_path = Path(dst)
        return self.csv_path


def load_triplets_file(path: Path, max_bytes: int = MAX_BYTES) -> UserData:
    """Read and check a training file (refused before reading when over ``max_bytes``); see :func:`parse_triplets`."""
    try:
        data = read_upload(path, max_bytes)
    except InputError as e:
        raise DataFileError(str(e)) from None
    return parse_triplets(data, Path(path).name, max_bytes=max_bytes)


def parse_triplets(data: bytes, filename: str, *, max_bytes: int = MAX_BYTES) -> UserData:
    """The bytes of a CSV, TSV or JSONL training file -> :class:`UserData`; :class:`DataFileError` saying what is wrong.

    ``filename`` (only its extension is used) picks the format: .csv, .tsv/.tab, .jsonl/.ndjson/.json; a .txt or a name
    without extension is sniffed, as is a table's delimiter (comma, tab or semicolon: whichever finds the most columns of
    the header), and a first line starting with "{" is JSON Lines whatever the name. Other extensions are refused.
    """
    fmt = _format_of_name(filename)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataFileError("the file is UTF-16 text; save it as UTF-8 (in Excel: CSV UTF-8)")
    try:
        text = decode_upload(data, "file", max_bytes)
    except InputError as e:
        raise DataFileError(str(e)) from None
    first = next((ln.strip() for ln in text.split("\n") if ln.strip()), "")
    if first.startswith("[") and fmt in ("jsonl", None):
        raise DataFileError("the file is one JSON array; write one JSON object per line (JSON Lines, .jsonl), "
                            'e.g. {"anchor": "...", "positive": "..."}')
    if fmt == "jsonl" or first.startswith("{"):  # a header never starts with "{": JSON Lines, whatever the name
        return _check(*_jsonl_records(text))
    return _check(*_table_records(text, fmt))


# --- reading ---------------------------------------------------------------------------------------------

Record = tuple[int, dict[str, str]]  # (line number, role -> raw text)
# what a reader found: (format, {role: column name}, records, warnings)
Read = tuple[str, dict[str, str], list[Record], list[str]]


def _format_of_name(filename: str) -> str | None:
    name = Path(filename or "").name
    ext = Path(name).suffix.lower()
    if ext not in EXTENSIONS:
        raise DataFileError(f"{short(name)}: upload CSV, TSV or JSON Lines (.csv, .tsv, .jsonl), not {short(ext)}")
    return EXTENSIONS[ext]


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.casefold())


ROLE_OF = {_key(s): role for role, names in SPELLINGS.items() for s in names}  # normalised name -> role


def _roles(names: list[str], where: str) -> dict[str, int]:
    """Column names -> {role: position}; DataFileError when two columns name one role."""
    out: dict[str, int] = {}
    for i, n in enumerate(names):
        role = ROLE_OF.get(_key(n))
        if role is None:
            continue
        if role in out:
            raise DataFileError(f"{where}: columns {short(names[out[role]])} and {short(n)} both name the {role}; keep one")
        out[role] = i
    return out


def _missing(roles: dict, found: list[str]) -> DataFileError:
    need = [r for r in ROLES[:2] if r not in roles]
    shown = short(", ".join(found)) if found else "none"
    alt = "; ".join(f"{r} = {'/'.join(SPELLINGS[r][1:])}" for r in ROLES)
    return DataFileError(f"no {' or '.join(need)} column (found: {shown}). Name them anchor, positive[, negative] "
                         f"(any case) or: {alt}")


def _ignored(names: list[str], roles: dict[str, int]) -> list[str]:
    extra = [n for i, n in enumerate(names) if i not in roles.values() and n.strip()]
    return [f"ignored column(s): {short(', '.join(extra))}"] if extra else []


def _csv_error(e: csv.Error, line: int) -> DataFileError:
    if "field larger than field limit" in str(e):
        return DataFileError(f"line {line}: a field longer than {FIELD_LIMIT:,} characters: a broken file (an "
                             f"unclosed quote?); texts are at most {MAX_TEXT_CHARS:,} characters")
    return DataFileError(f"line {line}: malformed CSV ({str(e)[:80]})")


def _rows(text: str, delimiter: str):
    """Non-blank records of ``text`` as (line number, fields); csv.Error as DataFileError naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                yield reader.line_num, fields
    except csv.Error as e:
        raise _csv_error(e, reader.line_num) from None


def _table_records(text: str, fmt: str | None) -> Read:
    """CSV or TSV: the delimiter is the format's (comma for an unknown one) unless another finds more columns
    of the header (a TSV named .csv, Excel's ';')."""
    preferred = DELIMITERS.get(fmt or "", "\t" if "\t" in text.split("\n", 1)[0] else ",")
    best = None
    for d in dict.fromkeys((preferred, *OTHER_DELIMITERS)):
        _, header = next(_rows(text, d), (0, []))
        roles = _roles(header, "the header")
        if best is None or len(roles) > len(best[2]):
            best = (d, header, roles)
    d, header, roles = best
    if "anchor" not in roles or "positive" not in roles:
        raise _missing(roles, header)
    fmt = "tsv" if d == "\t" else "csv"
    records: list[Record] = []
    rows = _rows(text, d)
    next(rows)  # the header
    for line, fields in rows:
        if len(records) >= MAX_ROWS:
            raise DataFileError(f"the file has more than {MAX_ROWS:,} rows; the limit is {MAX_ROWS:,}")
        records.append((line, {r: fields[i] if i < len(fields) else "" for r, i in roles.items()}))
    return fmt, {r: header[i].strip() for r, i in roles.items()}, records, _ignored(header, roles)


def _jsonl_records(text: str) -> Read:
    """JSON Lines: one object per line; keys as the CSV header's names; a value is a string (null = empty)."""
    records: list[Record] = []
    columns: dict[str, str] = {}
    ignored: dict[str, None] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(records) >= MAX_ROWS:
            raise DataFileError(f"the file has more than {MAX_ROWS:,} rows; the limit is {MAX_ROWS:,}")
        try:
            obj = json.loads(line)
        except RecursionError:
            raise DataFileError(f"line {n} is not valid JSON (nested too deeply)") from None
        except ValueError as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "bad number"
            raise DataFileError(f"line {n} is not valid JSON ({why}): {short(line.strip())}") from None
        if not isinstance(obj, dict):
            what = "a string" if isinstance(obj, str) else kind(obj)
            raise DataFileError(f'line {n} is {what}, not a JSON object like {{"anchor": "...", "positive": "..."}}')
        names = list(obj)
        roles = _roles(names, f"line {n}")
        row = {}
        for role, i in roles.items():
            value = obj[names[i]]
            if value is not None and not isinstance(value, str):
                raise DataFileError(f"line {n}: {short(names[i])} is {kind(value)}; texts must be strings")
            row[role] = value or ""
            columns.setdefault(role, names[i].strip())
        ignored.update((k, None) for i, k in enumerate(names) if i not in roles.values())
        records.append((n, row))
    if "anchor" not in columns or "positive" not in columns:
        first = next((list(json.loads(ln)) for ln in text.split("\n") if ln.strip()), [])
        raise _missing(columns, [str(k) for k in first])
    return "jsonl", columns, records, _ignored(list(ignored), {})


# --- checking ------------------------------------------------------------------------------------------

def _clean(text: str, line: int, role: str) -> str:
    """Control characters dropped and every run of whitespace (newlines too) one space: a text is one line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can escape a lone surrogate ("\ud800"); no tokenizer takes one
        raise DataFileError(f"line {line}: the {role} holds an invalid character (a lone surrogate such as "
                            "\\ud800); save the file as valid UTF-8") from None
    return " ".join(clean_text(text, keep=string.whitespace).split())


def _lines(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:5])) + (", …" if len(lines) > 5 else "")


def _check(fmt: str, columns: dict[str, str], records: list[Record], warnings: list[str]) -> UserData:
    """Clean, cut, skip unusable rows, drop duplicates, count evaluation overlap; refuse too few rows."""
    if not records:
        raise DataFileError(f"the file has a header but no rows; training needs at least {MIN_ROWS}")
    used = ROLES if "negative" in columns else ROLES[:2]
    cut, unusable, same, overlap = 0, [], [], []
    seen: set[tuple[str, ...]] = set()
    kept: list[tuple[str, ...]] = []
    texts_of: list[tuple[int, tuple[str, ...]]] = []
    for line, row in records:
        texts = []
        for role in used:
            t = _clean(row.get(role, ""), line, role)
            if len(t) > MAX_TEXT_CHARS:
                t, cut = t[:MAX_TEXT_CHARS].rstrip(), cut + 1
            texts.append(t)
        texts_of.append((line, tuple(texts)))
    has_negatives = "negative" in columns and any(t[2] for _, t in texts_of)
    if "negative" in columns and not has_negatives:
        warnings.append(f"the {columns['negative']} column is empty: training uses in-batch negatives only")
        texts_of = [(line, t[:2]) for line, t in texts_of]
    dropped_duplicates = 0
    for line, texts in texts_of:
        if not all(texts):
            unusable.append(line)
            continue
        if has_negatives and texts[1].casefold() == texts[2].casefold():
            same.append(line)
            continue
        key = tuple(t.casefold() for t in texts)
        if key in seen:
            dropped_duplicates += 1
            continue
        seen.add(key)
        kept.append(texts)
        if holds_evaluation_sentence(texts):
            overlap.append(line)
    if unusable:
        warnings.append(f"{len(unusable):,} row(s) skipped for an empty text (line {_lines(unusable)})")
    if same:
        warnings.append(f"{len(same):,} row(s) skipped: positive and negative are the same text (line {_lines(same)})")
    if dropped_duplicates:
        warnings.append(f"{dropped_duplicates:,} duplicate row(s) dropped")
    if cut:
        warnings.append(f"{cut:,} text(s) longer than {MAX_TEXT_CHARS:,} characters cut to their first {MAX_TEXT_CHARS:,}")
    if len(kept) < MIN_ROWS:
        dropped = len(records) - len(kept)
        raise DataFileError(f"{len(kept)} usable row(s)" + (f" ({dropped} empty or duplicate)" if dropped else "")
                            + f"; training needs at least {MIN_ROWS}")
    if overlap:
        warnings.append(f"{len(overlap):,} row(s) hold a sentence of the evaluation sets (line {_lines(overlap)}): "
                        "the dev curve and test scores would overstate what training taught; remove them for an "
                        "honest measure")
    cols = list(zip(*kept))
    out = UserData(rows=len(kept), has_negatives=has_negatives, dropped_duplicates=dropped_duplicates,
                   eval_overlap=len(overlap), warnings=warnings, anchor=list(cols[0]), positive=list(cols[1]),
                   negative=list(cols[2]) if has_negatives else [], sha256="", format=fmt,
                   columns={r: c for r, c in columns.items() if r in used[: 3 if has_negatives else 2]},
                   dropped_unusable=len(unusable) + len(same), cut_texts=cut)
    out.sha256 = hashlib.sha256(out.csv_bytes()).hexdigest()
    return out
