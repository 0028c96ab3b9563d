"""Search tab, and every view across two sides: map, search, neighbours, anisotropy, evaluation (tiny random
models)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab.features import common, evaluate, maps, pairs
from embedlab.features import search as search_tab
from tiny import A, B


def test_map_search_and_neighbours(lab, adapter, tmp_path):
    up = tmp_path / "c.txt"
    words = "a the man woman dog cat is playing eating guitar food running park".split()
    rng = np.random.default_rng(0)
    up.write_text("\n".join(" ".join(rng.choice(words, 6)) + f" {i}" for i in range(40)))
    corpus, _ = maps.upload_corpus(str(up))
    fig, moved, note, files, state = maps.draw_map(lab, A, adapter, "upload", corpus, "a dog is running\na cat")
    assert len(fig.data) >= 4 and "neighbour overlap" in note and len(moved) == 40
    assert (moved["kept"].diff().dropna() >= 0).all()  # sorted: most-moved first
    rec = json.loads(Path(files[1]).read_text())
    assert rec["umap"]["seed"] == 42 and rec["corpus"]["sha256"] == corpus.sha256 and rec["side_b"]["spec"] == adapter
    assert list(pd.read_csv(files[0]).columns) == ["text", "label", f"A: {A} (base) x", f"A: {A} (base) y",
                                                   f"B: {adapter} x", f"B: {adapter} y", "jaccard"]
    detail = maps.neighbours(state, moved, 0)
    assert f"Neighbours under A** `{A}`" in detail and f"Neighbours under B** `{adapter}`" in detail
    assert "draw the map again" in maps.neighbours(None, moved, 0)  # session state expired or evicted
    # second draw comes from the cache: same layout
    fig2, *_ = maps.draw_map(lab, A, adapter, "upload", corpus, "")
    assert np.allclose(fig.data[0].x, fig2.data[0].x)
    tb, tt, note, files = search_tab.search(lab, A, adapter, "upload", corpus, "a dog is running in the park", 5)
    assert len(tb) == 5 and len(tt) == 5 and "Overlap@5" in note and "exact" in note
    assert (np.diff(tb["cosine"]) <= 1e-6).all()
    rows = pd.read_csv(files[0])
    assert set(rows["side"]) == {f"A: {A} (base)", f"B: {adapter}"}
    with pytest.raises(common.UserError, match="upload a .txt"):
        search_tab.search(lab, A, adapter, "upload", None, "x", 5)
    with pytest.raises(common.UserError, match="query is empty"):
        search_tab.search(lab, A, adapter, "upload", corpus, " ", 5)


def test_cross_model_map_search_anisotropy_and_evaluation(lab, adapter, monkeypatch):
    """Every view across two models of different widths (48 and 32): maps aligned, search overlap, anisotropy,
    evaluation; and two sides on one backbone run in one mixed-adapter pass."""
    fig, moved, note, files, state = maps.draw_map(lab, B, adapter, "topics", None, "a dog is running")
    from embedlab.corpora import builtin

    n = len(builtin("topics"))
    assert len(moved) == min(50, n) and f"between A `{B}` and B `{adapter}`" in note
    assert fig.layout.annotations[0].text == f"A:<br>{B} (base)" and fig.layout.annotations[1].text == f"B:<br>{adapter}"
    m = maps.twin_map(lab, *(common.sides(B, adapter)), builtin("topics"))
    assert m["vecs_a"].shape == (n, 48) and m["vecs_b"].shape == (n, 32) and m["xy_a"].shape == m["xy_b"].shape == (n, 2)
    assert np.isfinite(m["xy_a"]).all() and np.isfinite(m["xy_b"]).all()
    tb, tt, note, _ = search_tab.search(lab, B, adapter, "topics", None, "a football match", 5)
    assert len(tb) == len(tt) == 5 and "Overlap@5" in note
    msg, fig = pairs.anisotropy(lab, B, adapter)
    assert f"A `{B}`" in msg and f"B `{adapter}`" in msg and len(fig.data) == 2
    df, note, files = evaluate.run_evaluation(lab, B, adapter, ["STS12"], True)
    assert list(df.columns) == ["task", f"A: {B} (base)", f"B: {adapter}", "pairs"] and df.iloc[0, 1] != df.iloc[0, 2]
    rec = json.loads(Path(files[1]).read_text())
    assert rec["side_a"]["spec"] == B and rec["side_b"]["spec"] == adapter
    # one backbone, two sides: a single mixed pass (PEFT adapter_names per row), not one per side
    enc = lab.encoder(A)
    calls = []
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda t, a=None, **k: calls.append(list(a)) or real(t, a, **k))
    pairs.compare(lab, A, adapter, "a woman plays", "a man eats")
    (name,) = enc.adapters
    assert calls == [[None, None, name, name]]
