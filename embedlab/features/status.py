"""The status line under the side pickers: background work (models loading, corpus jobs with their progress, the
warm-up) and the precision, refreshed every 2 s, with a Cancel button beside it while a corpus job runs."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..lab import Lab


def running(lab: Lab) -> bool:
    """Whether a corpus job runs that has not been cancelled yet (the Cancel button shows then)."""
    return any(not j.cancelled.is_set() for j in lab.embeddings.jobs())


def view(lab: Lab) -> tuple[str, Any]:
    """The status line, and the Cancel button shown while a corpus job runs."""
    return lab.status_line(), gr.update(visible=running(lab))


def cancel(lab: Lab) -> tuple[str, Any]:
    """Cancel the running corpus jobs; the status line then says which, and how far each got (Lab.cancel_jobs)."""
    lab.cancel_jobs()
    return view(lab)


def build(lab: Lab, demo: gr.Blocks) -> None:
    """The status line and its Cancel button, refreshed every 2 s and when the page loads; the ``status`` API."""
    with gr.Row(elem_id="status-row", equal_height=False):
        line = gr.Markdown(elem_id="status")
        stop = gr.Button("Cancel", size="sm", variant="stop", visible=False, scale=0, min_width=80,
                         elem_id="cancel-jobs")
    stop.click(lambda: cancel(lab), None, [line, stop], api_visibility="private", show_progress="hidden")
    gr.Timer(2.0).tick(lambda: view(lab), None, [line, stop], api_visibility="private", show_progress="hidden")
    demo.load(lambda: view(lab), None, [line, stop], api_visibility="private", show_progress="hidden")

    def status_api() -> str:
        """Background warm-up progress ('Ready: …' when done)."""
        return lab.status_line() or "starting"

    gr.api(status_api, api_name="status")
