"""embedlab: see what contrastive fine-tuning does to a small LM's sentence embeddings.

    python app.py        # http://127.0.0.1:7860  (Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Composes the tabs: each is a module of embedlab/features (its layout, handlers and computation) over one
shared Lab (embedlab/lab.py: the model pool and the caches).
"""
from __future__ import annotations

import logging
import os
import threading

# Kernels cached per input shape, read when torch first runs one (so set before anything imports torch): oneDNN's
# primitives and torch's own (ideep) cache, 1,024 entries each by default. Every new (batch, length) shape of a
# compare, an evaluation or a training step adds kernels and buffers, and they stayed: after bench/load.py --worst
# the app held 1,960 MiB of anonymous memory (911 at its start), 951 MiB with 16 of each (issue 20; docs/load.md).
# bench/shape_memory.py (58 new shapes): +45 MiB instead of +212, at 134-138 ms a batch against 130 ms when every
# shape is cached. A host may set either variable itself.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")

import gradio as gr  # noqa: E402

from embedlab import gradio_internals, warmup  # noqa: E402
from embedlab.compute import BACKGROUND_BATCH_S, configure_for_serving  # noqa: E402
from embedlab.corpora import BUILTINS  # noqa: E402
from embedlab.features import common, evaluate, export, howitworks, maps, pairs, replay, search, sides, status, train  # noqa: E402
from embedlab.lab import Lab  # noqa: E402
from embedlab.projection import layouts_in_a_process, release_if_grown, warm_up as warm_up_layouts  # noqa: E402
from embedlab.registry import DEFAULT_PAIR  # noqa: E402
from embedlab.side import valid_specs  # noqa: E402
from embedlab.sweep import gradio_folder, sweep_forever  # noqa: E402

