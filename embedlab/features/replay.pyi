"""Training replay tab: scrub through an adapter's training snapshots (precomputed by embedlab/replay.py)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..lab import Lab
from ..registry import MODELS
from ..replay import REPLAY_CORPORA, ReplayUnavailable, load_replay, replay_corpus, step_view
from ..side import Side, parse_side
from .common import (INTERACTIVE_AT_ONCE, USER_ERRORS, Choice, Ctx, UserError, scrub, short, sides, text, user_facing,
                     whole)
from .pairs import cosines


def _replay(side_a: Any, side_b: Any, corpus_name: Any):
    """(the side whose adapter is replayed, its precomputed replay on a built-in corpus): side B's adapter,
    else side A's (validated like every view's inputs)."""
    a, b = sides(side_a, side_b)
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
        r = cosines(lab, at, at, text(x, "sentence A"), text(y, "sentence B"))
    except (UserError, *USER_ERRORS):
        return ""
    return f"\n\nThe Pairs tab's two sentences at step {step}: cosine **{r['a']:.3f}**."


def replay_steps(lab: Lab, side_a: Any, side_b: Any) -> list[int]:
    """The snapshot steps the replay of the sides' adapter has ([] if none is precomputed): the slider's range."""
    try:
        return [*_replay(side_a, side_b, "topics")[1].steps]
    except (ReplayUnavailable, UserError, *USER_ERRORS):
        return []


@user_facing
def replay_open(lab: Lab, side_a: Any, side_b: Any, corpus_name: Any, x: Any = None,
                y: Any = None) -> tuple[list[int], str, Any, Any, Any]:
    """(snapshot steps, note, curves, anisotropy, maps) at the last step; steps [] and a note saying why
    when the adapter has no replay (no snapshots, or none precomputed here)."""
    try:
        s, r = _replay(side_a, side_b, corpus_name)
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
    s, r = _replay(side_a, side_b, corpus_name)
    i = whole(index, "snapshot", 0, len(r.steps) - 1)
    note, *figs = step_view(r, i)
    return note + _pair_at(lab, s, int(r.steps[i]), x, y), *figs


def _choices(steps: list[int]) -> list[tuple[str, int]]:
    """The snapshot picker's choices: each shows its training step; its value is the snapshot's index (the
    ``/replay`` API's input, as when it was a slider over indices)."""
    return [(str(step), i) for i, step in enumerate(steps)]


def _label(steps: list[int]) -> str:
    return "Training step (0 = the base model)" if steps else "Training step (no snapshots)"

from gradio.events import Dependency

class Steps(gr.Radio):
    """The snapshot picker: refuses a value that is not a snapshot's index with our message (Gradio's lists
    its internals)."""

    def preprocess(self, payload: Any) -> Any:
        values = [v for _, v in self.choices]
        if isinstance(payload, bool) or payload not in values:
            raise gr.Error(f"snapshot must be a snapshot's number from 0 to {len(values) - 1}, not {short(payload)}",
                           print_exception=False)
        return super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


# "Is the tab on screen?" read in the browser when a trigger fires: plots drawn in a hidden tab come out
# mis-sized (plotly measures a 0-width box), so the tab draws only while shown, and a tab opened later draws then.
SHOWN_JS = """async (...args) => {
  await new Promise((r) => setTimeout(r, 0));
  const el = document.querySelector('#replay-note');
  args[0] = !!el && el.checkVisibility();
  return args;
}"""


def build(ctx: Ctx) -> None:
    """The Training replay tab: follows the sides (side B's adapter, else side A's) and the Pairs tab's sentences."""
    a0, b0 = ctx.side_a.value, ctx.side_b.value
    with gr.Tab("Training replay") as replay_tab:
        gr.Markdown("Scrub through training: the adapter as it was after each saved step (0 = the base model). "
                    "The maps of the same texts are aligned step to step, so points move as training moves them.")
        with gr.Row():
            corpus = Choice(choices=[(v, k) for k, v in REPLAY_CORPORA.items()], value="topics", label="Corpus", scale=1,
                            min_width=220, elem_id="replay-corpus", what="corpus")
            # the choices are set here too: Gradio checks an API call's value against the component's own
            steps0 = replay_steps(ctx.lab, a0, b0) if a0 else []
            step = Steps(choices=_choices(steps0) or [("0", 0)], value=max(0, len(steps0) - 1), label=_label(steps0),
                         scale=3, min_width=300, interactive=bool(steps0), elem_id="replay-step")
        note = gr.Markdown(elem_id="replay-note")
        with gr.Row(equal_height=False):
            curves = gr.Plot(elem_id="replay-curves")
            hist = gr.Plot(elem_id="replay-hist")
        replay_map = gr.Plot(elem_id="replay-map")
        shown = gr.Checkbox(False, visible=False)  # set by SHOWN_JS when a trigger fires
        drawn = gr.State(None)  # the inputs the tab was last drawn for

    def on_open(lab_, is_shown, a, b, c, x, y, last):
        """One update per change the visitor can see: nothing while the tab is hidden (the tab's own select draws
        it then), nothing when the inputs are those already drawn (a side changed, then the tab opened)."""
        key = [a, b, c, x, y]
        if not is_shown or key == last:
            return (gr.skip(),) * 6
        steps, *view = replay_open(lab_, a, b, c, x, y)
        if not steps:
            return gr.update(interactive=False, choices=_choices([0]), value=0, label=_label([])), *view, key
        return (gr.update(interactive=True, choices=_choices(steps), value=len(steps) - 1, label=_label(steps)),
                *view, key)

    outputs = [note, curves, hist, replay_map]
    inputs = [*ctx.sides, corpus, ctx.parts["s1"], ctx.parts["s2"]]
    gr.on([replay_tab.select, ctx.side_a.change, ctx.side_b.change, corpus.input], ctx.h(on_open),
          [shown, *inputs, drawn], [step, *outputs, drawn], js=SHOWN_JS, api_visibility="private",
          concurrency_limit=INTERACTIVE_AT_ONCE, concurrency_id="replay")
    step.input(ctx.h(replay_step), [*inputs, step], outputs, api_name="replay", trigger_mode="always_last",
               concurrency_limit=INTERACTIVE_AT_ONCE, concurrency_id="replay", show_progress="hidden")