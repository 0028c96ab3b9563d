"""Handlers of the web app: plain functions (UI values in, UI values out) over a :class:`~embedlab.lab.Lab`.

Every handler validates its input and raises :class:`UserError` with a message
for the user; app.py turns that into a Gradio error (no stack trace).
"""
from __future__ import annotations

import csv
import functools
import html
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import plots
from .adapters import ADAPTERS_DIR, AdapterError, read_training_record, snapshots
from .cache import CacheBusy, corpus_sha256
from .compute import Cancelled
from .corpora import BUILTINS, Corpus, InputError, builtin, clean_text, parse_corpus, parse_pairs, read_upload
from .encode import TextError
from .lab import MAP_MAX, Lab, ModelsBusy
from .loading import ModelUnavailableError
from .nli import DataError
from .provenance import environment
from .registry import MODELS, UnknownModelError, available_models
from .side import ROOT, Side, SideError, parse_side, side_choices, training_record
from .report import load_results, results_frame
from .sts import TASKS, load_task

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 1000
MAX_QUERIES = 10
MAX_K = 50
QUICK_PAIRS = 200  # per task in a quick evaluation
USER_ERRORS = (InputError, TextError, AdapterError, ModelUnavailableError, UnknownModelError, DataError, CacheBusy,
               SideError, ModelsBusy)
# Downloads (CSV + JSON per result) are written here; Gradio copies each into its own cache (cleaned by the
# app's delete_cache), so a folder older than DOWNLOAD_TTL_S is no longer needed and is removed.
DOWNLOADS = Path(tempfile.gettempdir()) / "embedlab-downloads"
DOWNLOAD_TTL_S = 900  # seconds; app.py sets it to its delete_cache age


def full_eval_allowed() -> bool:
    """Full-set evaluation (hours on a CPU) only where the host opts in with EMBEDLAB_FULL_EVAL=1."""
    return os.environ.get("EMBEDLAB_FULL_EVAL", "") == "1"


class UserError(Exception):
    """Shown to the user as is."""


_ROOT_PREFIX = re.compile(re.escape(str(ROOT)) + r"/?")
# An absolute path: "/" after a start, space, quote or bracket, then at least one more "/"-separated part.
_ABS_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s/'"`()\[\]<>,;]+/)+([^\s/'"`()\[\]<>,;]*)""")


def scrub(msg: str) -> str:
    """A message without server paths: the repository root becomes relative, any other absolute path its
    last component ("/tmp/gradio/ab12/x.csv" -> "x.csv"). Every handler's message passes through here."""
    msg = _ROOT_PREFIX.sub("", msg)
    return _ABS_PATH.sub(lambda m: m.group(1) or "(folder)", msg)


