"""embedlab: see what contrastive fine-tuning does to a small LM's sentence embeddings.

    python app.py        # http://127.0.0.1:7860  (Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Layout and wiring only; the handlers are in embedlab/views.py, the work in embedlab/lab.py.
"""
from __future__ import annotations

import functools
import logging
import os
import threading

import gradio as gr
import pandas as pd

from embedlab import ROOT, views
from embedlab.compute import configure_for_serving, stop_when
from embedlab.corpora import BUILTINS
from embedlab.lab import Lab
from embedlab.replay import REPLAY_CORPORA
from embedlab.side import SideError, default_sides, valid_specs
from embedlab.sweep import gradio_folder, sweep_forever
from embedlab.sts import TASKS

HOW_IT_WORKS = (ROOT / "docs" / "how_it_works.md").read_text(encoding="utf-8")
CSS = """
.gradio-container {max-width: 1400px !important}
#status {font-size: 0.9em; opacity: 0.85}
"""


# Compares, searches and embeds in flight at once: their forward passes are short and run one at a time on the
# compute thread, where those queued together share one pass (compute.run_rows), so more in flight is more sharing.
INTERACTIVE_AT_ONCE = 16
HEAVY_WAITING = 8  # long requests of one kind (maps; batch pairs, anisotropy, evaluation) queued behind the running one
MAX_FILE_SIZE = "4mb"  # uploads over this are refused before Gradio stores them (the app reads at most 2 MiB)
# Every 5 min, Gradio deletes the files it stored (uploads, downloads) older than 15 min; our own copies of the
# downloads (views.DOWNLOADS) go after the same age. EMBEDLAB_DELETE_CACHE="freq,age" (seconds) changes both.
DELETE_CACHE = tuple(int(x) for x in os.environ.get("EMBEDLAB_DELETE_CACHE", "300,900").split(",")[:2])


def client_gone_check():
    """A test, for the running Gradio event, of whether its client has gone: Gradio marks the event dead
    (``alive = False``) when its client's stream disconnects, and forgets it when it is cancelled."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:  # called outside a queued event (tests, the API's direct route)
        return None

    def gone() -> bool:
        event = queue.event_ids_to_events.get(event_id)
        return event is None or not event.alive

    return gone


def gradio_errors(fn):
    """UserError -> gr.Error: the user sees the message, never a stack trace. Work the handler queues on
    the compute thread stops (between batches) once its client has gone."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            with stop_when(client_gone_check()):
                return fn(*a, **k)
        except views.UserError as e:
            raise gr.Error(str(e), print_exception=False) from None

    return wrapper


def first_card(spec: str | None, what: str) -> str:
    """A side's card shown when the page loads (a broken adapter there is a line on the page, not a failed start)."""
    if spec is None:
        return "no model can load here"
    try:
        return views.model_card(spec, what)
    except views.UserError as e:
        return f"Side problem: {views.md(e)}"


