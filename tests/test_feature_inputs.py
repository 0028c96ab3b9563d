"""What every handler shares (features/common.py): input checks, messages without stack traces or server paths,
downloads, the components, the long-request queue."""
from pathlib import Path

import pytest

from embedlab.adapters import AdapterError
from embedlab.features import common, evaluate, maps, pairs
from embedlab.features import search as search_tab
from embedlab.features import sides as sides_tab
from embedlab.lab import Lab
from tiny import A


def test_unexpected_errors_become_a_short_message(lab, monkeypatch):
    monkeypatch.setattr(pairs, "cosines", lambda *a: 1 / 0)
    with pytest.raises(common.UserError, match="ZeroDivisionError") as e:
        pairs.compare(lab, A, A, "a", "b")
    assert "Traceback" not in str(e.value)


BAD_TYPES = [None, ["x"], {"a": 1}, 3, 2.5, True]


@pytest.mark.parametrize("bad", BAD_TYPES)
def test_every_parameter_is_type_checked(lab, adapter, bad, tmp_path):
    """A wrong-typed value in any parameter of any handler: a clear message naming it, never the generic one."""
    calls = [
        ("side A", lambda: pairs.compare(lab, bad, A, "a", "b")),
        ("side B", lambda: pairs.compare(lab, A, bad, "a", "b")),
        ("side A", lambda: pairs.compare_api(lab, bad, A, "a", "b")),
        ("text B", lambda: pairs.compare_api(lab, A, A, "a", bad)),
        ("side", lambda: sides_tab.model_card(bad)),
        ("side B", lambda: search_tab.search(lab, A, bad, "topics", None, "a", 5)),
        ("side B", lambda: maps.draw_map(lab, A, bad, "topics", None, "")),
        ("side A", lambda: pairs.batch_pairs(lab, bad, A, "a\tb", None)),
        ("side A", lambda: pairs.embed_api(lab, bad, A, ["ok"])),
        ("corpus", lambda: search_tab.search(lab, A, A, bad, None, "a", 5)),
        ("k", lambda: search_tab.search(lab, A, A, "topics", None, "a", bad if bad is not True else "ten")),
        ("query", lambda: search_tab.search(lab, A, A, "topics", None, bad, 5)),
        ("corpus", lambda: maps.draw_map(lab, A, A, bad, None, "")),
        ("queries", lambda: maps.draw_map(lab, A, A, "topics", None, bad)),
        ("pairs", lambda: pairs.batch_pairs(lab, A, A, bad, None)),
        ("texts", lambda: pairs.embed_api(lab, A, A, bad)),
        ("text", lambda: pairs.embed_api(lab, A, A, ["ok", bad])),
        ("both", lambda: pairs.embed_api(lab, A, A, ["ok"], bad if bad is not True else "maybe")),
        ("tasks", lambda: evaluate.run_evaluation(lab, A, A, bad if bad is not None else 7, True)),
        ("quick", lambda: evaluate.run_evaluation(lab, A, A, ["STS12"], bad if bad is not True else "perhaps")),
        ("side A", lambda: pairs.anisotropy(lab, bad, A)),
        ("side B", lambda: evaluate.run_evaluation(lab, A, bad, ["STS12"], True)),
    ]
    for what, call in calls:
        if (bad is None and what in ("queries", "pairs")) or (what == "texts" and bad == ["x"]) or (what == "k" and bad == 3):
            continue  # optional inputs (None: left empty), and values that are right for that parameter
        with pytest.raises(common.UserError) as e:
            call()
            pytest.fail(f"{what}={bad!r} accepted")
        msg = str(e.value)
        assert what in msg and "Sorry" not in msg and "Traceback" not in msg and len(msg) < 300, (what, bad, msg)


def test_no_message_shows_a_server_path(lab, monkeypatch):
    from embedlab.corpora import InputError
    from embedlab import ROOT

    assert common.scrub(f"cannot open {ROOT}/assets/adapters/x") == "cannot open assets/adapters/x"
    assert common.scrub("'/home/someone/.cache/embedlab/part-00001.npy' is corrupt") == "'part-00001.npy' is corrupt"
    assert common.scrub("cannot read /tmp/gradio/4f2a/mine.txt (No such file)") == "cannot read mine.txt (No such file)"
    assert common.scrub("score 3/5 at https://example.org/a/b") == "score 3/5 at https://example.org/a/b"
    for err in [InputError(f"bad file {ROOT}/runs/x/training.json"), common.UserError("see /var/lib/secret/place/f.txt"),
                AdapterError("/srv/adapters/a is outside the allowed adapter folders")]:
        monkeypatch.setattr(pairs, "cosines", lambda *a, err=err: (_ for _ in ()).throw(err))
        with pytest.raises(common.UserError) as e:
            pairs.compare(lab, A, A, "a", "b")
        assert str(ROOT) not in str(e.value) and not any(p in str(e.value) for p in ("/var/", "/srv/", "/runs/"))


