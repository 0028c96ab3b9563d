"""Map tab: the two sides' aligned UMAP layouts of a corpus (built-in or uploaded), "what moved" (texts whose
neighbours differ most between the sides), your own sentences placed on both maps; and the map file format."""
from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from .. import plots
from ..files import atomic_path
from ..corpora import BUILTINS, Corpus, builtin, parse_corpus
from ..lab import MAP_MAX, Lab, Ready
from ..projection import TwinMaps, neighbour_overlap, place_by_neighbours
from ..side import Side
from .common import (Ctx, Choice, Text, Upload, corpus, files, gradio_errors, md, names, optional_text, record, sides,
                     text, upload, user_facing)

log = logging.getLogger(__name__)
MAX_QUERIES = 10  # own sentences placed on a map
__all__ = ["builtin", "twin_map", "cached", "draw_map", "upload_corpus", "neighbours", "build"]


# --- computation ------------------------------------------------------------------------------------
def map_key(a: Ready, b: Ready, corpus: Corpus, k: int = 10, seed: int = 42) -> str:
    """Cache key of one map: both sides' embedding keys plus the projection settings."""
    return hashlib.sha256("|".join([a.key(corpus.sha256), b.key(corpus.sha256),
                                    f"{TwinMaps(seed=seed).tag}-k{k}"]).encode()).hexdigest()[:24]


def sample_vectors(lab: Lab, r: Ready, full: Corpus, sample: Corpus) -> np.ndarray:
    """Vectors of a map's sample: rows of the whole corpus's when those are cached already
    (the 10K search corpus), else the sample embedded on its own (a fresh 50K upload)."""
    if sample is not full:
        fv = lab.embeddings.peek(r.enc, full.texts, r.adapter, sha=full.sha256, uploaded=full.uploaded)
        if fv is not None:
            return fv[full.sample_indices(len(sample))]
    return lab.corpus(r, sample)


def twin_map(lab: Lab, a: Side, b: Side, full: Corpus, k: int = 10, seed: int = 42) -> dict:
    """Aligned UMAP layouts of one corpus under both sides (their dimensions may differ) + each text's
    neighbour overlap; cached in the lab's memory and on disk. Returns xy_a, xy_b (N, 2), jaccard (N,),
    nn_a, nn_b (N, k), vecs_a, vecs_b, params, corpus (the mapped sample)."""
    sample = full.sample(MAP_MAX)
    with lab.hold(a, b) as (ra, rb):
        key = map_key(ra, rb, sample, k, seed)
        if (m := lab.remembered_map(key)) is not None:
            return m
        # One map is built at a time (its texts' vectors, then UMAP): a request whose map is already in
        # memory (above) never waits behind a long build, e.g. a 20,000-text upload's.
        with lab.map_build:
            if (m := lab.remembered_map(key)) is not None:  # built meanwhile by the request this one waited for
                return m
            va = sample_vectors(lab, ra, full, sample)
            vb = va if ra.key(sample.sha256) == rb.key(sample.sha256) else sample_vectors(lab, rb, full, sample)
            m = load_map(lab, key, sample)
            if m is None:
                um = TwinMaps(seed=seed).fit(va, vb, same=vb is va)
                jac, na, nb = neighbour_overlap(va, vb, k=min(k, len(sample) - 1))
                m = {"xy_a": um.xy_a, "xy_b": um.xy_b, "jaccard": jac, "nn_a": na, "nn_b": nb, "params": um.params}
                if not sample.uploaded:  # an upload's map stays in memory only: one file per upload would fill the disk
                    save_map(lab.cache_dir / "maps" / f"{key}.npz", m)
            m = {**m, "corpus": sample, "vecs_a": va, "vecs_b": vb}
            lab.remember_map(key, m)
            return m


def cached(lab: Lab, a: Side, b: Side, full: Corpus, k: int = 10, seed: int = 42) -> bool:
    """Whether :func:`twin_map` would answer from memory or a map file, without fitting UMAP."""
    sample = full.sample(MAP_MAX)
    if sample.uploaded:
        return False
    with lab.hold(a, b) as (ra, rb):
        key = map_key(ra, rb, sample, k, seed)
    return lab.remembered_map(key) is not None or any(p.is_file() for p in map_paths(lab, key))