def user_facing(fn: Callable) -> Callable:
    """Turn expected errors into UserError and unexpected ones into a short message (logged in full).

    Every message leaves through :func:`scrub`: no server path reaches the user.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise UserError(scrub(str(e))) from None
        except USER_ERRORS as e:
            raise UserError(scrub(str(e))) from None
        except Cancelled as e:  # the client left: nobody reads this, but say what happened
            log.info("handler %s stopped: its client has gone", fn.__name__)
            raise UserError(str(e)) from None
        except Exception as e:  # never a stack trace in the browser; the server log has it
            log.exception("handler %s failed", fn.__name__)
            raise UserError(f"Sorry, that failed on the server ({type(e).__name__}). The app is still running; "
                            "try again or pick other inputs.") from None

    return wrapper


def md(text: Any) -> str:
    """Data (token names like "<eos>", adapter names, record fields, user texts) made safe to show in
    Markdown mid-line: HTML-escaped, inline Markdown punctuation (emphasis, code, links, table cells) escaped."""
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", html.escape(str(text), quote=False))


def _kind(value: Any) -> str:
    return "nothing" if value is None else {bool: "true/false", int: "a number", float: "a number", list: "a list",
                                             dict: "an object"}.get(type(value), type(value).__name__)


def _text(value: Any, what: str, max_chars: int = MAX_QUERY_CHARS) -> str:
    if not isinstance(value, str):
        raise UserError(f"{what} must be text")
    value = clean_text(value, keep="\t\n")
    if not value:
        raise UserError(f"{what} is empty")
    if len(value) > max_chars:
        raise UserError(f"{what} has {len(value):,} characters; the limit is {max_chars:,}")
    return value


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "…"


def _side(value: Any, what: str) -> Side:
    """A side spec (``model[+adapter][@step]``) parsed and validated; the message names the parameter."""
    return parse_side(value, what)


def _sides(a: Any, b: Any) -> tuple[Side, Side]:
    return _side(a, "side A"), _side(b, "side B")


def _names(a: Side, b: Side) -> tuple[str, str]:
    """Column and legend names of the two sides: 'A: <spec>', 'B: <spec>' (distinct even when the specs are equal)."""
    return f"A: {a.label}", f"B: {b.label}"


def _whole(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi]: an int, an integral finite float (a slider's 10.0) or its text ("10")."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserError(f"{what} must be a whole number from {lo} to {hi}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise UserError(f"{what} must be a whole number from {lo} to {hi}")
    if not lo <= value <= hi:
        raise UserError(f"{what} is {int(value):,}; it must be from {lo} to {hi}")
    return int(value)


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _flag(value: Any, what: str) -> bool:
    """true/false: a boolean, or one of the obvious words ("false" and "no" are false); anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(f"{what} must be true or false, not {_kind(value)}")


def _optional_text(value: Any, what: str) -> str:
    """Text that may be left empty ('' for None)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{what} must be text, not {_kind(value)}")
    return value


def _corpus(name: Any, upload: Any) -> Corpus:
    if not isinstance(name, str):
        raise UserError(f"corpus must be a corpus name (text), not {_kind(name)}; one of: {', '.join(BUILTINS)}, upload")
    if name == "upload":
        if not isinstance(upload, Corpus):
            raise UserError("upload a .txt or .csv corpus first (or pick a built-in one)")
        return upload
    if name not in BUILTINS:
        raise UserError(f"unknown corpus {_short(name)}; one of: {', '.join(BUILTINS)}, upload")
    return builtin(name)


def _upload(file: Any) -> tuple[bytes, str]:
    """An uploaded file's bytes and name (size-checked before reading)."""
    if isinstance(file, dict):  # a FileData object sent as JSON without going through the upload route
        raise UserError("send the file as an upload (gradio_client: handle_file(path))")
    if not isinstance(file, (str, Path)) or not str(file):
        raise UserError("no file received")
    return read_upload(file), Path(file).name


def _files(stem: str, rows: list[dict], record: dict) -> list[str]:
    """Write the view's data (CSV) and its reproducibility record (JSON); return both paths.

    One folder per result under :data:`DOWNLOADS`; folders older than :data:`DOWNLOAD_TTL_S` are removed
    here (Gradio serves its own copy), so the folder count stays bounded by the request rate.
    """
    _prune_downloads()
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=DOWNLOADS))
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    if rows:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        csv_path.write_text("")
    json_path.write_text(json.dumps({**record, "environment": environment("cpu")}, indent=2, default=str))
    return [str(csv_path), str(json_path)]


def _prune_downloads(now: float | None = None) -> int:
    """Remove result folders older than DOWNLOAD_TTL_S; returns how many."""
    now = time.time() if now is None else now
    n = 0
    for d in DOWNLOADS.glob("*") if DOWNLOADS.is_dir() else []:
        try:
            if now - d.stat().st_mtime > DOWNLOAD_TTL_S:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def _record(a: Side, b: Side, corpus: Corpus | None = None, **extra: Any) -> dict:
    rec: dict[str, Any] = {"side_a": a.record(), "side_b": b.record()}
    if corpus is not None:
        rec["corpus"] = {"name": corpus.name, "texts": len(corpus), "sha256": corpus.sha256}
    return {**rec, **extra}