def test_every_component_is_one_the_browser_can_draw(tmp_path):
    """Our input components subclass Gradio's: each must be drawn by Gradio's own frontend (a block named after
    the subclass made the browser ask for a custom component that does not exist, and the page never loaded)."""
    import gradio as gr

    import app

    demo = app.build(Lab(cache_dir=tmp_path / "cache"))
    known = {c.__name__.lower() for c in vars(gr.components).values() if isinstance(c, type)}
    known |= {c.__name__.lower() for c in vars(gr.layouts).values() if isinstance(c, type)}
    known |= {"api", "tabitem"}  # gr.api's function-only endpoints, gr.Tab
    types = {c["type"] for c in demo.config["components"]}
    assert types <= known, types - known
    labels = {c["props"].get("label") for c in demo.config["components"]}  # their settings reach the browser
    assert {"Sentence A", "Query", "Corpus", "k", "Tasks"} <= labels, labels


def test_each_model_pair_is_one_click_and_the_page_opens_on_the_registry_default(tmp_path):
    """The Pairs tab has a button per model pair (side.model_pairs: the default pair first, SmolLM2's beside it),
    and the pickers open on the registry's DEFAULT_PAIR where its model loads."""
    import app
    from embedlab.registry import DEFAULT_PAIR
    from embedlab.side import loadable_models, model_pairs

    demo = app.build(Lab(cache_dir=tmp_path / "cache"))
    comps = demo.config["components"]
    pairs_here = model_pairs()
    buttons = [c for c in comps if str(c["props"].get("elem_id", "")).startswith("pair-") and c["type"] == "button"]
    assert [b["props"]["elem_id"] for b in buttons] == ([f"pair-{a.model}" for a, _ in pairs_here] if len(pairs_here) > 1 else [])
    if DEFAULT_PAIR[0] in loadable_models():
        values = [c["props"]["value"] for c in comps if c["props"].get("elem_id") in ("side-a", "side-b")]
        assert tuple(values) == DEFAULT_PAIR


def test_long_requests_run_one_at_a_time_with_a_bounded_wait(tmp_path):
    import app

    demo = app.build(Lab(cache_dir=tmp_path / "cache"))  # builds the page only: no model is loaded
    fns = {f.api_name: f for f in demo.fns.values()}
    for name in ("batch_pairs", "anisotropy", "evaluate"):
        assert fns[name].concurrency_limit == 1 and fns[name].validator is not None, name
    # maps: several requests at once (a map in memory answers at once); Lab.map builds one at a time (tested above)
    assert fns["map"].concurrency_limit == 4 and fns["map"].validator is not None and fns["map"].concurrency_id == "map"
    assert {fns[n].concurrency_id for n in ("batch_pairs", "anisotropy", "evaluate")} == {"heavy"}
    assert fns["pairs"].concurrency_id not in ("heavy", "map") and fns["pairs"].validator is None
    assert demo.delete_cache == app.DELETE_CACHE


def test_download_folders_are_removed_once_old(lab, monkeypatch, tmp_path):
    import os

    monkeypatch.setattr(common, "DOWNLOADS", tmp_path / "downloads")
    old = tmp_path / "downloads" / "pairs-old"
    old.mkdir(parents=True)
    (old / "pairs.csv").write_text("x")
    os.utime(old, (0, 0))
    _, _, _, files = pairs.batch_pairs(lab, A, A, "a man\ta dog", None)
    assert not old.exists() and all(Path(f).parent.parent == tmp_path / "downloads" for f in files)
    assert len(list((tmp_path / "downloads").iterdir())) == 1


@pytest.mark.parametrize("word,value", [("false", False), ("no", False), ("0", False), ("off", False),
                                        ("true", True), ("Yes", True), (False, False), (True, True)])
def test_strings_that_say_false_are_false(lab, adapter, word, value):
    out = pairs.embed_api(lab, A, adapter, ["a dog"], word)
    assert (out["b"] is not None) == value


def test_echoed_input_is_cut_short(lab):
    with pytest.raises(common.UserError) as e:
        srch = search_tab.search(lab, A, A, "x" * 1_000_000, None, "a", 5)  # noqa: F841
    assert len(str(e.value)) < 300
