"""Pairs tab: one pair's cosine under each side, a batch of pairs (optionally against the user's scores),
anisotropy (random-pair cosines), the ``/compare`` and ``/embed`` API, and what a first visitor sees."""
from __future__ import annotations

import random
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from .. import plots
from ..cache import corpus_sha256
from ..compute import BACKGROUND, urgent
from ..corpora import BUILTINS, Corpus, parse_pairs
from ..lab import Lab
from ..registry import MODELS
from ..side import Side, SideError, model_pairs
from ..sts import load_task, spearman100
from . import maps
from .common import (INTERACTIVE_AT_ONCE, USER_ERRORS, Ctx, Text, Upload, UserError, files, flag, gradio_errors, kind, md, names,
                     optional_text, record, sides, text, upload, user_facing)

MAX_EMBED_TEXTS = 256  # /embed, per call


# --- computation (numpy in, numpy out, over the shared lab) --------------------------------------------
def cosines(lab: Lab, a: Side, b: Side, x: str, y: str) -> dict:
    """Cosine of one pair of texts under side A and side B. Urgent: the cheapest request, and the one
    every visitor waits on (compute.urgent)."""
    with urgent():
        va, vb = lab.embed(a, b, [x, y])
    return {"a": float(va[0] @ va[1]), "b": float(vb[0] @ vb[1])}


def batch_cosines(lab: Lab, a: Side, b: Side, s1: list[str], s2: list[str], gold: list[float] | None) -> dict:
    """Cosines for many pairs under both sides; Spearman x100 against gold when given.

    Long work: its batches run at background priority, so single compares overtake them.
    """
    uniq = list(dict.fromkeys(s1 + s2))
    pos = {t: i for i, t in enumerate(uniq)}
    with lab.hold(a, b) as (ra, rb):
        va, vb = lab.texts(ra, rb, uniq, priority=BACKGROUND)
    i1, i2 = [pos[t] for t in s1], [pos[t] for t in s2]
    ca, cb = np.einsum("ij,ij->i", va[i1], va[i2]), np.einsum("ij,ij->i", vb[i1], vb[i2])
    out = {"s1": s1, "s2": s2, "gold": gold, "a": ca.tolist(), "b": cb.tolist()}
    if gold is not None and len(gold) >= 3:
        out["spearman_a"] = spearman100(ca, np.asarray(gold))
        out["spearman_b"] = spearman100(cb, np.asarray(gold))
    return out


def anisotropy_corpus(seed: int = 0) -> Corpus:
    """The STSBenchmark sentences whose random pairs the anisotropy view scores, as a corpus (cache key)."""
    from ..evaluation import anisotropy_texts

    texts = anisotropy_texts(seed)
    return Corpus("anisotropy sample", texts, ("stsb",) * len(texts), "")


def anisotropy_cosines(lab: Lab, a: Side, b: Side, n_pairs: int = 2000, seed: int = 0, wait: bool = False) -> dict:
    """Cosines of random sentence pairs from the STSBenchmark corpus under both sides.

    A useful embedding spreads unrelated sentences apart; a raw LM puts almost
    every pair near the same high cosine (its vectors share one dominant direction).
    """
    from ..evaluation import random_pair_cosines

    va, vb = lab.corpus_vectors(a, b, anisotropy_corpus(seed), wait=wait)
    ca = random_pair_cosines(va, n_pairs, seed)
    return {"a": ca, "b": random_pair_cosines(vb, n_pairs, seed), "n_pairs": len(ca)}


def cached_random_pairs(lab: Lab, a: Side, b: Side) -> dict | None:
    """:func:`anisotropy_cosines` from the embedding cache only: None when either side's vectors of the
    anisotropy sample are not cached yet (the default sides' are shipped in assets/cache). Never embeds, so a
    first visit and every compare cost no model time for it."""
    from ..evaluation import random_pair_cosines

    c = anisotropy_corpus(0)
    with lab.hold(a, b) as (ra, rb):
        va = lab.embeddings.peek(ra.enc, c.texts, ra.adapter, sha=c.sha256)
        vb = None if va is None else lab.embeddings.peek(rb.enc, c.texts, rb.adapter, sha=c.sha256)
    if vb is None:
        return None
    ca = random_pair_cosines(va, 2000, 0)
    return {"a": ca, "b": random_pair_cosines(vb, 2000, 0), "n_pairs": len(ca)}


def unrelated_means(lab: Lab, a: Side, b: Side) -> tuple[float | None, float | None]:
    """Each side's mean cosine of random unrelated STSBenchmark pairs (what the page's pair is read against),
    from the cache only; (None, None) when not measured yet for these sides."""
    r = cached_random_pairs(lab, a, b)
    return (None, None) if r is None else (float(r["a"].mean()), float(r["b"].mean()))


