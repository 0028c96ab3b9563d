"""The features' handlers and computations on tiny random models (the Lab's model loader is swapped for the tiny ones)."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab import warmup
from embedlab.adapters import AdapterError
from embedlab.features import common, evaluate, maps, pairs
from embedlab.features import search as search_tab
from embedlab.features import sides as sides_tab
from embedlab.side import parse_side
from embedlab.lab import Lab
from tiny import A, B, make_adapter, tiny_encoder, tiny_models

M = "smollm2-135m"  # a real model: these tests never load it
COS = re.compile(r"\*\*(-?[0-9.]+)\*\*")


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A lab serving two tiny random models, registered as "tiny-llama" (A) and "tiny-bert" (B)."""
    encs = tiny_models(monkeypatch)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: encs[key])
    return lab


@pytest.fixture
def adapter(tmp_path, monkeypatch):
    """The side spec of a tiny adapter for A, in a folder the app may load adapters from."""
    root = tmp_path / "adapters"
    make_adapter(root / "tiny-nli")
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(root))
    return f"{A}+tiny-nli"


def test_compare_base_and_tuned(lab, adapter):
    out = pairs.compare(lab, A, adapter, "a man is playing a guitar", "a woman is eating food")
    assert f"A · `{A}`" in out and f"B · `{A}+tiny-nli`" in out
    cos = COS.findall(out)
    assert len(cos) == 2 and cos[0] != cos[1]
    out = pairs.compare(lab, A, A, "a man", "a dog")
    assert COS.findall(out)[0] == COS.findall(out)[1]


def test_cross_model_compare_matches_each_model_alone(lab, adapter):
    """Side A on one model, side B on another (different architectures): each cosine is that model's own."""
    enc_a, enc_b = lab.encoder(A), lab.encoder(B)
    x, y = "a man is playing a guitar", "a dog is running in the park"
    r = pairs.compare_api(lab, B, adapter, x, y)
    va = enc_b.embed([x, y], None)
    (name,) = enc_a.adapters
    vb = enc_a.embed([x, y], name)
    assert r["side_a"] == B and r["side_b"] == adapter
    assert abs(r["cosine_a"] - float(va[0] @ va[1])) < 1e-5 and abs(r["cosine_b"] - float(vb[0] @ vb[1])) < 1e-5


@pytest.mark.parametrize("a,b,msg", [("", "x", "sentence A is empty"), ("   ", "x", "empty"),
                                     ("x" * 5000, "y", "limit"), (None, "x", "must be text"), ("\x00\x01", "x", "empty")])
def test_compare_bad_input(lab, a, b, msg):
    with pytest.raises(common.UserError, match=msg):
        pairs.compare(lab, A, A, a, b)


def test_bad_side_specs_get_a_message_listing_the_valid_ones(lab, adapter, tmp_path):
    with pytest.raises(common.UserError, match="side A: unknown model 'gpt-17'") as e:
        pairs.compare(lab, "gpt-17", A, "a", "b")
    assert "Valid sides here: " in str(e.value) and f"{A}+tiny-nli" in str(e.value) and B in str(e.value)
    make_adapter(tmp_path / "elsewhere")  # an adapter outside the allowed folders: no spec names it
    for bad, msg in [(str(tmp_path / "elsewhere"), "is not spelled"), (f"{A}+elsewhere", "no adapter 'elsewhere'"),
                     (f"{A}+..", "is not spelled"), (f"{A}+tiny-nli/../../etc", "is not spelled"),
                     (f"{A}+../etc", "is not spelled"), (f"{B}+tiny-nli", "no adapter 'tiny-nli' for tiny-bert")]:
        with pytest.raises(common.UserError, match=msg) as e:
            pairs.compare(lab, A, bad, "a", "b")
        assert "side B" in str(e.value) and f"{A}+tiny-nli" in str(e.value), bad


def test_unexpected_errors_become_a_short_message(lab, monkeypatch):
    monkeypatch.setattr(pairs, "cosines", lambda *a: 1 / 0)
    with pytest.raises(common.UserError, match="ZeroDivisionError") as e:
        pairs.compare(lab, A, A, "a", "b")
    assert "Traceback" not in str(e.value)


