"""App handlers on a tiny random model (the Lab's model loader is swapped for the tiny one)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab import views
from embedlab.lab import Lab
from tiny import make_adapter, tiny_encoder

M = "smollm2-135m"  # the key the UI sends; the lab below serves a tiny model under it


@pytest.fixture
def lab(tmp_path, monkeypatch):
    lab = Lab(cache_dir=tmp_path / "cache")
    enc = tiny_encoder("llama")
    monkeypatch.setattr(lab, "encoder", lambda key: enc)
    return lab


@pytest.fixture
def adapter(tmp_path, monkeypatch):
    root = tmp_path / "adapters"
    make_adapter(root / "tiny-nli")
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(root))
    return str(root / "tiny-nli")


def test_compare_base_and_tuned(lab, adapter):
    out = views.compare(lab, M, adapter, "a man is playing a guitar", "a woman is eating food")
    assert "base smollm2-135m" in out and "tuned (tiny-nli)" in out and "—" not in out
    out = views.compare(lab, M, "none", "a man", "a dog")
    assert "tuned (no adapter)" in out


@pytest.mark.parametrize("a,b,msg", [("", "x", "sentence A is empty"), ("   ", "x", "empty"),
                                     ("x" * 5000, "y", "limit"), (None, "x", "must be text"), ("\x00\x01", "x", "empty")])
def test_compare_bad_input(lab, a, b, msg):
    with pytest.raises(views.UserError, match=msg):
        views.compare(lab, M, "none", a, b)


def test_unknown_model_and_adapter_outside_allowed_folders(lab, tmp_path):
    with pytest.raises(views.UserError, match="unknown model"):
        views.compare(lab, "gpt-17", "none", "a", "b")
    make_adapter(tmp_path / "elsewhere")
    with pytest.raises(views.UserError, match="outside the allowed adapter folders"):
        views.compare(lab, M, str(tmp_path / "elsewhere"), "a", "b")
    with pytest.raises(views.UserError, match="outside"):
        views.compare(lab, M, "../../../etc", "a", "b")


def test_unexpected_errors_become_a_short_message(lab, monkeypatch):
    monkeypatch.setattr(lab, "compare_pair", lambda *a: 1 / 0)
    with pytest.raises(views.UserError, match="ZeroDivisionError") as e:
        views.compare(lab, M, "none", "a", "b")
    assert "Traceback" not in str(e.value)


def test_batch_pairs_with_gold_and_downloads(lab, adapter):
    text = "a man is playing\ta man plays\t4.5\nthe dog\tthe cat\t1.0\na woman eats\ta woman is eating food\t4.0\na park\tguitar\t0.2"
    df, fig, summary, files = views.batch_pairs(lab, M, adapter, text, None)
    assert isinstance(df, pd.DataFrame) and len(df) == 4 and df["cos tuned"].notna().all()
    assert "Spearman" in summary and fig is not None
    csv_path, json_path = map(Path, files)
    assert csv_path.read_text().count("\n") == 5
    rec = json.loads(json_path.read_text())
    assert rec["model"] == "tiny-llama" and len(rec["adapter_sha256"]) == 64 and "libraries" in rec["environment"]


@pytest.mark.parametrize("text,msg", [("", "paste pairs"), ("only one sentence", "two sentences"),
                                      ("a\tb\tnot-a-number", "not a number"), ("a\tb\t1\nc\td", "every line or on none")])
def test_batch_pairs_bad_input(lab, text, msg):
    with pytest.raises(views.UserError, match=msg):
        views.batch_pairs(lab, M, "none", text, None)


def test_batch_pairs_bad_files(lab, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"caf\xe9\tbar\n")
    with pytest.raises(views.UserError, match="not UTF-8"):
        views.batch_pairs(lab, M, "none", None, str(bad))
    many = tmp_path / "many.tsv"
    many.write_text("a\tb\n" * 3000)
    with pytest.raises(views.UserError, match="limit"):
        views.batch_pairs(lab, M, "none", None, str(many))


def test_upload_corpus_validation(tmp_path):
    ok = tmp_path / "c.csv"
    ok.write_text("text,label\n" + "\n".join(f"sentence {i},L{i % 2}" for i in range(10)))
    corpus, note = views.upload_corpus(str(ok))
    assert len(corpus) == 10 and set(corpus.labels) == {"L0", "L1"} and "10 texts" in note
    for content, msg in [(b"\x00\x01\x02binary", "binary"), (b"a\nb\n", "at least 4"), (b"\xff\xfe\xfd", "not UTF-8"),
                         (b"x\n" * 25_000, "limit"), (b"", "empty")]:
        p = tmp_path / "u.txt"
        p.write_bytes(content)
        with pytest.raises(views.UserError, match=msg):
            views.upload_corpus(str(p))
    nocol = tmp_path / "n.csv"
    nocol.write_text("sentence,label\na,b\nc,d\ne,f\ng,h\n")
    with pytest.raises(views.UserError, match="'text' column"):
        views.upload_corpus(str(nocol))


def test_map_search_and_neighbours(lab, adapter, tmp_path):
    up = tmp_path / "c.txt"
    words = "a the man woman dog cat is playing eating guitar food running park".split()
    rng = np.random.default_rng(0)
    up.write_text("\n".join(" ".join(rng.choice(words, 6)) + f" {i}" for i in range(40)))
    corpus, _ = views.upload_corpus(str(up))
    fig, moved, note, files, state = views.draw_map(lab, M, adapter, "upload", corpus, "a dog is running\na cat")
    assert len(fig.data) >= 4 and "neighbour overlap" in note and len(moved) == 40
    assert (moved["kept"].diff().dropna() >= 0).all()  # sorted: most-moved first
    rec = json.loads(Path(files[1]).read_text())
    assert rec["umap"]["seed"] == 42 and rec["corpus"]["sha256"] == corpus.sha256
    detail = views.neighbours(state, moved, 0)
    assert "Base neighbours" in detail and "Tuned neighbours" in detail
    assert "draw the map again" in views.neighbours(None, moved, 0)  # session state expired or evicted
    # second draw comes from the cache: same layout
    fig2, *_ = views.draw_map(lab, M, adapter, "upload", corpus, "")
    assert np.allclose(fig.data[0].x, fig2.data[0].x)
    tb, tt, note, files = views.search(lab, M, adapter, "upload", corpus, "a dog is running in the park", 5)
    assert len(tb) == 5 and len(tt) == 5 and "Overlap@5" in note and "exact" in note
    assert (np.diff(tb["cosine"]) <= 1e-6).all()
    with pytest.raises(views.UserError, match="upload a .txt"):
        views.search(lab, M, adapter, "upload", None, "x", 5)
    with pytest.raises(views.UserError, match="query is empty"):
        views.search(lab, M, adapter, "upload", corpus, " ", 5)


def test_embed_api(lab, adapter):
    out = views.embed_api(lab, M, adapter, ["a dog", "a cat"])
    assert out["dim"] == 32 and len(out["base"]) == 2 and len(out["tuned"][0]) == 32
    with pytest.raises(views.UserError, match="at most 256"):
        views.embed_api(lab, M, adapter, ["x"] * 300)
    with pytest.raises(views.UserError, match="non-empty list"):
        views.embed_api(lab, M, adapter, "not a list")


def test_results_table_has_paper_columns_and_ours():
    df = views.results_table()
    assert list(df["task"])[-1] == "average" and "MiniCPM-2B paper after" in df.columns
    assert df.loc[df.task == "average", "MiniCPM-2B paper after"].item() == 83.84
    assert views.results_chart(df) is not None


def test_sts_example_is_a_real_pair():
    a, b, note = views.sts_example(seed=1)
    assert a and b and "/ 5" in note


def test_hub_adapters_only_from_the_registry_and_only_online(lab, monkeypatch):
    with pytest.raises(views.UserError, match="not a published adapter"):
        views.compare(lab, M, "hub:someone/anything", "a", "b")
    import embedlab.lab as L

    monkeypatch.setitem(L.MODELS, M, __import__("dataclasses").replace(L.MODELS[M], hub_adapters=("org/ad",)))
    monkeypatch.setattr(L, "hub_reachable", lambda: False)
    with pytest.raises(views.UserError, match="not reachable"):
        views.compare(lab, M, "hub:org/ad", "a", "b")
    assert all(not v.startswith("hub:") for _, v in lab.adapter_choices(M))


def test_a_model_that_fails_to_load_is_reported_and_the_lab_goes_on(tmp_path, monkeypatch):
    """The real Lab.encoder path: the loader fails (corrupt weights, missing package) -> the user reads why;
    the next request loads again and, once the model loads, works."""
    import embedlab.lab as lab_mod
    from embedlab.loading import ModelUnavailableError

    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    calls = {"n": 0}

    def flaky(key, device=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ModelUnavailableError(f"{key}: the cached weights are corrupt (sha256 mismatch); delete and retry")
        return tiny_encoder("llama")

    monkeypatch.setattr(lab_mod, "load_encoder", flaky)
    with pytest.raises(views.UserError, match="cached weights are corrupt") as e:
        views.compare(lab, M, "none", "a dog", "a cat")
    assert "Traceback" not in str(e.value)
    assert "base" in views.compare(lab, M, "none", "a dog", "a cat") and calls["n"] == 2


def test_exported_seeds_serve_a_fresh_cache_without_recomputing(lab, adapter, tmp_path, monkeypatch):
    """`python -m embedlab build-cache` in small: export, then a Lab with an empty cache and only the seeds
    answers the map and search views without encoding a corpus or fitting UMAP again."""
    import embedlab.lab as lab_mod
    from embedlab.corpora import builtin

    monkeypatch.setattr(lab, "adapter_choices", lambda key: [("tiny", adapter), ("none", "none")])
    files = lab.export_seeds(M, corpora=("topics",), out=tmp_path / "seed")
    assert any(f.suffix == ".npz" for f in files) and sum(f.name == "manifest.json" for f in files) == 4

    fresh = Lab(cache_dir=tmp_path / "empty", seed_dir=tmp_path / "seed")
    enc = lab.encoder(M)
    monkeypatch.setattr(fresh, "encoder", lambda key: enc)
    monkeypatch.setattr(lab_mod.TwinMaps, "fit", lambda *a, **k: pytest.fail("UMAP refitted"))
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda texts, **k: real(texts, **k) if len(texts) <= 2
                        else pytest.fail(f"corpus of {len(texts)} re-encoded"))
    s = fresh.side(M, adapter)
    m = fresh.map(s, builtin("topics"))
    assert m["base_xy"].shape == (len(builtin("topics")), 2) and m["has_tuned"]
    assert fresh.search(s, builtin("topics"), "a football match", k=3)["tuned"]

    # build-cache again on a machine whose only copy is the seed folder itself (maps and vectors read from it)
    monkeypatch.setattr(fresh, "adapter_choices", lambda key: [("tiny", adapter), ("none", "none")])
    again = fresh.export_seeds(M, corpora=("topics",), out=tmp_path / "seed")
    assert [f.name for f in again] == [f.name for f in files]
    assert np.allclose(np.load(next((tmp_path / "seed" / "maps").glob("*.npz")))["base_xy"], m["base_xy"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_map_cache_file_is_detected_and_rebuilt(lab, adapter, damage):
    from embedlab.corpora import builtin

    s = lab.side(M, adapter)
    first = lab.map(s, builtin("topics"))
    path = next((lab.cache_dir / "maps").glob("*.npz"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF  # inside a member: its CRC no longer matches
    else:
        data = bytearray(b"not a zip file at all" * 10)
    path.write_bytes(bytes(data))
    fresh = Lab(cache_dir=lab.cache_dir, seed_dir=None)
    fresh.encoder = lab.encoder
    again = fresh.map(fresh.side(M, adapter), builtin("topics"))
    assert again["base_xy"].shape == first["base_xy"].shape
    assert np.load(path)["base_xy"].shape == first["base_xy"].shape  # rewritten whole


def test_training_records_show_every_shipped_adapter_and_notes(tmp_path):
    _, df = views.training_records()
    assert "smollm2-135m/nli-cft" in set(df["adapter"]) and df["device"].notna().all()
    rec = {"device": "CPU", "training": {"steps": 3, "loss_curve": [[1, 2.0], [2, 1.5]], "wall_seconds": 120},
           "config": {"lr": 1e-3}, "note": "paused mid-run"}
    for name, r in [("a", rec), ("b", {k: v for k, v in rec.items() if k != "note"})]:
        (tmp_path / "m" / name).mkdir(parents=True)
        (tmp_path / "m" / name / "training.json").write_text(json.dumps(r))
    (tmp_path / "m" / "c").mkdir()
    (tmp_path / "m" / "c" / "training.json").write_text("{not json")  # skipped, not fatal
    fig, df = views.training_records(tmp_path)
    assert list(df["adapter"]) == ["m/a", "m/b"] and list(df["note"]) == ["paused mid-run", ""]
    assert list(df["minutes"]) == [2.0, 2.0] and fig is not None
    _, df = views.training_records(tmp_path / "nothing")
    assert df.empty
