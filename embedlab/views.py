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
from .adapters import ADAPTERS_DIR, AdapterError, read_training_record
from .cache import CacheBusy, corpus_sha256
from .compute import Cancelled
from .corpora import BUILTINS, Corpus, InputError, builtin, clean_text, parse_corpus, parse_pairs, read_upload
from .encode import TextError
from .lab import MAP_MAX, NONE, ROOT, Lab, Side
from .loading import ModelUnavailableError
from .nli import DataError
from .provenance import environment
from .registry import MODELS, UnknownModelError, available_models
from .report import load_results, results_frame
from .sts import TASKS, load_task

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 1000
MAX_QUERIES = 10
MAX_K = 50
QUICK_PAIRS = 200  # per task in a quick evaluation
USER_ERRORS = (InputError, TextError, AdapterError, ModelUnavailableError, UnknownModelError, DataError, CacheBusy)
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


def _model(key: Any) -> str:
    if not isinstance(key, str):
        raise UserError(f"model must be a model name (text), not {_kind(key)}; one of: {', '.join(MODELS)}")
    if key not in MODELS:
        raise UserError(f"unknown model {_short(key)}; one of: {', '.join(MODELS)}")
    ok, why = available_models()[key]
    if not ok:
        raise UserError(f"{key} cannot be loaded here: {why}")
    return key


def _adapter(value: Any) -> str:
    if not isinstance(value, str):
        raise UserError(f"adapter must be text (an adapter folder from the menu, or 'none'), not {_kind(value)}")
    return value.strip() or NONE


def _side(lab: Lab, model: Any, adapter: Any) -> Side:
    return lab.side(_model(model), _adapter(adapter))


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


def _record(s: Side, corpus: Corpus | None = None, **extra: Any) -> dict:
    info = s.enc.adapters.get(s.adapter) if s.adapter else None
    rec = {"model": s.enc.spec.key, "prompt": s.enc.spec.prompt, "max_length": s.enc.max_length,
           "adapter": str(info.path.name) if info else None, "adapter_sha256": info.sha256 if info else None}
    if corpus is not None:
        rec["corpus"] = {"name": corpus.name, "texts": len(corpus), "sha256": corpus.sha256}
    return {**rec, **extra}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


# --- model bar -------------------------------------------------------------------------------------
@user_facing
def model_card(lab: Lab, model: Any, adapter: Any) -> str:
    """The model's facts and the adapter's training record, validated like every other view's adapter
    (allowed folders, regular files, size cap: :meth:`Lab.adapter_info`); data is escaped for Markdown."""
    spec = MODELS[_model(model)]
    pooling = f"EOS token {md(repr(spec.eos_token))}" if spec.pooling == "eos" else "mean of tokens"
    lines = [f"**{md(spec.title)}** · {spec.params_m:g}M parameters · {md(spec.licence)} · pooling: {pooling}"]
    info = lab.adapter_info(spec.key, _adapter(adapter))
    if info is None:
        lines.append("No adapter: the *tuned* column is empty. Pick an adapter to compare.")
    elif not info.record:
        lines.append(f"Adapter **{md(info.path.name)}** (no training record)")
    else:
        rec = info.record
        t = rec.get("training") if isinstance(rec.get("training"), dict) else {}
        cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        dev = (rec.get("dev") if isinstance(rec.get("dev"), dict) else {}).get("STSBenchmark-dev")
        lines.append(f"Adapter **{md(info.path.name)}**: trained on {md(rec.get('device', '?'))}, "
                     f"{md(t.get('steps', '?'))} steps × {md(t.get('effective_contrastive_batch', '?'))} triplets, "
                     f"lr {md(cfg.get('lr', '?'))}"
                     + (f", STS-B dev {dev:.1f}" if isinstance(dev, (int, float)) and math.isfinite(dev) else ""))
    return "\n\n".join(lines)


@user_facing
def adapter_menu(lab: Lab, model: Any) -> tuple[list[tuple[str, str]], str]:
    """(label, value) choices of the adapter menu for ``model`` and the one to select."""
    choices = lab.adapter_choices(_model(model))
    return choices, choices[0][1]


def unavailable_note() -> str:
    rows = [f"- `{k}`: {why}" for k, (ok, why) in available_models().items() if not ok]
    return ("**Not loadable here:**\n" + "\n".join(rows)) if rows else ""