def build(lab: Lab) -> gr.Blocks:
    h = lambda f: gradio_errors(functools.partial(f, lab))  # noqa: E731  handler bound to the shared lab
    choices = views.side_menu()
    try:  # default: the default model's base vs the same model with its shipped adapter
        a0, b0 = (s.spec for s in default_sides())
    except SideError:
        a0 = b0 = None

    views.DOWNLOAD_TTL_S = DELETE_CACHE[1]
    with gr.Blocks(title="embedlab", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# embedlab\nWhat a small language model's sentence embeddings look like **before** and **after** "
                    "contrastive fine-tuning with a LoRA adapter (arXiv 2408.00690). Every view compares two sides: "
                    "a model (`smollm2-135m`), a model with an adapter (`smollm2-135m+nli-cft`), a training snapshot "
                    "(`smollm2-135m+nli-cft@50`) or another model entirely (`minilm-l6`).")
        with gr.Row(equal_height=False):
            # allow_custom_value: API callers may type any valid spec (the handlers validate it)
            with gr.Column():
                side_a = gr.Dropdown(choices, value=a0, label="Side A", allow_custom_value=True, elem_id="side-a")
                card_a = gr.Markdown(first_card(a0, "side A"))
            with gr.Column():
                side_b = gr.Dropdown(choices, value=b0, label="Side B", allow_custom_value=True, elem_id="side-b")
                card_b = gr.Markdown(first_card(b0, "side B"))
        n_out, why_out = views.unavailable_note()
        if n_out:  # closed: on this machine it lists the Hub-only paper models, which would fill the top of every page
            with gr.Accordion(f"{n_out} more model{'s' if n_out > 1 else ''} in the registry cannot load here (why)",
                              open=False, elem_id="unavailable"):
                gr.Markdown(why_out)
        status = gr.Markdown(elem_id="status")
        # Per-user data lives in the session; dropped an hour after it was last set so abandoned sessions
        # (API clients never say goodbye) do not pile up.
        upload_state = gr.State(None, time_to_live=3600)
        map_state = gr.State(None, time_to_live=3600)

        with gr.Tabs():
            with gr.Tab("Pairs"):
                with gr.Row():
                    s1 = gr.Textbox(label="Sentence A", value="A man is playing a guitar.", max_lines=4)
                    s2 = gr.Textbox(label="Sentence B", value="A person plays an instrument.", max_lines=4)
                with gr.Row():
                    go_pair = gr.Button("Compare", variant="primary")
                    ex = gr.Button("Load an STSBenchmark example")
                gold_note = gr.Markdown()
                pair_out = gr.Markdown()
                with gr.Accordion("Batch: many pairs, optionally with your scores", open=False):
                    batch_text = gr.Textbox(label="One pair per line: sentence A <TAB> sentence B [<TAB> score]", lines=5)
                    batch_file = gr.File(label="…or upload a .tsv/.txt/.csv (s1,s2[,gold])", file_types=[".tsv", ".txt", ".csv"], type="filepath")
                    go_batch = gr.Button("Score pairs")
                    batch_note = gr.Markdown()
                    batch_plot = gr.Plot()
                    batch_df = gr.Dataframe(interactive=False, wrap=True)
                    batch_files = gr.File(label="Download (CSV + reproducibility JSON)", file_count="multiple")
                with gr.Accordion("Anisotropy: are all sentences alike?", open=True):
                    go_aniso = gr.Button("Measure random-pair cosines")
                    aniso_note = gr.Markdown()
                    aniso_plot = gr.Plot()

            with gr.Tab("Map"):
                with gr.Row():
                    map_corpus = gr.Dropdown([(v, k) for k, v in BUILTINS.items()] + [("your upload", "upload")],
                                             value="topics", label="Corpus")
                    map_upload = gr.File(label="Upload a corpus (.txt one per line, or .csv with text[,label])",
                                         file_types=[".txt", ".csv"], type="filepath")
                    map_queries = gr.Textbox(label="Place your own sentences (one per line)", lines=2)
                upload_note = gr.Markdown()
                go_map = gr.Button("Draw the maps", variant="primary")
                map_note = gr.Markdown()
                map_plot = gr.Plot(elem_id="map-plot")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        moved = gr.Dataframe(label="What moved: texts whose 10 nearest neighbours differ most "
                                             "between A and B (kept = Jaccard overlap of their neighbours)",
                                             interactive=False, wrap=True, column_widths=["8%", "62%", "18%", "12%"],
                                             elem_id="moved")
                    with gr.Column(scale=2):
                        moved_detail = gr.Markdown("Click a row to see its neighbours under A and under B.")
                map_files = gr.File(label="Download (CSV + reproducibility JSON)", file_count="multiple")

            with gr.Tab("Search"):
                with gr.Row():
                    search_corpus = gr.Dropdown([(v, k) for k, v in BUILTINS.items()] + [("your upload (Map tab)", "upload")],
                                                value="stsb", label="Corpus")
                    query = gr.Textbox(label="Query", value="A dog runs through the snow.", scale=3)
                    k = gr.Slider(1, 50, value=10, step=1, label="k")
                go_search = gr.Button("Search", variant="primary")
                search_note = gr.Markdown()
                with gr.Row():
                    widths = ["8%", "12%", "52%", "14%", "14%"]
                    res_base = gr.Dataframe(label="Side A", interactive=False, wrap=True, column_widths=widths)
                    res_tuned = gr.Dataframe(label="Side B", interactive=False, wrap=True, column_widths=widths)
                search_files = gr.File(label="Download (CSV + reproducibility JSON)", file_count="multiple")

            # --- Training replay: the adapter's training snapshots, precomputed (embedlab/replay.py) ---
            with gr.Tab("Training replay") as replay_tab:
                gr.Markdown("Scrub through training: the adapter as it was after each saved step (0 = the base model). "
                            "The maps of the same texts are aligned step to step, so points move as training moves them.")
                with gr.Row():
                    replay_corpus = gr.Dropdown([(v, k) for k, v in REPLAY_CORPORA.items()], value="topics",
                                                label="Corpus", scale=1, min_width=220, elem_id="replay-corpus")
                    # the range is set here too: Gradio checks an API call's value against the slider's own
                    steps0 = views.replay_steps(lab, a0, b0) if a0 else []

                    def replay_label(steps):
                        return f"Snapshot (0–{len(steps) - 1}): steps " + " · ".join(map(str, steps)) if steps else "Snapshot (none)"

                    replay_slider = gr.Slider(0, max(1, len(steps0) - 1), value=max(0, len(steps0) - 1), step=1,
                                              label=replay_label(steps0), scale=3, min_width=300,
                                              interactive=bool(steps0), elem_id="replay-step")
                replay_note = gr.Markdown(elem_id="replay-note")
                with gr.Row(equal_height=False):
                    replay_curves = gr.Plot(elem_id="replay-curves")
                    replay_hist = gr.Plot(elem_id="replay-hist")
                replay_map = gr.Plot(elem_id="replay-map")

                def replay_open(lab_, a, b, c, x, y):
                    steps, *view = views.replay_open(lab_, a, b, c, x, y)
                    if not steps:
                        return gr.update(interactive=False, minimum=0, maximum=1, value=0, label=replay_label([])), *view
                    return (gr.update(interactive=True, minimum=0, maximum=len(steps) - 1, value=len(steps) - 1,
                                      label=replay_label(steps)), *view)

                replay_out = [replay_note, replay_curves, replay_hist, replay_map]
                # the replay follows the sides (side B's adapter, else side A's) and the Pairs tab's sentences
                replay_in = [side_a, side_b, replay_corpus, s1, s2]
                for event in (replay_tab.select, side_a.change, side_b.change, replay_corpus.input):
                    event(h(replay_open), replay_in, [replay_slider, *replay_out],
                          api_visibility="private", concurrency_limit=INTERACTIVE_AT_ONCE, concurrency_id="replay")
                replay_slider.input(h(views.replay_step), [*replay_in, replay_slider], replay_out,
                                    api_name="replay", trigger_mode="always_last", concurrency_limit=INTERACTIVE_AT_ONCE,
                                    concurrency_id="replay", show_progress="hidden")

            with gr.Tab("Benchmarks"):
                table = views.results_table()
                gr.Markdown("Spearman ×100 between cosine and human scores (MTEB conventions). Paper columns: arXiv 2408.00690, Table 1.")
                gr.Dataframe(table, interactive=False)
                gr.Plot(views.results_chart(table))
                loss_fig, records = views.training_records()
                gr.Markdown("### Shipped adapters: training records")
                if len(records):
                    gr.Dataframe(records, interactive=False)
                else:
                    gr.Markdown("No adapter is shipped yet (assets/adapters/). Train one with `python train.py`.")
                if loss_fig is not None:
                    gr.Plot(loss_fig)
                gr.Markdown("### Run an evaluation now (side A and side B)")
                with gr.Row():
                    eval_tasks = gr.CheckboxGroup(list(TASKS), value=["STSBenchmark", "SICK-R"], label="Tasks")
                    quick = gr.Checkbox(value=True, label="Quick (200 random pairs per task; CPU-friendly)")
                go_eval = gr.Button("Evaluate")
                eval_note = gr.Markdown()
                eval_df = gr.Dataframe(pd.DataFrame(columns=["task", "A", "B", "pairs"]), interactive=False)
                eval_files = gr.File(label="Download", file_count="multiple")

            with gr.Tab("How it works"):
                gr.Markdown(views.how_it_works(HOW_IT_WORKS))

        # --- wiring: every event has an api_name; heavy ones share one slot so cheap ones stay fast ---
        def slot(group: str, limit: int = 1):
            def validator(*_args, **_kw):
                """Refuse a long request before it queues when HEAVY_WAITING of its kind already wait, so a
                flood of them cannot fill the app's queue (max_size) and shut out compares and searches."""
                queue = getattr(demo, "_queue", None)
                waiting = queue.event_queue_per_concurrency_id.get(group) if queue is not None else None
                if waiting is not None and len(waiting.queue) >= HEAVY_WAITING:
                    raise gr.Error(f"{len(waiting.queue)} long requests are already waiting; try again in a minute",
                                   print_exception=False)
                return [gr.validate(True, "")] * len(_args)

            return {"concurrency_id": group, "concurrency_limit": limit, "validator": validator}

        # one long request of each kind at a time (its batches at background priority on the compute thread)
        # maps: several at once, since one from memory returns at once; Lab.map builds one uncached map at a time
        heavy, maps = slot("heavy"), slot("map", limit=4)

        sides = [side_a, side_b]
        side_a.change(gradio_errors(lambda v: views.model_card(v, "side A")), [side_a], [card_a], api_name="model_card")
        side_b.change(gradio_errors(lambda v: views.model_card(v, "side B")), [side_b], [card_b], api_visibility="private")
        go_pair.click(h(views.compare), [*sides, s1, s2], [pair_out], api_name="pairs", concurrency_limit=INTERACTIVE_AT_ONCE)
        ex.click(gradio_errors(lambda: views.sts_example()), None, [s1, s2, gold_note], api_name="example")
        go_batch.click(h(views.batch_pairs), [*sides, batch_text, batch_file],
                       [batch_df, batch_plot, batch_note, batch_files], api_name="batch_pairs", **heavy)
        go_aniso.click(h(views.anisotropy), sides, [aniso_note, aniso_plot], api_name="anisotropy", **heavy)
        map_upload.upload(gradio_errors(views.upload_corpus), [map_upload], [upload_state, upload_note], api_name="upload_corpus")
        go_map.click(h(views.draw_map), [*sides, map_corpus, upload_state, map_queries],
                     [map_plot, moved, map_note, map_files, map_state], api_name="map", **maps)
        def show_neighbours(st, df, evt: gr.SelectData):
            return views.neighbours(st, df, evt.index[0] if evt.index else None)

        moved.select(show_neighbours, [map_state, moved], [moved_detail], api_visibility="private")
        go_search.click(h(views.search), [*sides, search_corpus, upload_state, query, k],
                        [res_base, res_tuned, search_note, search_files], api_name="search", concurrency_limit=INTERACTIVE_AT_ONCE)
        query.submit(h(views.search), [*sides, search_corpus, upload_state, query, k],
                     [res_base, res_tuned, search_note, search_files], api_visibility="private", concurrency_limit=INTERACTIVE_AT_ONCE)

        def evaluate(lab_, a, b, tasks, q, progress=gr.Progress()):
            return views.run_evaluation(lab_, a, b, tasks, q, progress=progress)

        go_eval.click(h(evaluate), [*sides, eval_tasks, quick], [eval_df, eval_note, eval_files],
                      api_name="evaluate", **heavy)

        def compare(side_a: str, side_b: str, text_a: str, text_b: str) -> dict:
            """The cosine of one pair of texts under each side: {side_a, side_b, cosine_a, cosine_b}."""
            return views.compare_api(lab, side_a, side_b, text_a, text_b)

        gr.api(gradio_errors(compare), api_name="compare", concurrency_limit=INTERACTIVE_AT_ONCE)

        def embed(side_a: str, side_b: str, texts: list[str], both: bool = True) -> dict:
            """Embeddings of up to 256 texts under side A and (both) side B, as lists of floats."""
            return views.embed_api(lab, side_a, side_b, texts, both)

        gr.api(gradio_errors(embed), api_name="embed", concurrency_limit=INTERACTIVE_AT_ONCE)  # like pairs/search: its batches share the compute thread

        def sides_api() -> list[str]:
            """Every side spec that can be used here (model[+adapter][@step])."""
            return valid_specs()

        gr.api(sides_api, api_name="sides")
        def status_api() -> str:
            """Background warm-up progress ('Ready: …' when done)."""
            return lab.status_line() or "starting"

        gr.api(status_api, api_name="status")
        timer = gr.Timer(2.0)
        timer.tick(lambda: lab.status_line(), None, [status], api_visibility="private", show_progress="hidden")
        demo.load(lambda: lab.status_line(), None, [status], api_visibility="private", show_progress="hidden")
        # A first visitor sees the effect before clicking: the page's pair compared, the topics map drawn from the cache.
        demo.load(h(views.first_visit), [*sides, s1, s2, map_corpus], [pair_out, map_plot, moved, map_note, map_files, map_state],
                  api_visibility="private", concurrency_limit=INTERACTIVE_AT_ONCE, concurrency_id="first_visit")
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lab = Lab()
    configure_for_serving(background_batch_tokens=256 if lab.device in (None, "cpu") else None,
                          threads=int(os.environ.get("EMBEDLAB_COMPUTE_THREADS", "0")) or None)
    # Gradio's upload/cache folder, this app's alone unless the host chose one: the sweep below deletes
    # every file in it older than DELETE_CACHE's age, like Gradio's delete_cache but thoroughly.
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_dir := gradio_folder())
    demo = build(lab)
    # The page is served at once while the caches build; EMBEDLAB_WARM_CORPORA limits what is built (tests, small hosts).
    corpora = [c for c in os.environ.get("EMBEDLAB_WARM_CORPORA", ",".join(BUILTINS)).split(",") if c in BUILTINS]
    threading.Thread(target=lab.warm, kwargs={"corpora": corpora}, daemon=True, name="warm-up").start()
    keep = lambda: set().union(*(getattr(b, "keep_in_cache", set()) for b in demo.blocks.values()))  # noqa: E731
    sweep_forever(gradio_dir, *DELETE_CACHE, keep=keep)  # what delete_cache leaves (embedlab/sweep.py)
    demo.queue(default_concurrency_limit=2, max_size=64)
    # Gradio keeps every session it has seen (a ~150 KB copy of the page config plus the last value
    # of each output, e.g. a map's plot JSON) until 10,000 sessions: on a public Space memory grew
    # ~0.8 MB per new visitor without end. Keep the most recently active ones only.
    # Address and port are Gradio's own: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets
    # 0.0.0.0:7860), else 127.0.0.1 and the first free port from 7860. Passing them here would override a Space's.
    demo.launch(state_session_capacity=int(os.environ.get("EMBEDLAB_MAX_SESSIONS", "200")),
                theme=gr.themes.Soft(primary_hue="blue"), css=CSS, show_error=True, max_file_size=MAX_FILE_SIZE)


if __name__ == "__main__":
    main()