CSS = """
.gradio-container {max-width: 1400px !important}
#status {font-size: 0.9em; opacity: 0.85}
/* side cards: one short line; the details fold */
.side-card details summary {cursor: pointer; opacity: 0.75; font-size: 0.9em}
/* tables (Gradio's dataframe: div[role=gridcell] with data-col, th[role=columnheader] with data-heading): words
   and numbers stay whole (a phone broke "medic ine", "0. 97 1"); headers wrap between words instead of being cut */
:is(#moved, .hits, .wide-table) :is([role=gridcell], [role=columnheader]),
:is(#moved, .hits, .wide-table) :is([role=gridcell], [role=columnheader]) * {word-break: normal !important; overflow-wrap: normal !important}
.wide-table :is([role=columnheader], [role=gridcell]), .wide-table :is([role=columnheader], [role=gridcell]) * {white-space: normal !important}
/* the pair's result: numbers whole, headers wrap between words */
#pair-out :is(td, th) {word-break: normal !important; overflow-wrap: normal !important}
#pair-out td:not(:first-child) {white-space: nowrap}
@media (max-width: 640px) {
  .intro-more, .wide-only {display: none !important}
  /* (Gradio scopes these rules to the page's content: ".gradio-container h1" matched nothing, "h1" does) */
  h1 {font-size: 1.5em !important; margin-top: 0 !important; margin-bottom: 0.2em !important}
  /* tighter gaps and padding: the first result ends ~740 px down an 844 px phone screen (822 px before) */
  .column, .row, .tabs, .tabitem, .form {--layout-gap: 8px !important; --block-padding: 6px 8px !important}
  #status {font-size: 0.8em}
  /* dropdowns in half-width columns (~150 px: the side pickers, the corpus): the value ends clear of the arrow (it
     ran under it), cut with an ellipsis; the side pickers' in a smaller font, so that "gemma3-270m…" shows whole */
  .wrap-inner:has(> .secondary-wrap) {padding-left: 8px !important; padding-right: 4px !important}
  .secondary-wrap .icon-wrap {right: 4px !important}
  .secondary-wrap input {text-overflow: ellipsis; padding-right: 18px !important}
  :is(#side-a, #side-b) input {font-size: 12px !important}
  /* at most two lines of it (a warm-up's or a corpus job's progress runs longer): the first result stays on the
     first screen whatever the line says */
  #status p {display: -webkit-box; -webkit-line-clamp: 2; line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden}
  #pair-out :is(td, th) {padding: 4px 6px !important}
  #pair-out td code {font-size: 0.85em; padding: 0 2px; word-break: break-all}
  /* fewer columns on a phone, the rest wide enough for whole words: What moved without "#" and "label", the
     search hits without "label" (the data stays: a What-moved row still finds its neighbours) */
  #moved :is([data-col="0"], [data-heading="0"], [data-col="2"], [data-heading="2"]),
  .hits :is([data-col="3"], [data-heading="3"]) {display: none !important}
  #moved :is([data-col="1"], [data-heading="1"]) {flex: 0 0 75% !important; width: 75% !important; min-width: 0 !important; max-width: none !important}
  #moved :is([data-col="3"], [data-heading="3"]) {flex: 0 0 25% !important; width: 25% !important; min-width: 0 !important; max-width: none !important}
  .hits :is([data-col="0"], [data-heading="0"]) {flex: 0 0 11% !important; width: 11% !important; min-width: 0 !important; max-width: none !important}
  .hits :is([data-col="1"], [data-heading="1"]) {flex: 0 0 19% !important; width: 19% !important; min-width: 0 !important; max-width: none !important}
  .hits :is([data-col="2"], [data-heading="2"]) {flex: 0 0 46% !important; width: 46% !important; min-width: 0 !important; max-width: none !important}
  .hits :is([data-col="4"], [data-heading="4"]) {flex: 0 0 22% !important; width: 22% !important; min-width: 0 !important; max-width: none !important}
  /* training records: adapter, steps, batch and the two scores (device, lr, temperature, LoRA, minutes, rate: wide only) */
  .records :is([data-col="1"], [data-heading="1"], [data-col="4"], [data-heading="4"], [data-col="5"], [data-heading="5"],
    [data-col="6"], [data-heading="6"], [data-col="7"], [data-heading="7"], [data-col="8"], [data-heading="8"]) {display: none !important}
  .records :is([data-col="0"], [data-heading="0"]) {flex: 0 0 34% !important; width: 34% !important; min-width: 0 !important; max-width: none !important}
  .records :is([data-col="2"], [data-heading="2"], [data-col="3"], [data-heading="3"], [data-col="9"], [data-heading="9"],
    [data-col="10"], [data-heading="10"]) {flex: 0 0 16.5% !important; width: 16.5% !important; min-width: 0 !important; max-width: none !important}
  /* Gradio sizes the rows from the columns' widths before the hidden ones go: the table as wide as the screen */
  .records .virtual-body, .records table.header-table {width: 100% !important}
  .records table.header-table {table-layout: fixed}
  .records :is([role=gridcell], [role=columnheader]), .records :is([role=gridcell], [role=columnheader]) * {font-size: 12px !important}
}
"""

MAX_FILE_SIZE = "4mb"  # uploads over this are refused before Gradio stores them (the app reads at most 2 MiB)
# Every 5 min, Gradio deletes the files it stored (uploads, downloads) older than 15 min; our own copies of the
# downloads (features.common.DOWNLOADS) go after the same age. EMBEDLAB_DELETE_CACHE="freq,age" (seconds) changes both.
DELETE_CACHE = tuple(int(x) for x in os.environ.get("EMBEDLAB_DELETE_CACHE", "300,900").split(",")[:2])
TABS = (pairs, maps, search, replay, train, evaluate, howitworks)  # each builds its tab: layout, handlers, wiring