# --- pairs -----------------------------------------------------------------------------------------
@user_facing
def compare(lab: Lab, model: str, adapter: str, a: str, b: str) -> str:
    s = _side(lab, model, adapter)
    r = lab.compare_pair(s, _text(a, "sentence A"), _text(b, "sentence B"))
    tuned = "—" if r["tuned"] is None else f"{r['tuned']:.3f}"
    return (f"| | cosine |\n|---|---|\n| base {model} | **{r['base']:.3f}** |\n| {md(s.label)} | **{tuned}** |")


@user_facing
def sts_example(seed: Any = None) -> tuple[str, str, str]:
    t = load_task("STSBenchmark")
    i = random.Random(seed).randrange(len(t))
    return t.s1[i], t.s2[i], f"Human similarity score: **{t.gold[i]:.2f} / 5** (STSBenchmark test, {t.subset[i]})"


@user_facing
def batch_pairs(lab: Lab, model: str, adapter: str, text: str | None, file: str | None):
    """Cosines of many pairs (at most MAX_PAIRS, MAX_PAIR_CHARS characters); long work: background priority."""
    text = _optional_text(text, "the pairs")
    if file:
        data = _upload(file)[0]
    elif text.strip():
        data = text
    else:
        raise UserError("paste pairs (one per line: sentence A <TAB> sentence B [<TAB> score]) or upload a file")
    s = _side(lab, model, adapter)
    s1, s2, gold = parse_pairs(data)
    r = lab.batch_pairs(s, s1, s2, gold)
    rows = [{"sentence A": a, "sentence B": b, "gold": g, "cos base": round(cb, 4),
             "cos tuned": None if r["tuned"] is None else round(r["tuned"][i], 4)}
            for i, (a, b, g, cb) in enumerate(zip(s1, s2, gold or [None] * len(s1), r["base"]))]
    summary = f"{len(s1)} pairs."
    fig = None
    if gold is not None and "spearman_base" in r:
        summary += f" Spearman ×100 vs your scores: base **{r['spearman_base']:.1f}**"
        if r.get("spearman_tuned") is not None:
            summary += f", tuned **{r['spearman_tuned']:.1f}**"
        fig = plots.scatter_vs_gold(gold, r["base"], r["tuned"], r["spearman_base"], r.get("spearman_tuned"))
    files = _files("pairs", rows, _record(s, pairs_sha256=corpus_sha256(s1 + s2)))
    return pd.DataFrame(rows), fig, summary, files


@user_facing
def anisotropy(lab: Lab, model: str, adapter: str):
    s = _side(lab, model, adapter)
    r = lab.anisotropy(s)
    msg = (f"Mean cosine of {r['n_pairs']:,} random STSBenchmark sentence pairs: base **{r['base'].mean():.3f}**"
           + (f", tuned **{r['tuned'].mean():.3f}**" if r["tuned"] is not None else "")
           + ". Unrelated sentences should score low; a raw LM scores almost every pair the same.")
    return msg, plots.cosine_histogram(r["base"], r["tuned"], "Random-pair cosines (anisotropy)")


# --- map -------------------------------------------------------------------------------------------
@user_facing
def upload_corpus(file: str | None) -> tuple[Corpus, str]:
    data, name = _upload(file)
    return (c := parse_corpus(data, name)), f"Loaded **{md(c.name)}**: {len(c):,} texts. Choose 'upload' as corpus."