# --- handlers ---------------------------------------------------------------------------------------
@user_facing
def compare_api(lab: Lab, side_a: Any, side_b: Any, text_a: Any, text_b: Any) -> dict:
    """API: the cosine of one pair of texts under each side, with the sides' specs, and each side's mean
    cosine of random unrelated pairs (``unrelated_a``/``unrelated_b``; None when not cached for that side yet)."""
    a, b = sides(side_a, side_b)
    r = cosines(lab, a, b, text(text_a, "text A"), text(text_b, "text B"))
    ua, ub = unrelated_means(lab, a, b)
    return {"side_a": a.spec, "side_b": b.spec, "cosine_a": round(r["a"], 6), "cosine_b": round(r["b"], 6),
            "unrelated_a": None if ua is None else round(ua, 6), "unrelated_b": None if ub is None else round(ub, 6)}


# One sentence under every compare: what the numbers mean (the first thing a visitor sees).
PAIR_MEANING = ("A cosine (1 = same direction) means something only next to what unrelated sentences get under the "
                "same side: a raw LM's cosines barely follow meaning (unrelated pairs often score as high as related "
                "ones), a contrastively tuned one keeps high scores for pairs that mean the same thing, so the effect "
                "is the **gap**, not the number.")
NOT_MEASURED = ("— : not measured for this side yet; *Anisotropy* below measures it.")


def pair_table(a: Side, b: Side, r: dict, unrelated: tuple[float | None, float | None]) -> str:
    """The compare result: each side's cosine of the pair beside its cosine of unrelated pairs, and the gap."""
    rows = []
    for name, side, cos, un in (("A", a, r["a"], unrelated[0]), ("B", b, r["b"], unrelated[1])):
        rows.append(f"| {name} · `{side.spec}` | **{cos:.3f}** | "
                    + (f"{un:.2f} | {cos - un:+.2f} |" if un is not None else "— | — |"))
    return ("| side | this pair | unrelated pairs | gap |\n|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\n{PAIR_MEANING}" + ("" if None not in unrelated else f" {NOT_MEASURED}"))


@user_facing
def compare(lab: Lab, side_a: Any, side_b: Any, x: Any, y: Any) -> str:
    a, b = sides(side_a, side_b)
    r = cosines(lab, a, b, text(x, "sentence A"), text(y, "sentence B"))
    return pair_table(a, b, r, unrelated_means(lab, a, b))


@user_facing
def sts_example(seed: Any = None) -> tuple[str, str, str]:
    t = load_task("STSBenchmark")
    i = random.Random(seed).randrange(len(t))
    return t.s1[i], t.s2[i], f"Human similarity score: **{t.gold[i]:.2f} / 5** (STSBenchmark test, {t.subset[i]})"


@user_facing
def batch_pairs(lab: Lab, side_a: Any, side_b: Any, text: str | None, file: str | None):  # noqa: F811  (API names)
    """Cosines of many pairs (at most MAX_PAIRS, MAX_PAIR_CHARS characters); long work: background priority."""
    text = optional_text(text, "the pairs")
    if file:
        data = upload(file)[0]
    elif text.strip():
        data = text
    else:
        raise UserError("paste pairs (one per line: sentence A <TAB> sentence B [<TAB> score]) or upload a file")
    a, b = sides(side_a, side_b)
    s1, s2, gold = parse_pairs(data)
    r = batch_cosines(lab, a, b, s1, s2, gold)
    na, nb = names(a, b)
    rows = [{"sentence A": x, "sentence B": y, "gold": g, f"cos {na}": round(ca, 4), f"cos {nb}": round(cb, 4)}
            for x, y, g, ca, cb in zip(s1, s2, gold or [None] * len(s1), r["a"], r["b"])]
    summary = f"{len(s1)} pairs."
    fig = None
    if gold is not None and "spearman_a" in r:
        summary += (f" Spearman ×100 vs your scores: A `{a.spec}` **{r['spearman_a']:.1f}**,"
                    f" B `{b.spec}` **{r['spearman_b']:.1f}**")
        fig = plots.scatter_vs_gold(gold, {na: (r["a"], r["spearman_a"]), nb: (r["b"], r["spearman_b"])})
    out = files("pairs", rows, record(a, b, pairs_sha256=corpus_sha256(s1 + s2)))
    return pd.DataFrame(rows), fig, summary, out


