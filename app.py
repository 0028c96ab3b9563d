"""embedlab web app (placeholder until the app issue lands): lists the models and whether they load here."""
import os

import gradio as gr

from embedlab.registry import MODELS, available_models


def build() -> gr.Blocks:
    rows = [[k, MODELS[k].title, "yes" if ok else "no", why] for k, (ok, why) in available_models().items()]
    with gr.Blocks(title="embedlab") as demo:
        gr.Markdown("# embedlab\nSentence embeddings of small language models, before and after contrastive fine-tuning.")
        gr.Dataframe(rows, headers=["key", "model", "loads here", "why not"], interactive=False)
    return demo


if __name__ == "__main__":
    build().launch(server_name=os.environ.get("EMBEDLAB_HOST", "127.0.0.1"), server_port=int(os.environ.get("EMBEDLAB_PORT", "7860")))