def test_batch_pairs_with_gold_and_downloads(lab, adapter):
    text = "a man is playing\ta man plays\t4.5\nthe dog\tthe cat\t1.0\na woman eats\ta woman is eating food\t4.0\na park\tguitar\t0.2"
    df, fig, summary, files = pairs.batch_pairs(lab, A, adapter, text, None)
    assert isinstance(df, pd.DataFrame) and len(df) == 4 and df[f"cos B: {A}+tiny-nli"].notna().all()
    assert df[f"cos A: {A} (base)"].notna().all() and f"A `{A}`" in summary and f"B `{A}+tiny-nli`" in summary
    assert "Spearman" in summary and fig is not None
    csv_path, json_path = map(Path, files)
    assert csv_path.read_text().count("\n") == 5
    rec = json.loads(json_path.read_text())
    assert rec["side_a"]["spec"] == A and rec["side_a"]["adapter_sha256"] is None
    assert rec["side_b"]["spec"] == adapter and len(rec["side_b"]["adapter_sha256"]) == 64 and "libraries" in rec["environment"]


@pytest.mark.parametrize("text,msg", [("", "paste pairs"), ("only one sentence", "two sentences"),
                                      ("a\tb\tnot-a-number", "not a number"), ("a\tb\t1\nc\td", "every line or on none")])
def test_batch_pairs_bad_input(lab, text, msg):
    with pytest.raises(common.UserError, match=msg):
        pairs.batch_pairs(lab, A, A, text, None)


def test_batch_pairs_bad_files(lab, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"caf\xe9\tbar\n")
    with pytest.raises(common.UserError, match="not UTF-8"):
        pairs.batch_pairs(lab, A, A, None, str(bad))
    many = tmp_path / "many.tsv"
    many.write_text("a\tb\n" * 3000)
    with pytest.raises(common.UserError, match="limit"):
        pairs.batch_pairs(lab, A, A, None, str(many))


def test_upload_corpus_validation(tmp_path):
    ok = tmp_path / "c.csv"
    ok.write_text("text,label\n" + "\n".join(f"sentence {i},L{i % 2}" for i in range(10)))
    corpus, note = maps.upload_corpus(str(ok))
    assert len(corpus) == 10 and set(corpus.labels) == {"L0", "L1"} and "10 texts" in note
    for content, msg in [(b"\x00\x01\x02binary", "binary"), (b"a\nb\n", "at least 4"), (b"\xff\xfe\xfd", "not UTF-8"),
                         (b"x\n" * 25_000, "limit"), (b"", "empty")]:
        p = tmp_path / "u.txt"
        p.write_bytes(content)
        with pytest.raises(common.UserError, match=msg):
            maps.upload_corpus(str(p))
    nocol = tmp_path / "n.csv"
    nocol.write_text("sentence,label\na,b\nc,d\ne,f\ng,h\n")
    with pytest.raises(common.UserError, match="'text' column"):
        maps.upload_corpus(str(nocol))


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


def test_embed_api(lab, adapter):
    out = pairs.embed_api(lab, B, adapter, ["a dog", "a cat"])
    assert out["dim_a"] == 48 and out["dim_b"] == 32 and len(out["a"]) == 2 and len(out["b"][0]) == 32
    assert out["side_a"] == B and out["side_b"] == adapter
    with pytest.raises(common.UserError, match="at most 256"):
        pairs.embed_api(lab, A, adapter, ["x"] * 300)
    with pytest.raises(common.UserError, match="non-empty list"):
        pairs.embed_api(lab, A, adapter, "not a list")


def test_results_table_has_paper_columns_and_ours():
    df = evaluate.results_table()
    assert list(df["task"])[-1] == "average" and "MiniCPM-2B paper after" in df.columns
    assert df.loc[df.task == "average", "MiniCPM-2B paper after"].item() == 83.84
    assert evaluate.results_chart(df) is not None


def test_sts_example_is_a_real_pair():
    a, b, note = pairs.sts_example(seed=1)
    assert a and b and "/ 5" in note