def anisotropy_view(a: Side, b: Side, r: dict) -> tuple[str, Any]:
    """The anisotropy section's note and histogram of :func:`anisotropy_cosines`' result ``r``."""
    na, nb = names(a, b)
    msg = (f"Mean cosine of {r['n_pairs']:,} random STSBenchmark sentence pairs: A `{a.spec}` **{r['a'].mean():.3f}**, "
           f"B `{b.spec}` **{r['b'].mean():.3f}**. Unrelated sentences should score low; a raw LM scores almost every pair the same.")
    return msg, plots.cosine_histogram({na: r["a"], nb: r["b"]}, "Random-pair cosines (anisotropy)")


@user_facing
def anisotropy(lab: Lab, side_a: Any, side_b: Any):
    a, b = sides(side_a, side_b)
    return anisotropy_view(a, b, anisotropy_cosines(lab, a, b))


@user_facing
def embed_api(lab: Lab, side_a: Any, side_b: Any, texts: Any, both: Any = True) -> dict:
    """API: embeddings of ``texts`` (at most MAX_EMBED_TEXTS) as lists of floats under side A and (``both``) side B."""
    if not isinstance(texts, list) or not texts:
        raise UserError(f"texts must be a non-empty list of strings, not "
                        f"{kind(texts) if texts != [] else 'an empty list'}")
    if len(texts) > MAX_EMBED_TEXTS:
        raise UserError(f"{len(texts)} texts; the API embeds at most {MAX_EMBED_TEXTS} per call")
    both = flag(both, "both")
    a, b = sides(side_a, side_b)
    texts = [text(t, f"text {i + 1}", 20_000) for i, t in enumerate(texts)]
    va, vb = lab.embed_bounded(a, b if both else a, texts)  # total characters and tokens capped
    return {"side_a": a.spec, "side_b": b.spec if both else None, "dim_a": int(va.shape[1]),
            "dim_b": int(vb.shape[1]) if both else None,
            "a": va.round(6).tolist(), "b": vb.round(6).tolist() if both else None}


@user_facing
def first_visit(lab: Lab, side_a: Any, side_b: Any, x: Any, y: Any, corpus_name: Any) -> tuple:
    """What a visitor sees before clicking anything: the page's pair compared (beside unrelated pairs), the
    anisotropy histogram and the map of ``corpus_name`` when they are cached (the default sides' are:
    assets/cache). Outputs of :func:`compare`, :func:`anisotropy` then :func:`maps.draw_map`; a part that
    fails or is not cached leaves a line instead (the histogram stays hidden), never an error."""
    try:
        pair = compare(lab, side_a, side_b, x, y)
    except UserError as e:
        pair = f"Press **Compare** to compare the pair ({md(e)})"
    aniso: tuple = ("", gr.update(visible=False))
    try:
        a, b = sides(side_a, side_b)
        if (r := cached_random_pairs(lab, a, b)) is not None:
            msg, fig = anisotropy_view(a, b, r)
            aniso = (msg, gr.update(value=fig, visible=True))
    except (UserError, *USER_ERRORS):  # the histogram is a bonus here: never a failed first visit
        pass
    empty = (None, None, "Press **Draw the maps** to draw them.", None, None)
    try:
        if not isinstance(corpus_name, str) or corpus_name not in BUILTINS:
            return (pair, *aniso, *empty)
        if not maps.cached(lab, *sides(side_a, side_b), maps.builtin(corpus_name)):
            return (pair, *aniso, *empty)
        return (pair, *aniso, *maps.draw_map(lab, side_a, side_b, corpus_name, None, None, downloads=False))
    except UserError:
        return (pair, *aniso, *empty)