def place_queries(lab: Lab, a: Side, b: Side, m: dict, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions (Q, 2) of new texts on both layouts of map ``m``."""
    qa, qb = lab.embed(a, b, queries)
    return place_by_neighbours(qa, m["vecs_a"], m["xy_a"]), place_by_neighbours(qb, m["vecs_b"], m["xy_b"])


# --- the map file (.npz) ----------------------------------------------------------------------------
# The file's array names, kept from when the two sides were always base and tuned (the shipped seed maps in
# assets/cache and users' caches use them) -> ours. Files are written and read with these names.
MAP_FILE = {"xy_a": "base_xy", "xy_b": "tuned_xy", "jaccard": "jaccard", "nn_a": "nn_base", "nn_b": "nn_tuned"}


def map_paths(lab: Lab, key: str) -> list[Path]:
    """Where map ``key`` may be on disk: the user cache, then the shipped seeds."""
    return [lab.cache_dir / "maps" / f"{key}.npz"] + ([lab.seed_dir / "maps" / f"{key}.npz"] if lab.seed_dir else [])


def load_map(lab: Lab, key: str, sample: Corpus) -> dict | None:
    """A cached map from the user cache, else the shipped seeds; None when neither has a sound one."""
    if sample.uploaded:
        return None
    for candidate in map_paths(lab, key):
        if candidate.is_file():
            try:
                z = np.load(candidate, allow_pickle=False)
                m = {ours: z[theirs] for ours, theirs in MAP_FILE.items()}
                m["params"] = json.loads(str(z["params"]))
                return m
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # npz members carry a CRC
                log.warning("map cache %s unreadable or corrupt; recomputing", candidate)
    return None


def save_map(path: Path, m: dict) -> None:
    """A map's layouts and neighbour lists as .npz (written to a temp name, then renamed)."""
    with atomic_path(path) as tmp:
        np.savez(tmp, **{theirs: m[ours] for ours, theirs in MAP_FILE.items()}, params=json.dumps(m["params"]))


# --- handlers ---------------------------------------------------------------------------------------
@user_facing
def upload_corpus(file: str | None) -> tuple[Corpus, str]:
    data, name = upload(file)
    return (c := parse_corpus(data, name)), f"Loaded **{md(c.name)}**: {len(c):,} texts. Choose 'upload' as corpus."


@user_facing
def draw_map(lab: Lab, side_a: Any, side_b: Any, corpus_name: str, upload: Corpus | None, queries: str | None,
             downloads: bool = True):
    """The two sides' aligned maps of a corpus, "what moved", a note, the downloads (none when ``downloads``
    is false: the first-visit view writes no files) and the session's neighbour state."""
    a, b = sides(side_a, side_b)
    full = corpus(corpus_name, upload)
    queries = optional_text(queries, "queries")
    qs = [text(x, "query") for x in queries.splitlines() if x.strip()][:MAX_QUERIES]
    m = twin_map(lab, a, b, full)
    c: Corpus = m["corpus"]
    q = None
    if qs:
        pa, pb = place_queries(lab, a, b, m, qs)
        q = (pa, pb, [x if len(x) < 40 else x[:37] + "…" for x in qs])
    na, nb = names(a, b)
    fig = plots.twin_maps(m["xy_a"], m["xy_b"], c.texts, c.labels, (na, nb + (" (the same side)" if a == b else "")), q)
    order = np.argsort(m["jaccard"])[:50]
    moved = pd.DataFrame({"#": order, "text": [c.texts[i] for i in order], "label": [c.labels[i] for i in order],
                          "kept": [round(float(j), 2) for j in m["jaccard"][order]]})
    note = (f"{len(c):,} texts{f' (a seeded sample of {len(full):,})' if len(full) > MAP_MAX else ''}; "
            f"mean neighbour overlap between A `{a.spec}` and B `{b.spec}`: **{m['jaccard'].mean():.2f}** "
            "(how much a text's 10 nearest neighbours stay the same from A to B: 1 = all the same, 0 = none; "
            "the *kept* column below is this per text). Click a row to compare its neighbours.")
    rows = [{"text": t, "label": l, f"{na} x": float(ax), f"{na} y": float(ay), f"{nb} x": float(bx), f"{nb} y": float(by),
             "jaccard": float(j)} for t, l, (ax, ay), (bx, by), j in zip(c.texts, c.labels, m["xy_a"], m["xy_b"], m["jaccard"])]
    out = files("map", rows, record(a, b, c, umap=m["params"])) if downloads else None
    # int32 arrays, not lists: ~40 KB per session for a 1K-text map instead of ~1 MB of Python ints
    state = {"texts": c.texts, "nn_a": m["nn_a"].astype(np.int32), "nn_b": m["nn_b"].astype(np.int32),
             "a": a.spec, "b": b.spec}
    return fig, moved, note, out, state


def neighbours(state: dict | None, moved: pd.DataFrame | None, row: int) -> str:
    """Both sides' neighbour lists of the clicked 'what moved' row."""
    if moved is None or row is None or row >= len(moved):
        return ""
    if not state:  # the session's map state expired (an hour idle, or evicted among many newer sessions)
        return "This map's neighbour lists have expired: draw the map again to see them."
    i = int(moved.iloc[row]["#"])
    t = state["texts"]
    na, nb = [int(j) for j in state["nn_a"][i]], [int(j) for j in state["nn_b"][i]]
    kept = set(na) & set(nb)
    # "1\." with hard line breaks, not a Markdown list: the app's list style clipped the "10." marker
    fmt = lambda ids: "  \n".join(f"{k + 1}\\. {'**' if j in kept else ''}{md(t[j])}{'**' if j in kept else ''}" for k, j in enumerate(ids))  # noqa: E731
    return (f"#### “{md(t[i])}”\n\n**Neighbours under A** `{state['a']}`\n\n{fmt(na)}\n\n"
            f"**Neighbours under B** `{state['b']}`\n\n{fmt(nb)}\n\n(bold: in both)")


# --- layout and wiring ----------------------------------------------------------------------------
def build(ctx: Ctx) -> None:
    """The Map tab; shares ``map_corpus``, ``map_outputs`` (first visit) and ``upload_state`` (Search)."""
    with gr.Tab("Map"):
        # Per-user data lives in the session; dropped an hour after it was last set so abandoned sessions
        # (API clients never say goodbye) do not pile up.
        upload_state = gr.State(None, time_to_live=3600)
        map_state = gr.State(None, time_to_live=3600)
        with gr.Row():
            map_corpus = Choice(choices=[(v, k) for k, v in BUILTINS.items()] + [("your upload", "upload")],
                                value="topics", label="Corpus", what="corpus")
            map_upload = Upload(label="Upload a corpus (.txt one per line, or .csv with text[,label])",
                                file_types=[".txt", ".csv"], type="filepath", what="the corpus file")
            map_queries = Text(label="Place your own sentences (one per line)", lines=2, what="queries")
        upload_note = gr.Markdown()
        go_map = gr.Button("Draw the maps", variant="primary")
        map_note = gr.Markdown()
        map_plot = gr.Plot(elem_id="map-plot")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                moved = gr.Dataframe(label="What moved: texts whose 10 nearest neighbours differ most "
                                     "between A and B (kept: the share of its neighbours that stayed, "
                                     "0 = all new, 1 = all the same)",
                                     interactive=False, wrap=True, column_widths=["9%", "59%", "18%", "14%"],
                                     elem_id="moved")
            with gr.Column(scale=2):
                moved_detail = gr.Markdown("Click a row to see its neighbours under A and under B.")
        map_files = gr.File(label="Download (CSV + reproducibility JSON)", file_count="multiple")
    outputs = [map_plot, moved, map_note, map_files, map_state]
    ctx.parts.update(map_corpus=map_corpus, map_outputs=outputs, upload_state=upload_state)

    map_upload.upload(gradio_errors(upload_corpus), [map_upload], [upload_state, upload_note], api_name="upload_corpus")
    go_map.click(ctx.h(draw_map), [*ctx.sides, map_corpus, upload_state, map_queries], outputs, api_name="map", **ctx.maps)

    def show_neighbours(st, df, evt: gr.SelectData):
        return neighbours(st, df, evt.index[0] if evt.index else None)

    moved.select(show_neighbours, [map_state, moved], [moved_detail], api_visibility="private")
