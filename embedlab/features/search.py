"""Search tab: the top-k texts of a corpus for a query under each side (FAISS), with their overlap."""
from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from ..compute import on_compute_thread
from ..corpora import BUILTINS, Corpus
from ..lab import Lab
from ..side import Side
from .common import (INTERACTIVE_AT_ONCE, Choice, Ctx, Number, Text, corpus, files, names, record, sides, text, whole,
                     user_facing)

MAX_K = 50


def top_k(lab: Lab, a: Side, b: Side, corpus: Corpus, query: str, k: int = 10) -> dict:
    """Top-k corpus texts for a query under both sides, with overlap@k."""
    k = int(max(1, min(k, MAX_K, len(corpus))))
    with lab.hold(a, b) as (ra, rb):
        ia, ib = lab.index(ra, corpus)[0], lab.index(rb, corpus)[0]

        def query_both() -> tuple:  # one task on the compute thread: one wait behind background work
            qa, qb = lab.texts(ra, rb, [query])
            return ia.search(qa, k), ib.search(qb, k)

        (sa, na), (sb, nb) = on_compute_thread(query_both)
    hits = lambda s, n: [(int(i), float(x)) for i, x in zip(n[0], s[0]) if i >= 0]  # noqa: E731
    res = {"k": k, "n": len(corpus), "a": hits(sa, na), "b": hits(sb, nb),
           "index": {"a": ia.kind, "b": ib.kind}, "recall_at_10": {"a": ia.recall_at_10, "b": ib.recall_at_10}}
    res["overlap"] = len({i for i, _ in res["a"]} & {i for i, _ in res["b"]}) / k
    return res


# a side's hits: rank, cosine to the query, the text, its label, its rank under the other side (">k": not in its top k)
HIT_COLUMNS = ["#", "cosine", "text", "label", "# other side"]


@user_facing
def search(lab: Lab, side_a: Any, side_b: Any, corpus_name: str, upload: Corpus | None, query: str, k: Any):
    a, b = sides(side_a, side_b)
    c = corpus(corpus_name, upload)
    k = whole(k, "k", 1, MAX_K)
    r = top_k(lab, a, b, c, text(query, "query"), k)
    rank_a = {i: n for n, (i, _) in enumerate(r["a"], 1)}
    rank_b = {i: n for n, (i, _) in enumerate(r["b"], 1)}
    def table(hits, other):  # noqa: E306
        return pd.DataFrame([(n, round(sc, 3), c.texts[i], c.labels[i], other.get(i, f">{r['k']}"))
                             for n, (i, sc) in enumerate(hits, 1)], columns=HIT_COLUMNS)
    def idx(which: str) -> str:  # noqa: E306
        kind, rec = r["index"][which], r["recall_at_10"][which]
        return "exact (flat)" if kind == "exact" else f"{kind} (recall@10 vs exact {rec:.3f})"
    index = idx("a") if r["index"]["a"] == r["index"]["b"] else f"A {idx('a')}, B {idx('b')}"
    note = (f"{r['n']:,} texts, FAISS {index}. Overlap@{r['k']} between A `{a.spec}` and B `{b.spec}`: "
            f"**{r['overlap']:.0%}**.")
    na, nb = names(a, b)
    rows = [{"side": name, "rank": n, "score": sc, "text": c.texts[i]} for name, hits in
            ((na, r["a"]), (nb, r["b"])) for n, (i, sc) in enumerate(hits, 1)]
    return (table(r["a"], rank_b), table(r["b"], rank_a), note,
            files("search", rows, record(a, b, c, query=query, k=r["k"], index=r["index"], overlap=r["overlap"])))


def build(ctx: Ctx) -> None:
    """The Search tab (its "your upload" is the Map tab's, ``upload_state``)."""
    with gr.Tab("Search"):
        with gr.Row():
            search_corpus = Choice(choices=[(v, k) for k, v in BUILTINS.items()] + [("your upload (Map tab)", "upload")],
                                   value="stsb", label="Corpus", what="corpus", elem_id="search-corpus")
            query = Text(label="Query", value="A dog runs through the snow.", scale=3, what="query")
            k = Number(minimum=1, maximum=MAX_K, value=10, step=1, label="k", what="k")
        go_search = gr.Button("Search", variant="primary")
        search_note = gr.Markdown()
        with gr.Row():
            widths = ["8%", "12%", "52%", "14%", "14%"]
            # empty until a search, under the hits' own headers (not Gradio's default "1 2 3")
            res_a = gr.Dataframe(pd.DataFrame(columns=HIT_COLUMNS), label="Side A", interactive=False, wrap=True,
                                 column_widths=widths, elem_id="search-a", elem_classes="hits")
            res_b = gr.Dataframe(pd.DataFrame(columns=HIT_COLUMNS), label="Side B", interactive=False, wrap=True,
                                 column_widths=widths, elem_id="search-b", elem_classes="hits")
        search_files = gr.File(label="Download (CSV + reproducibility JSON)", file_count="multiple")
    inputs = [*ctx.sides, search_corpus, ctx.parts["upload_state"], query, k]
    outputs = [res_a, res_b, search_note, search_files]
    go_search.click(ctx.h(search), inputs, outputs, api_name="search", concurrency_limit=INTERACTIVE_AT_ONCE)
    query.submit(ctx.h(search), inputs, outputs, api_visibility="private", concurrency_limit=INTERACTIVE_AT_ONCE)
