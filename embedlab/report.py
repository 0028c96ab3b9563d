"""The results table (ours beside the paper's), from the committed records under assets/results,
and how each shipped adapter was trained, from its training.json (the same reader as the app's)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from . import ROOT
from .adapters import ADAPTERS_DIR, AdapterError, read_training_record
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


def training_summary(record: dict) -> dict:
    """The lines of a training record a reader wants first (device, batch, steps, scores); missing ones None."""
    cfg, train = record.get("config") or {}, record.get("training") or {}
    return {"device": record.get("device"), "steps": train.get("steps"),
            "contrastive batch": train.get("effective_contrastive_batch"),
            "lr": f"{cfg['lr']:g}" if isinstance(cfg.get("lr"), (int, float)) else None,
            "wall s": train.get("wall_seconds"), "sentences/s": train.get("sentences_per_second"),
            "STSBenchmark dev": (record.get("dev") or {}).get("STSBenchmark-dev"),
            "9-set average": (record.get("test") or {}).get("average")}


def adapters_frame(root: Path = ADAPTERS_DIR) -> pd.DataFrame:
    """One row per shipped adapter (assets/adapters/<model>/<name>) with :func:`training_summary`."""
    rows = []
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        try:
            record = read_training_record(folder)
        except AdapterError as e:
            log.warning("%s: %s", folder, e)
            continue
        rows.append({"model": folder.parent.name, "adapter": folder.name, **training_summary(record)})
    return pd.DataFrame(rows)