# --- model bar -------------------------------------------------------------------------------------
@user_facing
def model_card(side: Any, what: str = "side") -> str:
    """One side's facts: the model's, its adapter's training record and, for a snapshot, that step's figures.
    The adapter was validated when the spec was parsed (allowed folders, regular files, size caps);
    data is escaped for Markdown."""
    s = _side(side, what)
    spec = MODELS[s.model]
    pooling = f"EOS token {md(repr(spec.eos_token))}" if spec.pooling == "eos" else "mean of tokens"
    lines = [f"`{s.spec}`: **{md(spec.title)}** · {spec.params_m:g}M parameters · {md(spec.licence)} · pooling: {pooling}"
             + (f". {md(spec.notes)}" if spec.notes else "")]
    rec = training_record(s)
    if s.adapter is None:
        lines.append("Base model, no adapter.")
    elif not rec:
        lines.append(f"Adapter **{md(s.adapter)}** (no training record)")
    else:
        t = rec.get("training") if isinstance(rec.get("training"), dict) else {}
        cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        dev = (rec.get("dev") if isinstance(rec.get("dev"), dict) else {}).get("STSBenchmark-dev")
        lines.append(f"Adapter **{md(s.adapter)}**: trained on {md(rec.get('device', '?'))}, "
                     f"{md(t.get('steps', '?'))} steps × {md(t.get('effective_contrastive_batch', '?'))} triplets, "
                     f"lr {md(cfg.get('lr', '?'))}"
                     + (f", STS-B dev {dev:.1f}" if isinstance(dev, (int, float)) and math.isfinite(dev) else ""))
    if s.step is not None:
        snap = next(x for x in snapshots(s.folder) if x.step == s.step)
        figures = [f"{name} {v:.3f}" if name != "STS-B dev" else f"{name} {v:.1f}"
                   for name, v in (("loss", snap.loss), ("STS-B dev", snap.dev), ("random-pair cosine", snap.random_pair_cosine))
                   if v is not None]
        lines.append(f"Training snapshot at step **{s.step}**" + (f": {', '.join(figures)}" if figures else "")
                     + (" (step 0: the base model's vectors)" if s.weights is None else ""))
    return "\n\n".join(lines)


def side_menu() -> list[tuple[str, str]]:
    """(label, spec) choices of the side pickers: every valid spec here."""
    return side_choices()


def unavailable_note() -> tuple[int, str]:
    """How many registry models cannot load here, and why, one Markdown line each."""
    rows = [f"- `{k}`: {md(why)}" for k, (ok, why) in available_models().items() if not ok]
    return len(rows), "\n".join(rows)


# --- pairs -----------------------------------------------------------------------------------------
@user_facing
def compare_api(lab: Lab, side_a: Any, side_b: Any, text_a: Any, text_b: Any) -> dict:
    """API: the cosine of one pair of texts under each side, with the sides' specs."""
    a, b = _sides(side_a, side_b)
    r = lab.compare_pair(a, b, _text(text_a, "text A"), _text(text_b, "text B"))
    return {"side_a": a.spec, "side_b": b.spec, "cosine_a": round(r["a"], 6), "cosine_b": round(r["b"], 6)}


@user_facing
def compare(lab: Lab, side_a: Any, side_b: Any, x: Any, y: Any) -> str:
    a, b = _sides(side_a, side_b)
    r = lab.compare_pair(a, b, _text(x, "sentence A"), _text(y, "sentence B"))
    return (f"| side | cosine |\n|---|---|\n| A · `{a.spec}` | **{r['a']:.3f}** |\n| B · `{b.spec}` | **{r['b']:.3f}** |"
            f"\n\n{PAIR_MEANING}")


