"""Train tab: contrastive LoRA fine-tuning started from the page and watched live (embedlab/live.py runs it).

The run's frames are drawn by the Training replay's figures (embedlab.replay.step_view over
:func:`embedlab.live.replay_of`); the run becomes a side, ``<model>+live-<id>``, added to this session's pickers.
API: ``/train`` (streams progress dicts, the last one holds the new side's ``spec``) and ``/stop_training``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from .. import live
from ..gradio_internals import client_address, client_gone_check, gate_api
from ..corpora import builtin
from ..lab import Lab
from ..replay import replay_corpus, step_view
from ..side import side_choices
from .common import (Choice, Ctx, Number, Upload, UserError, download_folder,
                     gradio_errors, md, optional_text, scrub, slot, text, user_facing)

DATA_CHOICES = [("Built-in NLI triplets (SNLI)", "nli"), ("My file (CSV, TSV or JSONL)", "file")]
POLL_S = 0.5  # how often a watcher looks for a new frame (and says it is still there)
MANAGER: live.Manager | None = None  # the app's one manager, made by build() (tests make their own)


def manager(lab: Lab | None = None) -> live.Manager:
    """The app's manager (made on the first call); with ``lab``, a run's step 0 comes from its cached base
    vectors of the built-in corpora (STSBenchmark's 10K sentences hold the dev pairs and the histogram's texts), and
    its frames are measured by its models."""
    global MANAGER
    if MANAGER is None:
        base = None
        if lab is not None:
            corpora = [builtin("stsb"), replay_corpus("topics")]

            def base(model: str, texts: list[str]):
                return lab.cached_base(model, texts, corpora)
        MANAGER = live.Manager(base_vectors=base, lab=lab)
    return MANAGER


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""


@user_facing
def start(mgr: live.Manager, session: str, model: Any, data: Any, upload: Any, preset: Any, steps: Any = None,
          batch_size: Any = None, lr: Any = None, lora_r: Any = None, temperature: Any = None, x: Any = "",
          y: Any = "", client: str | None = None) -> live.Run:
    """Validate the choices and queue the session's run (UserError saying what is wrong). ``client``: the
    caller's address (one unfinished run per address as well as per session)."""
    s = live.settings(preset if isinstance(preset, str) else "", model if isinstance(model, str) else None,
                      steps=steps, batch_size=batch_size, lr=lr, lora_r=lora_r, temperature=temperature)
    if data not in ("nli", "file"):
        raise UserError(f"data must be nli or file, not {str(data)[:40]!r}")
    path = None
    if data == "file":
        if isinstance(upload, dict) or not isinstance(upload, (str, Path)) or not str(upload):
            raise UserError("choose a file of triplets to upload (CSV, TSV or JSONL), or the built-in NLI data")
        path = Path(upload)
    # the Pairs tab's pair, drawn at every frame: optional, but checked like every text when given
    pair = tuple(text(v, what) if optional_text(v, what).strip() else ""
                 for v, what in ((x, "text A of the pair"), (y, "text B of the pair")))
    return mgr.submit(session, s, path, pair, client=client)


def progress(mgr: live.Manager, run: live.Run) -> dict:
    """What a run is doing now, for the API and the status line (no server paths)."""
    f = run.frame
    out = {"id": run.id, "spec": run.spec, "state": run.state, "queue_position": mgr.position(run),
           "step": f.step, "steps": f.steps, "loss": f.loss_curve[-1][1] if f.loss_curve else None,
           "dev": f.dev[-1][1] if f.dev else None, "dev_base": f.dev[0][1] if f.dev else None,
           "pair_cosine": f.pair[-1][1] if f.pair else None, "seconds": round(f.seconds, 1),
           "eta_seconds": None if f.eta_s is None else round(f.eta_s),
           "message": scrub(run.message),  # a DataError's or OSError's text may name a server path
           "data": run.data_note, "saved": run.saved}
    return out


def status_line(p: dict) -> str:
    """The status line above the plots: state, step, loss, dev, pair, ETA or queue position."""
    data = f"\n\nData: {md(p['data'])}." if p["data"] else ""  # the file's warnings (overlap, duplicates, cuts)
    if p["state"] == "queued":
        return f"Waiting: **{p['queue_position']}** in line (one run trains at a time on this host).{data}"
    parts = [f"**{p['state']}**"]
    if p["steps"]:
        parts.append(f"step **{p['step']}** of {p['steps']}")
    if p["loss"] is not None:
        parts.append(f"loss {p['loss']:.3f}")
    if p["dev"] is not None:
        parts.append(f"STS-B dev **{p['dev']:.1f}** (base {p['dev_base']:.1f}, {live.DEV_PAIRS} pairs)")
    if p["pair_cosine"] is not None:
        parts.append(f"the Pairs tab's pair: cosine {p['pair_cosine']:.3f}")
    if p["eta_seconds"] is not None and p["state"] == "training":
        parts.append(f"about {max(0, p['eta_seconds']) // 60}:{max(0, p['eta_seconds']) % 60:02d} left")
    line = " · ".join(parts)
    if p["message"]:
        line += f". {md(p['message'])}"
    line += data
    if p["saved"]:
        line += f"\n\nYour run is a side now: `{p['spec']}` (only this session lists it; anyone you give the spec can use it)."
    return line