def test_hub_adapters_only_from_the_registry_and_only_online(lab, monkeypatch):
    with pytest.raises(common.UserError, match="not a published adapter"):
        pairs.compare(lab, A, f"{A}+someone/anything", "a", "b")
    import embedlab.side as S

    monkeypatch.setitem(S.MODELS, A, __import__("dataclasses").replace(S.MODELS[A], hub_adapters=("org/ad",)))
    monkeypatch.setattr(S, "hub_reachable", lambda: False)
    with pytest.raises(common.UserError, match="not reachable"):
        pairs.compare(lab, A, f"{A}+org/ad", "a", "b")
    assert f"{A}+org/ad" not in S.valid_specs()


def test_a_model_that_fails_to_load_is_reported_and_the_lab_goes_on(tmp_path, monkeypatch):
    """The real Lab.encoder path: the loader fails (corrupt weights, missing package) -> the user reads why;
    the next request loads again and, once the model loads, works."""
    import embedlab.lab as lab_mod
    from embedlab.loading import ModelUnavailableError

    tiny_models(monkeypatch)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    calls = {"n": 0}

    def flaky(key, device=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ModelUnavailableError(f"{key}: the cached weights are corrupt (sha256 mismatch); delete and retry")
        return tiny_encoder("llama")

    monkeypatch.setattr(lab_mod, "load_encoder", flaky)
    with pytest.raises(common.UserError, match="cached weights are corrupt") as e:
        pairs.compare(lab, A, A, "a dog", "a cat")
    assert "Traceback" not in str(e.value) and not lab.status  # no "loading" left in the status line
    assert "cosine" in pairs.compare(lab, A, A, "a dog", "a cat") and calls["n"] == 2


def test_at_most_two_models_are_loaded_and_the_status_line_says_which_one_loads(tmp_path, monkeypatch):
    """The real pool with a count cap (max_models=2; by default the pool is sized by memory, see
    test_availability.py): a cross-model request holds both of its models; a request for a third model
    waits until they are released, then the least recently used one is evicted. While a model loads the
    status line names it."""
    import threading

    import embedlab.lab as lab_mod
    import embedlab.side as side_mod
    from embedlab.registry import MODELS

    encs = tiny_models(monkeypatch)
    monkeypatch.setitem(MODELS, "tiny-3", __import__("dataclasses").replace(MODELS[A], key="tiny-3", base_ids=("tiny-3",)))
    monkeypatch.setattr(side_mod, "available_models", lambda: {A: (True, ""), B: (True, ""), "tiny-3": (True, "")})
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None, max_models=2)
    loading, release = threading.Event(), threading.Event()
    lines = []

    def load(key, device=None):
        if key == "tiny-3":
            loading.set()
            release.wait(30)
        return encs.get(key) or tiny_encoder("llama", seed=3)

    monkeypatch.setattr(lab_mod, "load_encoder", load)
    a, b, c = (parse_side(x) for x in (A, B, "tiny-3"))
    with lab.hold(a, b):
        assert set(lab._models) == {A, B}
        t = threading.Thread(target=lambda: lines.append(pairs.compare(lab, "tiny-3", "tiny-3", "a", "b")), daemon=True)
        t.start()
        t.join(1.0)
        assert t.is_alive() and not loading.is_set()  # waits: both slots are held by this cross-model request
        assert "waiting for tiny-3" in lab.status_line()
    assert loading.wait(10)
    assert "Loading tiny-3" in lab.status_line()
    release.set()
    t.join(30)
    assert lines and set(lab._models) == {B, "tiny-3"} and "Loading" not in lab.status_line()
    with pytest.raises(lab_mod.ModelsBusy, match="needs 3 models at once"):
        with lab.hold(a, b, c):
            pass