# One sentence under every compare: what the two numbers mean (the first thing a visitor sees).
PAIR_MEANING = ("Each number is the cosine between the two sentences' embeddings under that side (1 = same direction). "
                "It means something only next to what unrelated sentences get: a raw LM gives almost any two sentences "
                "a high cosine (see *Anisotropy* below), while a contrastively tuned one keeps high scores for pairs that "
                "mean the same thing.")


@user_facing
def sts_example(seed: Any = None) -> tuple[str, str, str]:
    t = load_task("STSBenchmark")
    i = random.Random(seed).randrange(len(t))
    return t.s1[i], t.s2[i], f"Human similarity score: **{t.gold[i]:.2f} / 5** (STSBenchmark test, {t.subset[i]})"


@user_facing
def batch_pairs(lab: Lab, side_a: Any, side_b: Any, text: str | None, file: str | None):
    """Cosines of many pairs (at most MAX_PAIRS, MAX_PAIR_CHARS characters); long work: background priority."""
    text = _optional_text(text, "the pairs")
    if file:
        data = _upload(file)[0]
    elif text.strip():
        data = text
    else:
        raise UserError("paste pairs (one per line: sentence A <TAB> sentence B [<TAB> score]) or upload a file")
    a, b = _sides(side_a, side_b)
    s1, s2, gold = parse_pairs(data)
    r = lab.batch_pairs(a, b, s1, s2, gold)
    na, nb = _names(a, b)
    rows = [{"sentence A": x, "sentence B": y, "gold": g, f"cos {na}": round(ca, 4), f"cos {nb}": round(cb, 4)}
            for x, y, g, ca, cb in zip(s1, s2, gold or [None] * len(s1), r["a"], r["b"])]
    summary = f"{len(s1)} pairs."
    fig = None
    if gold is not None and "spearman_a" in r:
        summary += (f" Spearman ×100 vs your scores: A `{a.spec}` **{r['spearman_a']:.1f}**,"
                    f" B `{b.spec}` **{r['spearman_b']:.1f}**")
        fig = plots.scatter_vs_gold(gold, {na: (r["a"], r["spearman_a"]), nb: (r["b"], r["spearman_b"])})
    files = _files("pairs", rows, _record(a, b, pairs_sha256=corpus_sha256(s1 + s2)))
    return pd.DataFrame(rows), fig, summary, files


@user_facing
def anisotropy(lab: Lab, side_a: Any, side_b: Any):
    a, b = _sides(side_a, side_b)
    r = lab.anisotropy(a, b)
    na, nb = _names(a, b)
    msg = (f"Mean cosine of {r['n_pairs']:,} random STSBenchmark sentence pairs: A `{a.spec}` **{r['a'].mean():.3f}**, "
           f"B `{b.spec}` **{r['b'].mean():.3f}**. Unrelated sentences should score low; a raw LM scores almost every pair the same.")
    return msg, plots.cosine_histogram({na: r["a"], nb: r["b"]}, "Random-pair cosines (anisotropy)")


# --- map -------------------------------------------------------------------------------------------
@user_facing
def upload_corpus(file: str | None) -> tuple[Corpus, str]:
    data, name = _upload(file)
    return (c := parse_corpus(data, name)), f"Loaded **{md(c.name)}**: {len(c):,} texts. Choose 'upload' as corpus."


