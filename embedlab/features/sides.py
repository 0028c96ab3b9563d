"""The side pickers above every tab: side A and side B (any model, adapter or training snapshot), each with
its card (the model's facts, its adapter's training record), and the registry models that cannot load here."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr

from ..precision import resolve as resolve_precision
from ..registry import MODELS, ModelSpec
from ..sources import available_models
from ..side import SideError, default_sides, parse_side, side_choices, training_record, valid_specs
from .common import UserError, gradio_errors, md, user_facing


# how a model runs in bf16 (registry: ModelSpec.bf16), for the card
BF16_AS = {"autocast": "float32 weights under bf16 autocast", "weights": "weights cast to bf16, LoRA weights float32"}


def precision_line(spec: ModelSpec, device: str | None) -> str:
    """The card's line saying which precision this side's forward passes run in here, and how."""
    p = resolve_precision(device)
    how = (f": {BF16_AS[spec.bf16]}" + ("; some layers stay float32" if spec.bf16 == "autocast"
                                         and spec.bf16_fp32_modules else "")) if p.bf16 else ""
    return f"Precision: **{md(p.describe())}**{how}"


@user_facing
def model_card(side: Any, what: str = "side", device: str | None = "cpu") -> str:
    """One side's card: one short line (what the side is), then its details folded in a ``<details>``: the
    model's facts, its adapter's training record and, for a snapshot, that step's figures. (The model's name
    is in the picker above it; the two cards of a page differ in their first line only where the sides do.)
    The adapter was validated when the spec was parsed (allowed folders, regular files, size caps);
    data is escaped for Markdown. ``device``: where the Lab runs the model (the card says the precision there)."""
    s = parse_side(side, what)
    spec = MODELS[s.model]
    pooling = f"EOS token {md(repr(spec.eos_token))}" if spec.pooling == "eos" else "mean of tokens"
    # the licence's terms linked where they ask for a notice (Gemma's weights: the Gemma Terms of Use)
    licence = f"[{md(spec.licence)}]({spec.licence_url})" if spec.licence_url else md(spec.licence)
    lines = [f"`{s.spec}`: **{md(spec.title)}** · {spec.params_m:g}M parameters · {licence} · pooling: {pooling}"
             + (f". {md(spec.notes)}" if spec.notes else ""), precision_line(spec, device)]
    rec = training_record(s)
    dev = None
    if s.adapter is None:
        lines.append("Base model, no adapter.")
        head = "Base model."
    elif not rec:
        lines.append(f"Adapter **{md(s.adapter)}** (no training record)")
        head = f"With adapter **{md(s.adapter)}**"
    else:
        dev = rec.dev if rec.dev is not None and math.isfinite(rec.dev) else None
        shown = lambda v: md("?" if v is None else v)  # noqa: E731
        lines.append(f"Adapter **{md(s.adapter)}**: trained on {shown(rec.device)}, "
                     f"{shown(rec.stat('steps'))} steps × {shown(rec.stat('effective_contrastive_batch'))} triplets, "
                     f"lr {shown(rec.setting('lr'))}" + (f", STS-B dev {dev:.1f}" if dev is not None else ""))
        head = f"With adapter **{md(s.adapter)}**"
    if s.step is not None:
        snap = next(x for x in rec.snapshots if x.step == s.step)
        figures = [f"{name} {v:.3f}" if name != "STS-B dev" else f"{name} {v:.1f}"
                   for name, v in (("loss", snap.loss), ("STS-B dev", snap.dev), ("random-pair cosine", snap.random_pair_cosine))
                   if v is not None]
        lines.append(f"Training snapshot at step **{s.step}**" + (f": {', '.join(figures)}" if figures else "")
                     + (" (step 0: the base model's vectors)" if s.weights is None else ""))
        head = f"With adapter **{md(s.adapter)}** at step **{s.step}**"
    # <details> around Markdown: blank lines inside keep the Markdown parsed (a phone shows the short line only)
    return f"{head}\n\n<details><summary>details</summary>\n\n" + "\n\n".join(lines) + "\n\n</details>"


def first_card(spec: str | None, what: str, device: str | None = "cpu") -> str:
    """A side's card shown when the page loads (a broken adapter there is a line on the page, not a failed start)."""
    if spec is None:
        return "no model can load here"
    try:
        return model_card(spec, what, device)
    except UserError as e:
        return f"Side problem: {md(e)}"


def unavailable_note() -> tuple[int, str]:
    """How many registry models cannot load here, and why, one Markdown line each."""
    rows = [f"- `{k}`: {md(why)}" for k, (ok, why) in available_models().items() if not ok]
    return len(rows), "\n".join(rows)


def unavailable() -> None:
    """The registry models that cannot load here, folded (on this machine it lists the Hub-only paper models);
    laid out below the tabs, so a phone's first screen keeps the first result."""
    n_out, why_out = unavailable_note()
    if n_out:
        with gr.Accordion(f"{n_out} more model{'s' if n_out > 1 else ''} in the registry cannot load here (why)",
                          open=False, elem_id="unavailable"):
            gr.Markdown(why_out)


def build(device: str | None = "cpu") -> tuple[gr.Dropdown, gr.Dropdown]:
    """Side A's and side B's pickers with their cards (default: the default model's base vs its shipped adapter);
    ``device``: the Lab's, for the precision the cards name."""
    choices = side_choices()
    try:
        a0, b0 = (s.spec for s in default_sides())
    except SideError:
        a0 = b0 = None
    with gr.Row(equal_height=False):
        # allow_custom_value: API callers may type any valid spec (the handlers validate it)
        # min_width: the two sides stay side by side on a phone (390 px), so the first result is on its first screen
        with gr.Column(min_width=150):
            side_a = gr.Dropdown(choices, value=a0, label="Side A", allow_custom_value=True, elem_id="side-a")
            card_a = gr.Markdown(first_card(a0, "side A", device), elem_classes="side-card")
        with gr.Column(min_width=150):
            side_b = gr.Dropdown(choices, value=b0, label="Side B", allow_custom_value=True, elem_id="side-b")
            card_b = gr.Markdown(first_card(b0, "side B", device), elem_classes="side-card")
    side_a.change(gradio_errors(lambda v: model_card(v, "side A", device)), [side_a], [card_a], api_name="model_card")
    side_b.change(gradio_errors(lambda v: model_card(v, "side B", device)), [side_b], [card_b], api_visibility="private")

    def sides_api() -> list[str]:
        """Every side spec that can be used here (model[+adapter][@step])."""
        return valid_specs()

    gr.api(sides_api, api_name="sides")
    return side_a, side_b