def test_exported_seeds_serve_a_fresh_cache_without_recomputing(lab, adapter, tmp_path, monkeypatch):
    """`python -m embedlab build-cache` in small: export, then a Lab with an empty cache and only the seeds
    answers the map and search views without encoding a corpus or fitting UMAP again."""
    from embedlab.corpora import builtin

    sides = common.sides(A, adapter)
    files = warmup.export_seeds(lab, sides, corpora=("topics",), out=tmp_path / "seed")
    assert any(f.suffix == ".npz" for f in files) and sum(f.name == "manifest.json" for f in files) == 4

    fresh = Lab(cache_dir=tmp_path / "empty", seed_dir=tmp_path / "seed")
    enc = lab.encoder(A)
    monkeypatch.setattr(fresh, "encoder", lambda key: enc)
    monkeypatch.setattr(maps.TwinMaps, "fit", lambda *a, **k: pytest.fail("UMAP refitted"))
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda texts, a=None, **k: real(texts, a, **k) if len(texts) <= 2
                        else pytest.fail(f"corpus of {len(texts)} re-encoded"))
    m = maps.twin_map(fresh, *sides, builtin("topics"))
    assert m["xy_a"].shape == (len(builtin("topics")), 2) and not np.allclose(m["xy_a"], m["xy_b"])
    assert search_tab.top_k(fresh, *sides, builtin("topics"), "a football match", k=3)["b"]

    # build-cache again on a machine whose only copy is the seed folder itself (maps and vectors read from it)
    again = warmup.export_seeds(fresh, sides, corpora=("topics",), out=tmp_path / "seed")
    assert [f.name for f in again] == [f.name for f in files]
    assert np.allclose(np.load(next((tmp_path / "seed" / "maps").glob("*.npz")))["base_xy"], m["xy_a"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_map_cache_file_is_detected_and_rebuilt(lab, adapter, damage):
    from embedlab.corpora import builtin

    sides = common.sides(A, adapter)
    first = maps.twin_map(lab, *sides, builtin("topics"))
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
    again = maps.twin_map(fresh, *sides, builtin("topics"))
    assert again["xy_a"].shape == first["xy_a"].shape
    assert np.load(path)["base_xy"].shape == first["xy_a"].shape  # rewritten whole


def test_training_records_show_every_shipped_adapter_and_notes(tmp_path):
    """One row per shipped adapter; the records' notes (a paragraph each) folded below the table, not a column
    (it made the table wider than a 1400 px page)."""
    _, df, notes = evaluate.training_records()
    assert "smollm2-135m/nli-cft" in set(df["adapter"]) and df["device"].notna().all() and "note" not in df
    assert notes.startswith("<details>") and "**gemma3-270m/nli-cft**: Re-trained on 2026-11-28" in notes
    rec = {"device": "CPU", "training": {"steps": 3, "loss_curve": [[1, 2.0], [2, 1.5]], "wall_seconds": 120},
           "config": {"lr": 1e-3}, "note": "paused *mid-run*", "dev": {"STSBenchmark-dev": 72.25712}}
    for name, r in [("a", rec), ("b", {k: v for k, v in rec.items() if k != "note"})]:
        (tmp_path / "m" / name).mkdir(parents=True)
        (tmp_path / "m" / name / "training.json").write_text(json.dumps(r))
    (tmp_path / "m" / "c").mkdir()
    (tmp_path / "m" / "c" / "training.json").write_text("{not json")  # skipped, not fatal
    fig, df, notes = evaluate.training_records(tmp_path)
    assert list(df["adapter"]) == ["m/a", "m/b"] and "note" not in df
    assert "Notes on 1 of these runs" in notes and r"**m/a**: paused \*mid-run\*" in notes and "m/b" not in notes
    assert list(df["minutes"]) == [2.0, 2.0] and list(df["STS-B dev"])[0] == 72.26 and fig is not None
    _, df, notes = evaluate.training_records(tmp_path / "nothing")
    assert df.empty and notes == ""


# --- public traffic (issue 11): each attack as a regression test ------------------------------------
def test_an_upload_that_collapses_to_under_4_distinct_texts_is_refused(tmp_path):
    p = tmp_path / "dups.txt"
    p.write_text("x\nx\nx\nx\n  x  \ny\n")
    with pytest.raises(common.UserError, match="found 2 distinct non-empty text.*at least 4"):
        maps.upload_corpus(str(p))


def _adapter_with_record(folder: Path, record: str | bytes | None = None) -> Path:
    make_adapter(folder)
    if record is not None:
        (folder / "training.json").write_bytes(record if isinstance(record, bytes) else record.encode())
    return folder


def test_model_card_reads_no_record_outside_the_allowed_folders(lab, adapter, tmp_path):
    secret = tmp_path / "elsewhere"
    make_adapter(secret)
    (secret / "training.json").write_text('{"device": "SECRET-CONTENT", "training": {"steps": 7}}')
    with pytest.raises(common.UserError, match="no adapter 'elsewhere'") as e:
        sides_tab.model_card(f"{A}+elsewhere")
    assert "SECRET" not in str(e.value) and str(tmp_path) not in str(e.value)
    # inside the allowed folders, the record comes from the validated adapter
    root = tmp_path / "adapters"
    _adapter_with_record(root / "rec", '{"device": "CPU", "training": {"steps": 12, "effective_contrastive_batch": 32}}')
    card = sides_tab.model_card(f"{A}+rec")
    assert "trained on CPU, 12 steps × 32 triplets" in card and f"`{A}+rec`" in card
    (root / "notadapter").mkdir()  # a folder with only a training.json is not an adapter: its record is not shown
    (root / "notadapter" / "training.json").write_text('{"device": "SHOWN"}')
    with pytest.raises(common.UserError, match="no adapter 'notadapter'") as e:
        sides_tab.model_card(f"{A}+notadapter")
    assert "SHOWN" not in str(e.value)


def test_a_fifo_or_a_huge_training_record_neither_blocks_nor_loads(lab, adapter, tmp_path):
    import os
    import threading

    from embedlab.side import side_choices

    root = tmp_path / "adapters"
    fifo = _adapter_with_record(root / "fifo")
    os.mkfifo(fifo / "training.json")  # opening it for reading would block until a writer comes
    result = {}

    def card() -> None:
        try:
            result["choices"] = side_choices()  # the pickers' labels read each record: not this one
            result["card"] = sides_tab.model_card(f"{A}+fifo")
        except common.UserError as e:
            result["error"] = str(e)

    t = threading.Thread(target=card, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "model_card blocked on a FIFO"
    assert result["error"] == "training.json is not a regular file" and (f"{A}+fifo") in dict(result["choices"]).values()
    from embedlab.adapters import AdapterError, read_training_record

    with pytest.raises(AdapterError, match="not a regular file"):  # refused without blocking
        read_training_record(fifo)
    big = _adapter_with_record(root / "big", b'{"device": "' + b"x" * (2 << 20) + b'"}')
    with pytest.raises(common.UserError, match="larger than"):
        sides_tab.model_card(f"{A}+big")
    with pytest.raises(AdapterError, match="larger than"):
        read_training_record(big)


def test_a_link_out_of_the_allowed_folders_is_no_adapter_and_its_folder_is_not_listed(lab, adapter, tmp_path,
                                                                                        monkeypatch):
    outside = tmp_path / "outside"
    make_adapter(outside)
    (tmp_path / "adapters" / "link").symlink_to(outside)
    listed = []
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: listed.append(self) or real_iterdir(self))
    with pytest.raises(common.UserError, match="no adapter 'link'"):
        pairs.compare(lab, A, f"{A}+link", "a", "b")
    assert not [p for p in listed if outside in [p.resolve(), *p.resolve().parents]]


def test_gemma_card_shows_its_eos_token_and_data_is_escaped(lab, adapter, tmp_path, monkeypatch):
    import embedlab.side as side_mod

    real = side_mod.available_models
    monkeypatch.setattr(side_mod, "available_models", lambda: {**real(), "gemma3-270m": (True, "")})
    card = sides_tab.model_card("gemma3-270m")
    assert "pooling: EOS token '&lt;eos&gt;'" in card  # "<eos>" raw is an HTML tag: the browser swallowed it
    root = tmp_path / "adapters"
    _adapter_with_record(root / "x_y", '{"device": "<img src=x onerror=alert(1)>*bold*", "training": {"steps": "[a](b)"}}')
    card = sides_tab.model_card(f"{A}+x_y")
    assert "<img" not in card and "&lt;img" in card and r"\*bold\*" in card and r"\[a\](b)" in card
    assert r"**x\_y**" in card
    assert common.md("a|b`c") == r"a\|b\`c"


def test_the_side_card_says_the_precision_its_model_runs_in(lab, monkeypatch):
    """Issue 21: the status line said the precision, the side's card did not. The card's details say it, and how
    the model runs in bf16 (registry data: ModelSpec.bf16 and bf16_fp32_modules)."""
    import dataclasses

    import embedlab.precision as precision
    from embedlab.registry import MODELS

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV, "fp32")
    assert "Precision: **fp32**" in sides_tab.model_card(A)
    monkeypatch.setenv(precision.ENV, "auto")
    card = sides_tab.model_card(A)
    assert "Precision: **bf16 (auto)**: float32 weights under bf16 autocast" in card and "stay float32" not in card
    assert card.index("Precision") > card.index("<details>")  # in the folded details: the visible line stays short
    monkeypatch.setitem(MODELS, A, dataclasses.replace(MODELS[A], bf16_fp32_modules=(r"layers\.0",)))
    assert "under bf16 autocast; some layers stay float32" in sides_tab.model_card(A)
    monkeypatch.setitem(MODELS, A, dataclasses.replace(MODELS[A], bf16="weights"))
    assert "weights cast to bf16, LoRA weights float32" in sides_tab.model_card(A)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert "Precision: **fp32 (auto)**" in sides_tab.model_card(A)
    assert "Precision: **bf16 (auto)**" in sides_tab.model_card(A, device="cuda")  # a GPU: bf16 whatever the CPU


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


def test_batch_pairs_are_bounded_by_characters(lab):
    from embedlab.corpora import MAX_PAIR_CHARS

    text = "\n".join(f"{'a' * 140} {i}\t{'b' * 140} {i}" for i in range(1000))
    with pytest.raises(common.UserError, match=f"limit is {MAX_PAIR_CHARS:,}"):
        pairs.batch_pairs(lab, A, A, text, None)


def test_batch_pairs_run_at_background_priority(lab, adapter, monkeypatch):
    from embedlab.compute import BACKGROUND

    enc = lab.encoder(A)
    seen = []
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda texts, a=None, priority=0: seen.append(priority) or real(texts, a, priority=priority))
    pairs.batch_pairs(lab, A, adapter, "a man\ta dog\na cat\ta park", None)
    assert seen == [BACKGROUND]
    pairs.compare(lab, A, adapter, "a woman", "a guitar")
    assert seen[-1] != BACKGROUND  # a single compare stays interactive


