"""The results table (ours beside the paper's), from the committed records under assets/results,
and how each shipped adapter was trained, from its training.json (the same reader as the app's)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from . import ROOT
from .adapters import ADAPTERS_DIR, AdapterError, TrainingRecord
from .registry import PAPER_RESULTS
from .sts import TASKS

log = logging.getLogger(__name__)
RESULTS_DIR = ROOT / "assets" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def load_results(folder: Path = RESULTS_DIR) -> list[dict]:
    """Every evaluation record in ``folder`` (sorted by file name), unreadable files skipped with a warning."""
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
            rec["_file"] = p.name
            out.append(rec)
        except (OSError, ValueError):
            log.warning("unreadable result file %s", p)
    return out


def column_name(rec: dict) -> str:
    name = rec["model"] + (" + " + Path(rec["adapter"]).name if rec.get("adapter") else " (base)")
    device = rec.get("trained_on")
    return name + (f" [{device}-trained]" if device else "")


def results_frame(paper: bool = True, folder: Path = RESULTS_DIR) -> pd.DataFrame:
    """Rows: the 9 tasks + average; columns: each full (not subsampled) record, then the paper's before/after."""
    cols: dict[str, dict[str, float]] = {}
    for rec in load_results(folder):
        if rec.get("limit"):
            continue  # subsampled runs are not comparable
        cols[column_name(rec)] = {**rec["tasks"], "average": rec["average"]}
    if paper:
        for model, scores in PAPER_RESULTS.items():
            cols[f"{model} paper before"] = {t: v[0] for t, v in scores.items()}
            cols[f"{model} paper after"] = {t: v[1] for t, v in scores.items()}
    rows = list(TASKS) + ["average"]
    return pd.DataFrame({"task": rows, **{k: [round(v[t], 2) if t in v else None for t in rows] for k, v in cols.items()}})


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    fmt = lambda v: "—" if v is None or v != v else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    return head + "\n".join("| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False))


def update_readme(readme: Path) -> bool:
    """Replace the table between the results markers in ``readme``; True if it changed."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} markers")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{markdown_table(results_frame())}\n{END}", text, flags=re.S)
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def training_row(name: str, rec: TrainingRecord) -> dict[str, Any]:
    """One adapter's row of the training-records table: its settings and scores (None where the record has none)."""
    lr, wall = rec.setting("lr"), rec.stat("wall_seconds")
    return {"adapter": name, "device": rec.device, "steps": rec.stat("steps"),
            "batch": rec.stat("effective_contrastive_batch"),
            "lr": f"{lr:g}" if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None,
            "temperature": rec.setting("temperature"),
            "LoRA r/alpha": f"{rec.setting('lora_r')}/{rec.setting('lora_alpha')}",
            "minutes": round((wall or 0) / 60, 1), "sentences/s": rec.stat("sentences_per_second"),
            "STS-B dev": rec.dev, "9-set avg": rec.test_average, "note": rec.note}


def training_records(root: Path = ADAPTERS_DIR) -> tuple[dict[str, tuple[tuple[int, float], ...]], pd.DataFrame]:
    """The shipped adapters' training records (``<root>/<model>/<name>/training.json``): their loss curves by
    ``<model>/<name>``, and the table of :func:`training_row` (the ``note`` column only when some record has
    one). An unreadable record is skipped with a warning. Shown by the app's Benchmarks tab and ``report``."""
    curves, rows = {}, []
    for p in sorted(root.glob("*/*/training.json")):
        name = f"{p.parent.parent.name}/{p.parent.name}"
        try:
            rec = TrainingRecord.read(p.parent)
        except AdapterError as e:
            log.warning("%s: %s", name, e)
            continue
        curves[name] = rec.loss_curve
        rows.append(training_row(name, rec))
    df = pd.DataFrame(rows)
    if "note" in df and not df["note"].any():
        df = df.drop(columns="note")
    return curves, df


def adapters_frame(root: Path = ADAPTERS_DIR) -> pd.DataFrame:
    """The table of :func:`training_records` alone (``python -m embedlab report``)."""
    return training_records(root)[1]