def build(lab: Lab) -> gr.Blocks:
    common.DOWNLOAD_TTL_S = DELETE_CACHE[1]
    with gr.Blocks(title="embedlab", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# embedlab\nWhat a small language model's sentence embeddings look like **before** and **after** "
                    "contrastive fine-tuning with a LoRA adapter<span class='wide-only'> (arXiv 2408.00690)</span>.")
        # a phone leaves this out (the pickers list the sides): its first screen shows the first result
        base, tuned = DEFAULT_PAIR
        snap = next((s for s in valid_specs() if s.startswith(f"{tuned}@") and not s.endswith("@0")), f"{tuned}@50")
        gr.Markdown(f"Every view compares two sides: a model (`{base}`), a model with an adapter (`{tuned}`), a "
                    f"training snapshot (`{snap}`) or another model entirely (`minilm-l6`). "
                    "The buttons under the pair's result switch both sides to another model's pair.",
                    elem_classes="intro-more")
        side_a, side_b = sides.build(lab.device)
        status.build(lab, demo)  # the status line, with Cancel beside it while a corpus job runs
        # long requests: one of each kind at a time, a bounded and fair wait; maps: several at once (one in
        # memory returns at once; features.maps builds one uncached map at a time)
        ctx = common.Ctx(lab, demo, side_a, side_b, heavy=common.slot(demo, "heavy"), maps=common.slot(demo, "map", limit=4))
        with gr.Tabs():
            for tab in TABS:
                tab.build(ctx)
        export.build(ctx)  # below the tabs, folded: the command and, where the host allows it, a download
        sides.unavailable()
        pairs.api(ctx)
        pairs.on_first_visit(ctx)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lab = Lab()
    configure_for_serving(background_batch_s=BACKGROUND_BATCH_S if lab.device in (None, "cpu") else None,
                          threads=int(os.environ.get("EMBEDLAB_COMPUTE_THREADS", "0")) or None)
    # Gradio's upload/cache folder, this app's alone unless the host chose one: the sweep below deletes
    # every file in it older than DELETE_CACHE's age, like Gradio's delete_cache but thoroughly.
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_dir := gradio_folder())
    demo = build(lab)
    # The page is served at once while the caches build; EMBEDLAB_WARM_CORPORA limits what is built (tests, small hosts).
    corpora = [c for c in os.environ.get("EMBEDLAB_WARM_CORPORA", ",".join(BUILTINS)).split(",") if c in BUILTINS]
    demo.queue(default_concurrency_limit=2, max_size=64)
    gradio_internals.check(demo)  # refuses to start (a clear message) if this Gradio lacks an internal the app uses
    # maps, replays and live frames are laid out in a process of their own (embedlab.projection); its UMAP code
    # compiled at warm-up, which a first uncached map or live run would otherwise wait ~20 s for
    layouts_in_a_process()
    threading.Thread(target=warmup.warm, args=(lab,), daemon=True, name="warm-up",
                     kwargs={"corpora": corpora, "then": [("maps", warm_up_layouts)]}).start()
    # what delete_cache leaves (embedlab/sweep.py)
    threading.Thread(target=lab.release_idle_forever, kwargs={"also": [release_if_grown]}, daemon=True,
                     name="idle-release").start()
    sweep_forever(gradio_dir, *DELETE_CACHE, keep=lambda: gradio_internals.kept_files(demo))
    # Gradio keeps every session it has seen (a ~150 KB copy of the page config plus the last value
    # of each output, e.g. a map's plot JSON) until 10,000 sessions: on a public Space memory grew
    # ~0.8 MB per new visitor without end. Keep the most recently active ones only.
    # Address and port are Gradio's own: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets
    # 0.0.0.0:7860), else 127.0.0.1 and the first free port from 7860. Passing them here would override a Space's.
    demo.launch(state_session_capacity=int(os.environ.get("EMBEDLAB_MAX_SESSIONS", "200")),
                theme=gr.themes.Soft(primary_hue="blue"), css=CSS, show_error=True, max_file_size=MAX_FILE_SIZE)


if __name__ == "__main__":
    main()