def test_full_evaluation_only_where_the_host_opts_in(lab, monkeypatch):
    import embedlab.evaluation as ev

    limits = []

    def fake_run_eval(enc, tasks, adapter=None, limit=None, progress=None):
        limits.append(limit)
        return {"tasks": {t: 50.0 for t in tasks}, "average": 50.0, "pairs": {t: 10 for t in tasks}, "seconds": 1.0}

    monkeypatch.setattr(ev, "run_eval", fake_run_eval)
    monkeypatch.delenv("EMBEDLAB_FULL_EVAL", raising=False)
    _, note, _ = evaluate.run_evaluation(lab, A, A, ["STS12"], False)
    assert limits[-1] == evaluate.QUICK_PAIRS and "Full-set evaluation is off on this host" in note and "EMBEDLAB_FULL_EVAL=1" in note
    monkeypatch.setenv("EMBEDLAB_FULL_EVAL", "1")
    _, note, _ = evaluate.run_evaluation(lab, A, A, ["STS12"], False)
    assert limits[-1] is None and "Quick" not in note
    with pytest.raises(common.UserError, match="unknown task 'STS99'"):
        evaluate.run_evaluation(lab, A, A, ["STS12", "STS99"], True)


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


def test_uploaded_corpora_cache_is_capped_least_recently_used_first(lab, tmp_path):
    import os

    from embedlab.corpora import builtin, parse_corpus

    s = (parse_side(A),) * 2
    lab.corpus_vectors(*s, builtin("topics"))  # built-in: never evicted
    ups = [parse_corpus("\n".join(f"text {j} of upload {i}" for j in range(300)), f"u{i}.txt") for i in range(3)]
    lab.corpus_vectors(*s, ups[0])
    one = sum(f.stat().st_size for f in lab.embeddings.uploads.rglob("*") if f.is_file())
    lab.embeddings.upload_bytes = int(2.5 * one)  # room for two uploads
    lab.corpus_vectors(*s, ups[1])
    os.utime(next(lab.embeddings.uploads.glob("*")), (1, 1))  # make the folder ordering unambiguous
    for d in lab.embeddings.uploads.iterdir():
        os.utime(d / "manifest.json", (1, 1) if ups[1].sha256[:16] in d.name else (2, 2))
    lab.embeddings._memory.clear()
    lab.corpus_vectors(*s, ups[0])  # read again: now the most recently used
    lab.corpus_vectors(*s, ups[2])
    kept = sorted(d.name[-16:] for d in lab.embeddings.uploads.iterdir())
    assert kept == sorted([ups[0].sha256[:16], ups[2].sha256[:16]])
    assert [d for d in (lab.cache_dir / "embeddings").iterdir() if d.name != "uploads"]  # topics still cached
    maps.twin_map(lab, *s, ups[2])
    assert not (lab.cache_dir / "maps").exists() or not list((lab.cache_dir / "maps").iterdir())  # upload maps: memory only