@user_facing
def draw_map(lab: Lab, model: str, adapter: str, corpus_name: str, upload: Corpus | None, queries: str | None):
    s = _side(lab, model, adapter)
    full = _corpus(corpus_name, upload)
    queries = _optional_text(queries, "queries")
    qs = [_text(x, "query") for x in queries.splitlines() if x.strip()][:MAX_QUERIES]
    m = lab.map(s, full)
    c: Corpus = m["corpus"]
    q = None
    if qs:
        pb, pt = lab.place_queries(s, m, qs)
        q = (pb, pt, [x if len(x) < 40 else x[:37] + "…" for x in qs])
    tuned_title = s.label if m["has_tuned"] else "no adapter: base again"
    fig = plots.twin_maps(m["base_xy"], m["tuned_xy"], c.texts, c.labels, (f"base {model}", tuned_title), q)
    order = np.argsort(m["jaccard"])[:50]
    moved = pd.DataFrame({"#": order, "text": [c.texts[i] for i in order], "label": [c.labels[i] for i in order],
                          "kept": [round(float(j), 2) for j in m["jaccard"][order]]})
    note = (f"{len(c):,} texts{f' (a seeded sample of {len(full):,})' if len(full) > MAP_MAX else ''}; "
            f"mean neighbour overlap (k=10) base→tuned: **{m['jaccard'].mean():.2f}**. Click a row to compare its neighbours.")
    rows = [{"text": t, "label": l, "base_x": float(bx), "base_y": float(by), "tuned_x": float(tx), "tuned_y": float(ty),
             "jaccard": float(j)} for t, l, (bx, by), (tx, ty), j in zip(c.texts, c.labels, m["base_xy"], m["tuned_xy"], m["jaccard"])]
    files = _files("map", rows, _record(s, c, umap=m["params"]))
    # int32 arrays, not lists: ~40 KB per session for a 1K-text map instead of ~1 MB of Python ints
    state = {"texts": c.texts, "nn_base": m["nn_base"].astype(np.int32), "nn_tuned": m["nn_tuned"].astype(np.int32)}
    return fig, moved, note, files, state


def neighbours(state: dict | None, moved: pd.DataFrame | None, row: int) -> str:
    """Both neighbour lists of the clicked 'what moved' row."""
    if moved is None or row is None or row >= len(moved):
        return ""
    if not state:  # the session's map state expired (an hour idle, or evicted among many newer sessions)
        return "This map's neighbour lists have expired: draw the map again to see them."
    i = int(moved.iloc[row]["#"])
    t = state["texts"]
    nb, nt = [int(j) for j in state["nn_base"][i]], [int(j) for j in state["nn_tuned"][i]]
    kept = set(nb) & set(nt)
    # "1\." with hard line breaks, not a Markdown list: the app's list style clipped the "10." marker
    fmt = lambda ids: "  \n".join(f"{k + 1}\\. {'**' if j in kept else ''}{md(t[j])}{'**' if j in kept else ''}" for k, j in enumerate(ids))  # noqa: E731
    return f"#### “{md(t[i])}”\n\n**Base neighbours**\n\n{fmt(nb)}\n\n**Tuned neighbours**\n\n{fmt(nt)}\n\n(bold: in both)"


# --- search ----------------------------------------------------------------------------------------
@user_facing
def search(lab: Lab, model: str, adapter: str, corpus_name: str, upload: Corpus | None, query: str, k: Any):
    s = _side(lab, model, adapter)
    c = _corpus(corpus_name, upload)
    k = _whole(k, "k", 1, MAX_K)
    r = lab.search(s, c, _text(query, "query"), k)
    base_rank = {i: n for n, (i, _) in enumerate(r["base"], 1)}
    tuned_rank = {i: n for n, (i, _) in enumerate(r["tuned"] or [], 1)}
    def table(hits, other):  # noqa: E306
        return pd.DataFrame([{"#": n, "cosine": round(sc, 3), "text": c.texts[i], "label": c.labels[i],
                              "# other side": other.get(i, f">{r['k']}")} for n, (i, sc) in enumerate(hits, 1)])
    tb = table(r["base"], tuned_rank)
    tt = (table(r["tuned"], base_rank) if r["tuned"] is not None
          else pd.DataFrame({"tuned": ["No adapter selected: pick one in the Adapter menu to compare."]}))
    idx = "exact (flat)" if r["index"] == "exact" else f"{r['index']} (recall@10 vs exact {r['recall_at_10']:.3f})"
    note = f"{r['n']:,} texts, FAISS {idx}."
    if r["tuned"] is not None:
        note += f" Overlap@{r['k']} between base and tuned: **{r['overlap']:.0%}**."
    rows = [{"side": side, "rank": n, "score": sc, "text": c.texts[i]} for side, hits in
            (("base", r["base"]), ("tuned", r["tuned"] or [])) for n, (i, sc) in enumerate(hits, 1)]
    return tb, tt, note, _files("search", rows, _record(s, c, query=query, k=r["k"], index=r["index"]))


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
def run_evaluation(lab: Lab, model: str, adapter: str, tasks: list[str] | None, quick: Any, progress=None):
    """Spearman x100 on the chosen STS tasks; full sets only where :func:`full_eval_allowed`, else quick."""
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
    s = _side(lab, model, adapter)
    downgraded = not quick and not full_eval_allowed()
    limit = QUICK_PAIRS if quick or downgraded else None
    sides = [("base", False)] + ([("tuned", s.adapter)] if s.adapter else [])
    out = {}
    for n, (label, use) in enumerate(sides):
        def cb(done, total, name, n=n, label=label):
            if progress is not None:
                progress((n * total + done) / (len(sides) * total), desc=f"{label}: {name}")
        out[label] = run_eval(s.enc, tasks, limit=limit, use_adapter=use, progress=cb)
    rows = [{"task": t, **{lab_: out[lab_]["tasks"][t] for lab_ in out}, "pairs": out["base"]["pairs"][t]} for t in tasks]
    rows.append({"task": "average", **{lab_: out[lab_]["average"] for lab_ in out}, "pairs": None})
    note = (("Full-set evaluation is off on this host (hours on a CPU; the host enables it with "
             "EMBEDLAB_FULL_EVAL=1), so this ran in quick mode. " if downgraded else "")
            + (f"Quick mode: {QUICK_PAIRS} random pairs per task. " if limit else "")
            + f"{out['base']['seconds'] + out.get('tuned', {}).get('seconds', 0):.0f} s.")
    return pd.DataFrame(rows).round(2), note, _files("evaluation", rows, _record(s, results=out))