@user_facing
def draw_map(lab: Lab, side_a: Any, side_b: Any, corpus_name: str, upload: Corpus | None, queries: str | None,
             downloads: bool = True):
    """The two sides' aligned maps of a corpus, "what moved", a note, the downloads (none when ``downloads``
    is false: the first-visit view writes no files) and the session's neighbour state."""
    a, b = _sides(side_a, side_b)
    full = _corpus(corpus_name, upload)
    queries = _optional_text(queries, "queries")
    qs = [_text(x, "query") for x in queries.splitlines() if x.strip()][:MAX_QUERIES]
    m = lab.twin_map(a, b, full)
    c: Corpus = m["corpus"]
    q = None
    if qs:
        pa, pb = lab.place_queries(a, b, m, qs)
        q = (pa, pb, [x if len(x) < 40 else x[:37] + "…" for x in qs])
    na, nb = _names(a, b)
    fig = plots.twin_maps(m["xy_a"], m["xy_b"], c.texts, c.labels, (na, nb + (" (the same side)" if a == b else "")), q)
    order = np.argsort(m["jaccard"])[:50]
    moved = pd.DataFrame({"#": order, "text": [c.texts[i] for i in order], "label": [c.labels[i] for i in order],
                          "kept": [round(float(j), 2) for j in m["jaccard"][order]]})
    note = (f"{len(c):,} texts{f' (a seeded sample of {len(full):,})' if len(full) > MAP_MAX else ''}; "
            f"mean neighbour overlap (k=10) between A `{a.spec}` and B `{b.spec}`: **{m['jaccard'].mean():.2f}**. "
            "Click a row to compare its neighbours.")
    rows = [{"text": t, "label": l, f"{na} x": float(ax), f"{na} y": float(ay), f"{nb} x": float(bx), f"{nb} y": float(by),
             "jaccard": float(j)} for t, l, (ax, ay), (bx, by), j in zip(c.texts, c.labels, m["xy_a"], m["xy_b"], m["jaccard"])]
    files = _files("map", rows, _record(a, b, c, umap=m["params"])) if downloads else None
    # int32 arrays, not lists: ~40 KB per session for a 1K-text map instead of ~1 MB of Python ints
    state = {"texts": c.texts, "nn_a": m["nn_a"].astype(np.int32), "nn_b": m["nn_b"].astype(np.int32),
             "a": a.spec, "b": b.spec}
    return fig, moved, note, files, state


@user_facing
def first_visit(lab: Lab, side_a: Any, side_b: Any, x: Any, y: Any, corpus_name: Any) -> tuple:
    """What a visitor sees before clicking anything: the page's pair compared, and the map of ``corpus_name``
    if it is cached (a built-in corpus under the default sides is: assets/cache). Outputs of :func:`compare`
    then :func:`draw_map`; a part that fails or is not cached leaves a line instead, never an error."""
    try:
        pair = compare(lab, side_a, side_b, x, y)
    except UserError as e:
        pair = f"Press **Compare** to compare the pair ({md(e)})"
    empty = (None, None, "Press **Draw the maps** to draw them.", None, None)
    try:
        if not isinstance(corpus_name, str) or corpus_name not in BUILTINS:
            return (pair, *empty)
        a, b = _sides(side_a, side_b)
        if not lab.map_cached(a, b, builtin(corpus_name)):
            return (pair, *empty)
        return (pair, *draw_map(lab, side_a, side_b, corpus_name, None, None, downloads=False))
    except UserError:
        return (pair, *empty)


def neighbours(state: dict | None, moved: pd.DataFrame | None, row: int) -> str:
    """Both sides' neighbour lists of the clicked 'what moved' row."""
    if moved is None or row is None or row >= len(moved):
        return ""
    if not state:  # the session's map state expired (an hour idle, or evicted among many newer sessions)
        return "This map's neighbour lists have expired: draw the map again to see them."
    i = int(moved.iloc[row]["#"])
    t = state["texts"]
    na, nb = [int(j) for j in state["nn_a"][i]], [int(j) for j in state["nn_b"][i]]
    kept = set(na) & set(nb)
    # "1\." with hard line breaks, not a Markdown list: the app's list style clipped the "10." marker
    fmt = lambda ids: "  \n".join(f"{k + 1}\\. {'**' if j in kept else ''}{md(t[j])}{'**' if j in kept else ''}" for k, j in enumerate(ids))  # noqa: E731
    return (f"#### “{md(t[i])}”\n\n**Neighbours under A** `{state['a']}`\n\n{fmt(na)}\n\n"
            f"**Neighbours under B** `{state['b']}`\n\n{fmt(nb)}\n\n(bold: in both)")