@pytest.mark.parametrize("word,value", [("false", False), ("no", False), ("0", False), ("off", False),
                                        ("true", True), ("Yes", True), (False, False), (True, True)])
def test_strings_that_say_false_are_false(lab, adapter, word, value):
    out = pairs.embed_api(lab, A, adapter, ["a dog"], word)
    assert (out["b"] is not None) == value


def test_a_non_string_side_is_an_error_not_a_default(lab):
    for bad in [3, None, ["x"], {"p": 1}]:
        with pytest.raises(common.UserError, match="side B must be a side spec"):
            pairs.compare(lab, A, bad, "a", "b")
    with pytest.raises(common.UserError, match="quick must be true or false"):
        evaluate.run_evaluation(lab, A, A, ["STS12"], 5)


def test_a_map_in_memory_does_not_wait_behind_a_map_being_built(lab, adapter, monkeypatch):
    """bench/load.py found users' cached maps queued behind a 20,000-text upload's map: only building waits."""
    import threading

    from embedlab.corpora import builtin

    s = common.sides(A, adapter)
    ready = maps.twin_map(lab, *s, builtin("topics"))  # now in memory
    building, release = threading.Event(), threading.Event()
    real = maps.sample_vectors

    def slow(*a, **k):  # a long build: holds the build lock until released
        building.set()
        release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(maps, "sample_vectors", slow)
    t = threading.Thread(target=lambda: maps.twin_map(lab, *s, builtin("snli")), daemon=True)
    t.start()
    try:
        assert building.wait(30)
        got = {}
        reader = threading.Thread(target=lambda: got.setdefault("m", maps.twin_map(lab, *s, builtin("topics"))), daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "a map from memory waited for another map's build"
        assert got["m"] is ready
    finally:
        release.set()
        t.join(120)
    assert not t.is_alive()


def test_a_csv_field_over_the_csv_limit_gets_a_clear_message(lab, tmp_path):
    """Issue 20 #4: a field over csv's 131,072 characters, in a file or pasted, is refused like /upload_corpus's."""
    big = "s1,s2\n\"" + "x" * 140_000 + "\",b\n"
    with pytest.raises(common.UserError, match="malformed CSV: field larger than field limit") as e:
        pairs.batch_pairs(lab, A, A, big, None)
    assert "Sorry" not in str(e.value)
    f = tmp_path / "big.csv"
    f.write_text(big)
    with pytest.raises(common.UserError, match="malformed CSV: field larger than field limit"):
        pairs.batch_pairs(lab, A, A, None, str(f))


def test_side_specs_take_ascii_digits_and_are_quoted_as_typed(lab, adapter):
    """Issue 20 #5: '@٥٠' is refused (not read as @50); a spec that looks like a path is quoted as typed."""
    with pytest.raises(common.UserError, match="is not spelled"):
        pairs.compare(lab, A, f"{adapter}@\u0665\u0660", "a", "b")
    with pytest.raises(common.UserError) as e:
        pairs.compare(lab, A, f"{A}+/proc/self", "a", "b")
    assert f"'{A}+/proc/self' is not spelled" in str(e.value), str(e.value)


def test_echoed_input_is_cut_short(lab):
    with pytest.raises(common.UserError) as e:
        srch = search_tab.search(lab, A, A, "x" * 1_000_000, None, "a", 5)  # noqa: F841
    assert len(str(e.value)) < 300
