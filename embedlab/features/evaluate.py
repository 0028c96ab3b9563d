"""Benchmarks tab: our committed results beside the paper's, the shipped adapters' training records, and an
STS evaluation of side A and side B run now."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import plots
from .. import report
from ..adapters import ADAPTERS_DIR
from ..lab import Lab
from ..side import Side
from ..sts import TASKS
from .common import Choices, Ctx, UserError, files, flag, kind, md, names, record, short, sides, user_facing

QUICK_PAIRS = 200  # per task in a quick evaluation


def full_eval_allowed() -> bool:
    """Full-set evaluation (hours on a CPU) only where the host opts in with EMBEDLAB_FULL_EVAL=1."""
    return os.environ.get("EMBEDLAB_FULL_EVAL", "") == "1"


def results_table() -> pd.DataFrame:
    """Our committed results beside the paper's (Spearman ×100)."""
    return report.results_frame()


def results_chart(df: pd.DataFrame):
    tasks = list(df["task"])
    return plots.grouped_bars(tasks, {c: df[c].fillna(0).tolist() for c in df.columns[1:]
                                      if "paper before" not in c})


def training_records(root: Path = ADAPTERS_DIR) -> tuple[Any, pd.DataFrame, str]:
    """Loss curves (plotly figure), the table of the shipped adapters' training records
    (:func:`report.training_records`) with scores to 2 decimals, and the records' notes as folded Markdown ("" when
    none has one). A note is a paragraph: as a column it made the table wider than the page (1400 px) and each
    row as tall as its note."""
    curves, df = report.training_records(root)
    notes = [f"**{md(a)}**: {md(str(n).strip())}" for a, n in zip(df["adapter"], df.pop("note")) if str(n or "").strip()] \
        if "note" in df else []
    for col in ("STS-B dev", "9-set avg"):
        if col in df:
            df[col] = [round(v, 2) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in df[col]]
    folded = (f"<details><summary>Notes on {len(notes)} of these runs</summary>\n\n" + "\n\n".join(notes)
              + "\n\n</details>") if notes else ""
    fig = plots.loss_curve({k: list(c) or [[0, 0]] for k, c in curves.items()}) if curves else None
    return fig, df, folded


def evaluate_side(lab: Lab, side: Side, tasks: list[str], limit: int | None, progress=None) -> dict:
    """Spearman x100 of one side on ``tasks`` (``limit`` random pairs each; None: all), its model held meanwhile."""
    from ..evaluation import run_eval

    with lab.hold(side) as (r,):
        return run_eval(r.enc, tasks, adapter=r.adapter, limit=limit, progress=progress)


@user_facing
def run_evaluation(lab: Lab, side_a: Any, side_b: Any, tasks: list[str] | None, quick: Any, progress=None):
    """Spearman x100 of both sides on the chosen STS tasks; full sets only where :func:`full_eval_allowed`, else quick."""
    if tasks is None or tasks == []:
        raise UserError("pick at least one task")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise UserError(f"tasks must be a list of task names, not {kind(tasks)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {short(unknown[0])}; tasks: {', '.join(TASKS)}")
    tasks = list(dict.fromkeys(tasks))
    quick = flag(quick, "quick")
    a, b = sides(side_a, side_b)
    downgraded = not quick and not full_eval_allowed()
    limit = QUICK_PAIRS if quick or downgraded else None
    cols = names(a, b)
    both = list(dict.fromkeys([a, b]))  # the same side twice is evaluated once
    results: dict[Side, dict] = {}
    for n, side in enumerate(both):
        def cb(done, total, task, n=n, side=side):
            if progress is not None:
                progress((n * total + done) / (len(both) * total), desc=f"{side.spec}: {task}")
        results[side] = evaluate_side(lab, side, tasks, limit, cb)
    out = {name: results[side] for name, side in zip(cols, (a, b))}
    rows = [{"task": t, **{name: out[name]["tasks"][t] for name in cols}, "pairs": out[cols[0]]["pairs"][t]} for t in tasks]
    rows.append({"task": "average", **{name: out[name]["average"] for name in cols}, "pairs": None})
    note = (("Full-set evaluation is off on this host (hours on a CPU; the host enables it with "
             "EMBEDLAB_FULL_EVAL=1), so this ran in quick mode. " if downgraded else "")
            + (f"Quick mode: {QUICK_PAIRS} random pairs per task. " if limit else "")
            + f"A `{a.spec}` vs B `{b.spec}`, {sum(r['seconds'] for r in results.values()):.0f} s.")
    return pd.DataFrame(rows).round(2), note, files("evaluation", rows, record(a, b, results=out))


def build(ctx: Ctx) -> None:
    with gr.Tab("Benchmarks"):
        table = results_table()
        gr.Markdown("Spearman ×100 between cosine and human scores (MTEB conventions). Paper columns: arXiv 2408.00690, Table 1.")
        gr.Dataframe(table, interactive=False, wrap=True, elem_classes="wide-table")
        gr.Plot(results_chart(table))
        loss_fig, records, notes = training_records()
        gr.Markdown("### Shipped adapters: training records")
        if len(records):
            gr.Dataframe(records, interactive=False, wrap=True, elem_classes=["wide-table", "records"])
            if notes:
                gr.Markdown(notes, elem_id="record-notes")
        else:
            gr.Markdown("No adapter is shipped yet (assets/adapters/). Train one with `python train.py`.")
        if loss_fig is not None:
            gr.Plot(loss_fig)
        gr.Markdown("### Run an evaluation now (side A and side B)")
        with gr.Row():
            eval_tasks = Choices(choices=list(TASKS), value=["STSBenchmark", "SICK-R"], label="Tasks", what="tasks")
            quick = gr.Checkbox(value=True, label="Quick (200 random pairs per task; CPU-friendly)")
        go_eval = gr.Button("Evaluate")
        eval_note = gr.Markdown()
        eval_df = gr.Dataframe(pd.DataFrame(columns=["task", "A", "B", "pairs"]), interactive=False)
        eval_files = gr.File(label="Download", file_count="multiple")

    def evaluate(lab_, a, b, tasks, q, progress=gr.Progress()):
        return run_evaluation(lab_, a, b, tasks, q, progress=progress)

    go_eval.click(ctx.h(evaluate), [*ctx.sides, eval_tasks, quick], [eval_df, eval_note, eval_files],
                  api_name="evaluate", **ctx.heavy)