# --- layout and wiring ----------------------------------------------------------------------------
def build(ctx: Ctx) -> None:
    """The Pairs tab (inside a gr.Tabs); shares its two sentences (``s1``, ``s2``) and its result (``pair_out``)."""
    with gr.Tab("Pairs"):
        with gr.Row():
            s1 = Text(label="Sentence A", value="A man is playing a guitar.", max_lines=4, what="sentence A")
            s2 = Text(label="Sentence B", value="A person plays an instrument.", max_lines=4, what="sentence B")
        with gr.Row():  # side by side on a phone too
            go_pair = gr.Button("Compare", variant="primary", min_width=100)
            ex = gr.Button("STSBenchmark example", min_width=160)
        gold_note = gr.Markdown()
        pair_out = gr.Markdown(elem_id="pair-out")
        # every model's base vs its adapter, one click each (the default pair first): below the result, so a
        # phone's first screen still ends with it
        try:
            choices = model_pairs()
        except SideError:
            choices = []
        switches = []
        if len(choices) > 1:
            with gr.Row(elem_id="pair-switch"):
                for a, b in choices:
                    label = f"{MODELS[a.model].title.split(' (')[0]}: base vs tuned"
                    switches.append((gr.Button(label, size="sm", min_width=120, elem_id=f"pair-{a.model}"), a.spec, b.spec))
        with gr.Accordion("Batch: many pairs, optionally with your scores", open=False):
            batch_text = Text(label="One pair per line: sentence A <TAB> sentence B [<TAB> score]", lines=5,
                              what="the pairs")
            batch_file = Upload(label="…or upload a .tsv/.txt/.csv (s1,s2[,gold])",
                                             file_types=[".tsv", ".txt", ".csv"], type="filepath", what="the pair file")
            go_batch = gr.Button("Score pairs")
            batch_note = gr.Markdown()
            batch_plot = gr.Plot()
            batch_df = gr.Dataframe(interactive=False, wrap=True)
            batch_files = gr.File(label="Download (CSV + reproducibility JSON)", file_count="multiple")
        with gr.Accordion("Anisotropy: are all sentences alike?", open=True):
            go_aniso = gr.Button("Measure random-pair cosines")
            aniso_note = gr.Markdown(elem_id="aniso-note")
            # hidden until drawn (the first visit draws it from the cache): no large empty frame
            aniso_plot = gr.Plot(visible=False, elem_id="aniso-plot")
    ctx.parts.update(s1=s1, s2=s2, pair_out=pair_out, aniso_outputs=[aniso_note, aniso_plot], pair_switches=switches)
    h = ctx.h
    go_pair.click(h(compare), [*ctx.sides, s1, s2], [pair_out], api_name="pairs", concurrency_limit=INTERACTIVE_AT_ONCE)
    # An example replaces the pair: the previous pair's numbers go at once (in the browser), the example's human
    # score shows, and the example is compared at once. Editing a sentence drops the example's score.
    ex.click(None, None, [pair_out], js="() => ''", api_visibility="private")
    ex.click(gradio_errors(lambda: sts_example()), None, [s1, s2, gold_note], api_name="example").success(
        h(compare), [*ctx.sides, s1, s2], [pair_out], api_visibility="private", concurrency_limit=INTERACTIVE_AT_ONCE)
    for box in (s1, s2):
        box.input(lambda: "", None, [gold_note], api_visibility="private", show_progress="hidden", queue=False)
    go_batch.click(h(batch_pairs), [*ctx.sides, batch_text, batch_file],
                   [batch_df, batch_plot, batch_note, batch_files], api_name="batch_pairs", **ctx.heavy)
    def measure(lab_: Lab, a: Any, b: Any) -> tuple[str, Any]:  # the plot shows once it has a figure
        msg, fig = anisotropy(lab_, a, b)
        return msg, gr.update(value=fig, visible=True)

    go_aniso.click(h(measure), ctx.sides, [aniso_note, aniso_plot], api_name="anisotropy", **ctx.heavy)


def api(ctx: Ctx) -> None:
    """The function-only endpoints ``/compare`` and ``/embed``."""
    lab = ctx.lab

    def compare(side_a: str, side_b: str, text_a: str, text_b: str) -> dict:
        """The cosine of one pair of texts under each side: {side_a, side_b, cosine_a, cosine_b,
        unrelated_a, unrelated_b} (each side's mean cosine of unrelated pairs, None when not cached)."""
        return compare_api(lab, side_a, side_b, text_a, text_b)

    gr.api(gradio_errors(compare), api_name="compare", concurrency_limit=INTERACTIVE_AT_ONCE)

    def embed(side_a: str, side_b: str, texts: list[str], both: bool = True) -> dict:
        """Embeddings of up to 256 texts under side A and (both) side B, as lists of floats."""
        return embed_api(lab, side_a, side_b, texts, both)

    # like pairs/search: its batches share the compute thread
    gr.api(gradio_errors(embed), api_name="embed", concurrency_limit=INTERACTIVE_AT_ONCE)


def on_first_visit(ctx: Ctx) -> None:
    """A first visitor sees the effect before clicking: the page's pair compared, the topics map drawn from the cache;
    each model's pair button shows the same for that model."""
    p = ctx.parts
    inputs, outputs = [*ctx.sides, p["s1"], p["s2"], p["map_corpus"]], [p["pair_out"], *p["aniso_outputs"], *p["map_outputs"]]
    ctx.demo.load(ctx.h(first_visit), inputs, outputs, api_visibility="private",
                  concurrency_limit=INTERACTIVE_AT_ONCE, concurrency_id="first_visit")
    # a model's pair in one click: both pickers set (their cards follow), then the same view as a first visit
    for button, a, b in p["pair_switches"]:
        button.click(lambda a=a, b=b: (a, b), None, ctx.sides, api_visibility="private", queue=False).then(
            ctx.h(first_visit), inputs, outputs, api_visibility="private", concurrency_limit=INTERACTIVE_AT_ONCE,
            concurrency_id="first_visit")