def watch(mgr: live.Manager, session: str, run: live.Run, gone: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Progress dicts while ``run`` waits and trains: one at once, then one at every change; the last when it has
    finished. Each poll tells the manager the watcher is there; a watcher that stops iterating stops the run within
    HEARTBEAT_S, and one whose client has gone (``gone()``: Gradio's client_gone_check, a closed tab) stops it now."""
    seen = -1
    while True:
        if gone is not None and gone() and not run.finished:
            mgr.stop(session, run.id)
            return
        mgr.heartbeat(session, run.id)
        if run.frame.version != seen or run.finished:
            seen = run.frame.version
            yield progress(mgr, run)
            if run.finished:
                return
        run.finished_event.wait(POLL_S)


def session_choices(mgr: live.Manager, session: str) -> list[tuple[str, str]]:
    """The side pickers' choices for this session: everyone's, plus this session's finished runs and their frames."""
    own = []
    for run in mgr.runs(session):
        if run.state in ("done", "stopped") and run.folder.is_dir():
            own.append((f"{run.spec} — your live run", run.spec))
            own += [(f"{run.spec}@{s} — your live run, step {s}", f"{run.spec}@{s}") for s in run.frame.measured]
    return side_choices() + own


def download_copy(run: live.Run) -> str | None:
    """A copy of the run's zip under the app's download folder (Gradio serves files from there)."""
    src = run.zip_path()
    if not src.is_file():
        return None
    dst = download_folder("live") / src.name
    shutil.copyfile(src, dst)
    return str(dst)


def figures(run: live.Run) -> tuple[Any, Any, Any]:
    """(curves, histogram, map) of the run's latest frame, drawn by the Training replay's figures."""
    r = live.replay_of(run)
    if r is None:
        return None, None, None
    _, curves, hist, topics = step_view(r, len(r.steps) - 1)
    return curves, hist, topics if r.params["has_map"] else None


def build(ctx: Ctx) -> None:
    """The Train tab, its UI events and the /train and /stop_training endpoints."""
    mgr = manager(ctx.lab)
    on = live.enabled()
    with gr.Tab("Train") as tab:
        if not on:
            gr.Markdown("Live training is **disabled on this host** (`EMBEDLAB_LIVE_TRAINING=off`). Run "
                        "`python train.py` on your own machine instead (see the README).", elem_id="train-off")
        models = live.trainable_models()
        gr.Markdown("Fine-tune a model here and watch it learn: each step pulls each sentence towards its "
                    "entailment and away from the batch's other sentences (InfoNCE, LoRA). The run becomes a side "
                    "you can compare in every tab.", elem_classes="intro-more")
        with gr.Row():
            model = Choice(choices=[(m, m) for m in models], value=models[0] if models else None, label="Model",
                           what="model", min_width=200, elem_id="train-model", interactive=on)
            data = Choice(choices=DATA_CHOICES, value="nli", label="Data", what="data", min_width=200,
                          elem_id="train-data", interactive=on)
            preset = Choice(choices=[(p, p) for p in live.PRESETS], value=live.DEFAULT_PRESET, label="Preset",
                            what="preset", min_width=160, elem_id="train-preset", interactive=on)
        upload = Upload(label="Triplets file: anchor,positive[,negative] (or sent0,sent1[,hard_neg]); ≤ 2 MiB",
                        file_types=[".csv", ".tsv", ".jsonl"], visible=False, what="the triplets file",
                        elem_id="train-upload")
        caps, dflt = live.CAPS, live.PRESETS[live.DEFAULT_PRESET]
        with gr.Accordion("Advanced settings (preset Advanced)", open=False, elem_id="train-advanced"):
            with gr.Row():
                steps = Number(minimum=caps["steps"][0], maximum=caps["steps"][1], step=1, value=dflt["steps"],
                               label="Steps", what="steps", elem_id="train-steps")
                batch = Number(minimum=caps["batch_size"][0], maximum=caps["batch_size"][1], step=1,
                               value=dflt["batch_size"], label="Batch size (triplets)", what="batch size", elem_id="train-batch")
                lr = Number(minimum=caps["lr"][0], maximum=caps["lr"][1], step=1e-5, value=dflt["lr"],
                            label="Learning rate", what="learning rate", elem_id="train-lr")
                rank = Number(minimum=caps["lora_r"][0], maximum=caps["lora_r"][1], step=1, value=dflt["lora_r"],
                              label="LoRA rank", what="LoRA rank", elem_id="train-rank")
                temp = Number(minimum=caps["temperature"][0], maximum=caps["temperature"][1], step=0.01,
                              value=dflt["temperature"], label="Temperature", what="temperature", elem_id="train-temp")
        with gr.Row():
            train_btn = gr.Button("Train", variant="primary", elem_id="train-go", interactive=on and bool(models))
            stop_btn = gr.Button("Stop", elem_id="train-stop", interactive=on)
        status = gr.Markdown(elem_id="train-status")
        # shown once a run starts: before, four empty boxes filled a phone's screen below the button
        with gr.Column(visible=False, elem_id="train-results") as results:
            with gr.Row(equal_height=False):
                curves = gr.Plot(elem_id="train-curves")
                hist = gr.Plot(elem_id="train-hist")
            topics = gr.Plot(elem_id="train-map")
            download = gr.File(label="Download the run (adapter, model card, training.json, data)", elem_id="train-zip")

    data.change(lambda d: gr.update(visible=d == "file"), [data], [upload], api_visibility="private")
    inputs = [model, data, upload, preset, steps, batch, lr, rank, temp, ctx.parts["s1"], ctx.parts["s2"]]

    def train_ui(model_: Any, data_: Any, upload_: Any, preset_: Any, steps_: Any, batch_: Any, lr_: Any, rank_: Any,
                 temp_: Any, x: Any, y: Any, request: gr.Request):
        """The page's Train: redraws at every change; at the end the run joins this session's pickers."""
        session = _session(request)
        try:
            run = start(mgr, session, model_, data_, upload_, preset_, steps_, batch_, lr_, rank_, temp_, x, y,
                        client_address(request))
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        drawn, shown = None, gr.update(visible=True)
        for p in watch(mgr, session, run, client_gone_check()):
            measured = (len(run.frame.measured), len(run.frame.maps))
            if measured != drawn or p["state"] in ("done", "stopped", "failed"):
                c, h, t = figures(run)
                drawn = measured
                h, t = (h, t) if h is not None else (gr.skip(), gr.skip())
            else:  # loss only: the curves redraw, the histogram and the map stay
                c, h, t = figures(run)[0], gr.skip(), gr.skip()
            yield status_line(p), c if c is not None else gr.skip(), h, t, gr.skip(), gr.skip(), gr.skip(), shown
            shown = gr.skip()
        p = progress(mgr, run)
        if run.saved:  # a run stopped before its first step (or while waiting) saved nothing: no side
            choices = session_choices(mgr, session)
            yield (status_line(p), gr.skip(), gr.skip(), gr.skip(), download_copy(run),
                   gr.update(choices=choices), gr.update(choices=choices, value=run.spec), shown)
        else:
            yield status_line(p), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), shown

    # the fair-share gate of long requests (per session and per address) in front of the group; each run's
    # stream holds a worker while it waits in the manager's line, hence the group's limit
    gate = slot(ctx.demo, "train", limit=mgr.max_waiting + 2)
    train_btn.click(train_ui, inputs, [status, curves, hist, topics, download, ctx.side_a, ctx.side_b, results],
                    api_visibility="private", show_progress="minimal", **gate)

    def stop_training(request: gr.Request) -> str:
        """Stop this session's run: it saves the steps done so far, which stay a usable side."""
        run = gradio_errors(user_facing(lambda: mgr.stop(_session(request))))()
        if run is None:
            return "No run of this session is going."
        return run.message if run.finished else "Stopping: the steps done so far are saved."

    stop_btn.click(stop_training, None, [status], api_name="stop_training", concurrency_limit=None,
                   show_progress="hidden")

    def train(model: str = live.DEFAULT_MODEL, preset: str = live.DEFAULT_PRESET, steps: int | None = None,
              batch_size: int | None = None, lr: float | None = None, lora_r: int | None = None,
              temperature: float | None = None, text_a: str = "", text_b: str = "",
              request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Train on the built-in NLI triplets; streams progress dicts (state, queue_position, step, loss, dev,
        pair_cosine, eta_seconds); the last one's ``spec`` is the new side (``model+live-<id>``)."""
        session = _session(request)
        run = gradio_errors(start)(mgr, session, model, "nli", None, preset, steps, batch_size, lr, lora_r,
                                   temperature, text_a, text_b, client_address(request))
        last = None
        for last in watch(mgr, session, run, client_gone_check()):
            yield last
        if last is not None and last["state"] == "failed":
            raise gr.Error(md(last["message"]), print_exception=False)

    with tab:  # an endpoint inside the tab: gr.Tabs takes only tabs as its children
        api = gr.api(train, api_name="train", concurrency_limit=gate["concurrency_limit"],
                     concurrency_id=gate["concurrency_id"])
    gate_api(ctx.demo, api, gate["validator"])  # the endpoint's own event gets the group's gate, as the click has it
    mgr.sweep_forever()  # also when training is off: a previous process's runs still go after their time


__all__ = ["build", "start", "progress", "watch", "session_choices", "status_line", "manager"]