# --- search ----------------------------------------------------------------------------------------
@user_facing
def search(lab: Lab, side_a: Any, side_b: Any, corpus_name: str, upload: Corpus | None, query: str, k: Any):
    a, b = _sides(side_a, side_b)
    c = _corpus(corpus_name, upload)
    k = _whole(k, "k", 1, MAX_K)
    r = lab.search(a, b, c, _text(query, "query"), k)
    rank_a = {i: n for n, (i, _) in enumerate(r["a"], 1)}
    rank_b = {i: n for n, (i, _) in enumerate(r["b"], 1)}
    def table(hits, other):  # noqa: E306
        return pd.DataFrame([{"#": n, "cosine": round(sc, 3), "text": c.texts[i], "label": c.labels[i],
                              "# other side": other.get(i, f">{r['k']}")} for n, (i, sc) in enumerate(hits, 1)])
    def idx(which: str) -> str:  # noqa: E306
        kind, rec = r["index"][which], r["recall_at_10"][which]
        return "exact (flat)" if kind == "exact" else f"{kind} (recall@10 vs exact {rec:.3f})"
    index = idx("a") if r["index"]["a"] == r["index"]["b"] else f"A {idx('a')}, B {idx('b')}"
    note = (f"{r['n']:,} texts, FAISS {index}. Overlap@{r['k']} between A `{a.spec}` and B `{b.spec}`: "
            f"**{r['overlap']:.0%}**.")
    na, nb = _names(a, b)
    rows = [{"side": name, "rank": n, "score": sc, "text": c.texts[i]} for name, hits in
            ((na, r["a"]), (nb, r["b"])) for n, (i, sc) in enumerate(hits, 1)]
    return (table(r["a"], rank_b), table(r["b"], rank_a), note,
            _files("search", rows, _record(a, b, c, query=query, k=r["k"], index=r["index"], overlap=r["overlap"])))


# --- benchmarks ------------------------------------------------------------------------------------
def results_table() -> pd.DataFrame:
    """Our committed results beside the paper's (Spearman ×100)."""
    return results_frame()


def results_chart(df: pd.DataFrame):
    tasks = list(df["task"])
    return plots.grouped_bars(tasks, {c: df[c].fillna(0).tolist() for c in df.columns[1:]
                                      if "paper before" not in c})


def training_records(root: Path = ADAPTERS_DIR) -> tuple[Any, pd.DataFrame]:
    """Loss curves (plotly figure) and one row of settings and scores per shipped adapter's training.json."""
    curves, rows = {}, []
    for p in sorted(root.glob("*/*/training.json")):
        try:
            rec = read_training_record(p.parent)
        except AdapterError:
            continue
        name = f"{p.parent.parent.name}/{p.parent.name}"
        t, c = rec.get("training", {}), rec.get("config", {})
        curves[name] = t.get("loss_curve") or [[0, 0]]
        rows.append({"adapter": name, "device": rec.get("device"), "steps": t.get("steps"),
                     "batch": t.get("effective_contrastive_batch"), "lr": c.get("lr"), "temperature": c.get("temperature"),
                     "LoRA r/alpha": f"{c.get('lora_r')}/{c.get('lora_alpha')}", "minutes": round((t.get("wall_seconds") or 0) / 60, 1),
                     "sentences/s": t.get("sentences_per_second"), "STS-B dev": (rec.get("dev") or {}).get("STSBenchmark-dev"),
                     "9-set avg": (rec.get("test") or {}).get("average"), "note": rec.get("note", "")})
    df = pd.DataFrame(rows)
    if "note" in df and not df["note"].any():  # the column only when some record carries a note
        df = df.drop(columns="note")
    return (plots.loss_curve(curves) if curves else None), df


