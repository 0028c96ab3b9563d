"""How it works tab: the teaching notes (docs/how_it_works.md) with numbers from the committed results."""
from __future__ import annotations

import gradio as gr

from .. import ROOT
from ..registry import DEFAULT_MODEL, MODELS
from ..report import load_results
from .common import Ctx

NOTES = ROOT / "docs" / "how_it_works.md"


def how_it_works(template: str, model: str = DEFAULT_MODEL) -> str:
    """The teaching notes with ``model``'s numbers (the default model's) from the committed results."""
    spec = MODELS[model]
    recs = load_results()
    base = next((r for r in recs if r["model"] == model and not r.get("adapter") and not r.get("limit")), None)
    tuned = next((r for r in recs if r["model"] == model and r.get("adapter") and not r.get("limit")), None)
    fmt = lambda r, t: f"{r['tasks'][t]:.1f}" if r and t in r.get("tasks", {}) else "(not yet measured)"  # noqa: E731
    aniso = (base or {}).get("random_pair_cosine")
    tuned_line = (f"After training, STSBenchmark rises from {fmt(base, 'STSBenchmark')} to **{fmt(tuned, 'STSBenchmark')}**"
                  f" and the 9-set average from {base['average']:.1f} to **{tuned['average']:.1f}**"
                  if base and tuned else "Pick an adapter and compare the tabs")
    if tuned and tuned.get("random_pair_cosine") is not None:
        tuned_line += f"; random pairs drop to a mean cosine of **{tuned['random_pair_cosine']:.2f}**."
    else:
        tuned_line += "."
    return template.format(dim=spec.dim if spec.dim else "(the model's width)",
                           aniso_base=f"{aniso:.2f}" if aniso is not None else "0.9",
                           base_stsb=fmt(base, "STSBenchmark"), model=spec.title.split(" (")[0], tuned_line=tuned_line,
                           eos=spec.eos_token or "(its end-of-sequence token)",
                           lora_note=spec.lora_note or "a small fraction of the model's parameters")


def build(ctx: Ctx) -> None:
    with gr.Tab("How it works"):
        gr.Markdown(how_it_works(NOTES.read_text(encoding="utf-8")))