__all__ = ["UserError", "user_facing"]


@user_facing
def embed_api(lab: Lab, model: str, adapter: str, texts: list[str], tuned: bool = True) -> dict:
    """API: embeddings of ``texts`` (at most 256) as lists of floats, base and (if an adapter is set) tuned."""
    if not isinstance(texts, list) or not texts:
        raise UserError(f"texts must be a non-empty list of strings, not {_kind(texts) if texts != [] else 'an empty list'}")
    if len(texts) > 256:
        raise UserError(f"{len(texts)} texts; the API embeds at most 256 per call")
    tuned = _flag(tuned, "tuned")
    s = _side(lab, model, adapter)
    base, tun = lab.embed_pair_sides(s, [_text(t, f"text {i + 1}", 20_000) for i, t in enumerate(texts)])
    return {"model": model, "adapter": s.label, "dim": int(base.shape[1]), "base": base.round(6).tolist(),
            "tuned": tun.round(6).tolist() if (tun is not None and tuned) else None}


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
def _replay(lab: Lab, model: Any, adapter: Any, corpus_name: Any):
    """The precomputed replay of the chosen adapter on a built-in corpus (validated like every view's inputs)."""
    from .replay import load_replay, replay_corpus

    key = _model(model)
    info = lab.adapter_info(key, _adapter(adapter))
    replay_corpus(corpus_name)
    if info is None:
        raise UserError("No adapter chosen: pick one with training snapshots (the shipped adapter has them) to "
                        "replay its training.")
    return load_replay(lab.spec(key), info.path, corpus_name)


def replay_steps(lab: Lab, model: Any, adapter: Any) -> list[int]:
    """The snapshot steps the replay of ``adapter`` has ([] if none is precomputed): the slider's range at start-up."""
    from .replay import ReplayUnavailable

    try:
        return [*_replay(lab, model, adapter, "topics").steps]
    except (ReplayUnavailable, UserError, AdapterError, InputError):
        return []


@user_facing
def replay_open(lab: Lab, model: Any, adapter: Any, corpus_name: Any) -> tuple[list[int], str, Any, Any, Any]:
    """(snapshot steps, note, curves, anisotropy, maps) at the last step; steps [] and a note saying why
    when the adapter has no replay (no snapshots, or none precomputed here)."""
    from .replay import ReplayUnavailable, step_view

    try:
        r = _replay(lab, model, adapter, corpus_name)
    except (ReplayUnavailable, UserError) as e:
        return [], scrub(str(e)), None, None, None
    return [*r.steps], *step_view(r, len(r.steps) - 1)


@user_facing
def replay_step(lab: Lab, model: Any, adapter: Any, corpus_name: Any, index: Any) -> tuple[str, Any, Any, Any]:
    """(note, curves, anisotropy, maps) at snapshot ``index`` (0 = step 0, the base model)."""
    from .replay import step_view

    r = _replay(lab, model, adapter, corpus_name)
    return step_view(r, _whole(index, "snapshot", 0, len(r.steps) - 1))