@user_facing
def run_evaluation(lab: Lab, side_a: Any, side_b: Any, tasks: list[str] | None, quick: Any, progress=None):
    """Spearman x100 of both sides on the chosen STS tasks; full sets only where :func:`full_eval_allowed`, else quick."""
    from .evaluation import run_eval

    if tasks is None or tasks == []:
        raise UserError("pick at least one task")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise UserError(f"tasks must be a list of task names, not {_kind(tasks)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {_short(unknown[0])}; tasks: {', '.join(TASKS)}")
    tasks = list(dict.fromkeys(tasks))
    quick = _flag(quick, "quick")
    a, b = _sides(side_a, side_b)
    downgraded = not quick and not full_eval_allowed()
    limit = QUICK_PAIRS if quick or downgraded else None
    names = _names(a, b)
    sides = list(dict.fromkeys([a, b]))  # the same side twice is evaluated once
    results: dict[Side, dict] = {}
    for n, side in enumerate(sides):
        def cb(done, total, task, n=n, side=side):
            if progress is not None:
                progress((n * total + done) / (len(sides) * total), desc=f"{side.spec}: {task}")
        results[side] = lab.evaluate(side, lambda enc, adapter, cb=cb: run_eval(
            enc, tasks, limit=limit, use_adapter=adapter or False, progress=cb))
    out = {name: results[side] for name, side in zip(names, (a, b))}
    rows = [{"task": t, **{name: out[name]["tasks"][t] for name in names}, "pairs": out[names[0]]["pairs"][t]} for t in tasks]
    rows.append({"task": "average", **{name: out[name]["average"] for name in names}, "pairs": None})
    note = (("Full-set evaluation is off on this host (hours on a CPU; the host enables it with "
             "EMBEDLAB_FULL_EVAL=1), so this ran in quick mode. " if downgraded else "")
            + (f"Quick mode: {QUICK_PAIRS} random pairs per task. " if limit else "")
            + f"A `{a.spec}` vs B `{b.spec}`, {sum(r['seconds'] for r in results.values()):.0f} s.")
    return pd.DataFrame(rows).round(2), note, _files("evaluation", rows, _record(a, b, results=out))


@user_facing
def embed_api(lab: Lab, side_a: Any, side_b: Any, texts: Any, both: Any = True) -> dict:
    """API: embeddings of ``texts`` (at most 256) as lists of floats under side A and (``both``) side B."""
    if not isinstance(texts, list) or not texts:
        raise UserError(f"texts must be a non-empty list of strings, not {_kind(texts) if texts != [] else 'an empty list'}")
    if len(texts) > 256:
        raise UserError(f"{len(texts)} texts; the API embeds at most 256 per call")
    both = _flag(both, "both")
    a, b = _sides(side_a, side_b)
    texts = [_text(t, f"text {i + 1}", 20_000) for i, t in enumerate(texts)]
    va, vb = lab.embed_bounded(a, b if both else a, texts)  # total characters and tokens capped
    return {"side_a": a.spec, "side_b": b.spec if both else None, "dim_a": int(va.shape[1]),
            "dim_b": int(vb.shape[1]) if both else None,
            "a": va.round(6).tolist(), "b": vb.round(6).tolist() if both else None}


def how_it_works(template: str) -> str:
    """The teaching notes with numbers from the committed results and training records."""
    recs = load_results()
    base = next((r for r in recs if r["model"] == "smollm2-135m" and not r.get("adapter") and not r.get("limit")), None)
    tuned = next((r for r in recs if r["model"] == "smollm2-135m" and r.get("adapter") and not r.get("limit")), None)
    fmt = lambda r, t: f"{r['tasks'][t]:.1f}" if r and t in r.get("tasks", {}) else "(not yet measured)"  # noqa: E731
    aniso = (base or {}).get("random_pair_cosine")
    tuned_line = (f"After training, STSBenchmark rises from {fmt(base, 'STSBenchmark')} to **{fmt(tuned, 'STSBenchmark')}**"
                  f" and the 9-set average from {base['average']:.1f} to **{tuned['average']:.1f}**"
                  if base and tuned else "Pick an adapter and compare the tabs")
    if tuned and tuned.get("random_pair_cosine") is not None:
        tuned_line += f"; random pairs drop to a mean cosine of **{tuned['random_pair_cosine']:.2f}**."
    else:
        tuned_line += "."
    return template.format(dim=576, aniso_base=f"{aniso:.2f}" if aniso is not None else "0.9",
                           base_stsb=fmt(base, "STSBenchmark"), model="SmolLM2-135M", tuned_line=tuned_line,
                           lora_note="about 0.46M trainable parameters for SmolLM2-135M, 0.3% of the model")


# --- training replay (the work is in embedlab/replay.py) ----------------------------------------------
def _replay(lab: Lab, side_a: Any, side_b: Any, corpus_name: Any):
    """(the side whose adapter is replayed, its precomputed replay on a built-in corpus): side B's adapter,
    else side A's (validated like every view's inputs)."""
    from .replay import load_replay, replay_corpus

    a, b = _sides(side_a, side_b)
    s = b if b.adapter else a if a.adapter else None
    replay_corpus(corpus_name)
    if s is None:
        raise UserError("Neither side has an adapter: pick one with training snapshots (the shipped "
                        "smollm2-135m+nli-cft has them) to replay its training.")
    if s.folder is None:
        raise UserError(f"{s.spec}: its adapter has no local folder, so no training record to replay")
    return s, load_replay(MODELS[s.model], s.folder, corpus_name)


def _pair_at(lab: Lab, s: Side, step: int, x: Any, y: Any) -> str:
    """A line with the Pairs tab's sentences' cosine under ``s``'s adapter at ``step`` ("" when that step's
    weights are not shipped or the sentences are not usable). Each step's vectors stay in the lab's memory
    of recent texts, so scrubbing back and forth embeds each step once."""
    try:
        at = parse_side(f"{s.model}+{s.adapter}@{step}")
        r = lab.compare_pair(at, at, _text(x, "sentence A"), _text(y, "sentence B"))
    except (UserError, *USER_ERRORS):
        return ""
    return f"\n\nThe Pairs tab's two sentences at step {step}: cosine **{r['a']:.3f}**."


def replay_steps(lab: Lab, side_a: Any, side_b: Any) -> list[int]:
    """The snapshot steps the replay of the sides' adapter has ([] if none is precomputed): the slider's range."""
    from .replay import ReplayUnavailable

    try:
        return [*_replay(lab, side_a, side_b, "topics")[1].steps]
    except (ReplayUnavailable, UserError, *USER_ERRORS):
        return []


@user_facing
def replay_open(lab: Lab, side_a: Any, side_b: Any, corpus_name: Any, x: Any = None,
                y: Any = None) -> tuple[list[int], str, Any, Any, Any]:
    """(snapshot steps, note, curves, anisotropy, maps) at the last step; steps [] and a note saying why
    when the adapter has no replay (no snapshots, or none precomputed here)."""
    from .replay import ReplayUnavailable, step_view

    try:
        s, r = _replay(lab, side_a, side_b, corpus_name)
    except (ReplayUnavailable, UserError) as e:
        return [], scrub(str(e)), None, None, None
    i = len(r.steps) - 1
    note, *figs = step_view(r, i)
    return [*r.steps], note + _pair_at(lab, s, int(r.steps[i]), x, y), *figs


@user_facing
def replay_step(lab: Lab, side_a: Any, side_b: Any, corpus_name: Any, x: Any, y: Any,
                index: Any) -> tuple[str, Any, Any, Any]:
    """(note, curves, anisotropy, maps) at snapshot ``index`` (0 = step 0, the base model), the note with the
    Pairs tab's pair at that step."""
    from .replay import step_view

    s, r = _replay(lab, side_a, side_b, corpus_name)
    i = _whole(index, "snapshot", 0, len(r.steps) - 1)
    note, *figs = step_view(r, i)
    return note + _pair_at(lab, s, int(r.steps[i]), x, y), *figs


__all__ = ["UserError", "user_facing"]
