"""Property-based bad input at every entry point: app handlers, upload parsers, eval CLI, train.py config and data.

Each entry point either works or says what is wrong in a short message. A handler
that falls through to the generic "Sorry, that failed on the server" message counts
as a failure here: that path is for bugs. (The same over the running app's API is in
test_app_api.py.)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import train
from embedlab import cli
from embedlab.features import common, maps, pairs
from embedlab.features import search as search_tab
from embedlab.corpora import MAX_TEXTS, InputError, parse_corpus, parse_pairs
from embedlab.encode import TextError, validate_texts
from embedlab.nli import DataError, read_triplets
from conftest import examples
from tiny import A, B, make_adapter, tiny_encoder

M = "smollm2-135m"
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
# Any code point, lone surrogates included (JSON can carry them), control characters, all scripts.
ANY_CHAR = st.characters(codec=None, categories=None)
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=200),
    st.text(st.sampled_from(list(" \t\r\n\x00\x0b\x0c\u200b\u2028\ufeff")), max_size=20),  # whitespace-ish only
    st.sampled_from(["x" * 1_000_000, "Ein Hund läuft. 狗在跑。 Собака бежит. كلب يجري 🐕", "a\x00b", "\ud800",
                     "\n".join(["line"] * 5000), "é" * 25_000]),
)
ANY_VALUE = st.one_of(TEXT, st.none(), st.integers(), st.floats(), st.lists(st.text(max_size=5), max_size=3),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())


def is_clear_message(e: Exception) -> bool:
    msg = str(e)
    return 0 < len(msg) < 400 and "Traceback" not in msg and not msg.startswith("Sorry, that failed")


@pytest.fixture
def lab(lab, adapter):
    """conftest's lab (two tiny models, "tiny-llama" (A) and "tiny-bert" (B), as loadable sides) and its adapter."""
    lab.adapter_path = adapter  # a side spec
    return lab


def cache_is_intact(cache_dir: Path) -> bool:
    """Every chunk of the embedding cache matches the sha256 its manifest records."""
    for manifest in (cache_dir / "embeddings").glob("*/manifest.json"):
        for name, sha in json.loads(manifest.read_text()).items():
            if hashlib.sha256((manifest.parent / name).read_bytes()).hexdigest() != sha:
                return False
    return True


# --- the encoder's own check ------------------------------------------------------------------
@given(st.lists(TEXT, max_size=6))
@settings(max_examples=examples(150), deadline=None, suppress_health_check=FIXTURES)
def test_validate_texts_accepts_or_names_the_problem(texts):
    try:
        ok = validate_texts(texts)
    except TextError as e:
        assert is_clear_message(e)
        return
    assert ok == texts and all(t.strip() and len(t) <= 20_000 for t in ok)


@given(st.lists(st.text(ANY_CHAR, min_size=1, max_size=300), min_size=1, max_size=5))
@settings(max_examples=examples(40), deadline=None)
def test_whatever_passes_validation_encodes_to_unit_vectors(texts):
    enc = _tiny()
    try:
        texts = validate_texts(texts)
    except TextError:
        return
    v = enc.embed(texts)
    assert v.shape == (len(texts), enc.dim) and np.isfinite(v).all() and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)


_ENC = []


def _tiny():
    if not _ENC:
        _ENC.append(tiny_encoder("llama"))
    return _ENC[0]


# --- uploads ------------------------------------------------------------------------------------
CSVISH = st.one_of(
    st.binary(max_size=3000),
    st.text(ANY_CHAR, max_size=3000).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=30), min_size=1, max_size=4),
             max_size=30).map(lambda rows: "\n".join(",".join(r) for r in rows).encode()),
    st.sampled_from([b"", b"\xff\xfe\x00t\x00e\x00x\x00t", b"text,label\n\"unclosed,quote\n", b"sentence\nhello\n",
                     b"s1,s2,gold\na,b,not-a-number\n", b"a\tb\t7\n" * 3000, b"\xc3\x28 invalid utf-8",
                     ("word " * 300_000).encode(), b"text\n" + b"line\n" * (MAX_TEXTS + 5)]),
)


@given(CSVISH, st.sampled_from(["up.txt", "up.csv", "up.tsv", "UP.CSV", "noext"]))
@settings(max_examples=examples(200), deadline=None, suppress_health_check=FIXTURES)
def test_corpus_upload_parses_or_explains(data, name):
    try:
        c = parse_corpus(data, name)
    except InputError as e:
        assert is_clear_message(e)
        return
    assert 0 < len(c) <= MAX_TEXTS and len(c.labels) == len(c)
    assert all(t and t == t.strip() and all(ch >= " " or ch == "\t" for ch in t) for t in c.texts)


@given(CSVISH)
@settings(max_examples=examples(200), deadline=None, suppress_health_check=FIXTURES)
def test_pair_upload_parses_or_explains(data):
    try:
        s1, s2, gold = parse_pairs(data)
    except InputError as e:
        assert is_clear_message(e)
        return
    assert len(s1) == len(s2) > 0 and (gold is None or (len(gold) == len(s1) and np.isfinite(gold).all()))


# --- app handlers (tiny model behind the real Lab) ------------------------------------------------
SIDES = [A, B, "ADAPTER", f"{A}+tiny-nli@3", f"{B}+tiny-nli", "none", "/etc", "../../x", "", None, 3, "gpt-17", M + "@1"]


@given(a=ANY_VALUE, b=ANY_VALUE, side_a=st.sampled_from(SIDES), side_b=st.one_of(st.sampled_from(SIDES), ANY_VALUE))
@settings(max_examples=examples(60), deadline=None, suppress_health_check=FIXTURES)
@example(a="x" * 1_000_000, b="y", side_a=A, side_b="ADAPTER")
@example(a="\ud800", b="fine", side_a=B, side_b="ADAPTER")
def test_compare_handler(lab, a, b, side_a, side_b):
    side_a, side_b = (lab.adapter_path if s == "ADAPTER" else s for s in (side_a, side_b))
    try:
        out = pairs.compare(lab, side_a, side_b, a, b)
    except common.UserError as e:
        assert is_clear_message(e), str(e)
        return
    assert "cosine" in out


@given(query=ANY_VALUE, k=ANY_VALUE, corpus=st.sampled_from(["topics", "upload", "nope", None, 7]))
@settings(max_examples=examples(60), deadline=None, suppress_health_check=FIXTURES)
@example(query="a dog", k=float("inf"), corpus="topics")  # int(inf) raised OverflowError: the generic message
@example(query="a dog", k=float("nan"), corpus="topics")
@example(query="a dog", k=10**30, corpus="topics")
@example(query="a dog", k=True, corpus="topics")
def test_search_handler(lab, query, k, corpus):
    try:
        tb, tt, note, files = search_tab.search(lab, A, lab.adapter_path, corpus, None, query, k)
    except common.UserError as e:
        assert is_clear_message(e), str(e)
        return
    assert "FAISS" in note and 1 <= len(tb) <= 50


@given(texts=st.one_of(ANY_VALUE, st.lists(ANY_VALUE, max_size=5), st.just(["ok"] * 300)), tuned=st.booleans())
@settings(max_examples=examples(60), deadline=None, suppress_health_check=FIXTURES)
def test_embed_handler(lab, texts, tuned):
    try:
        out = pairs.embed_api(lab, B, lab.adapter_path, texts, tuned)
    except common.UserError as e:
        assert is_clear_message(e), str(e)
        return
    assert len(out["a"]) == len(texts) and len(out["a"][0]) == out["dim_a"] and (out["b"] is not None) == tuned


@given(text=st.one_of(ANY_VALUE, CSVISH.map(lambda b: b.decode("utf-8", "replace"))))
@settings(max_examples=examples(60), deadline=None, suppress_health_check=FIXTURES)
def test_batch_pairs_and_upload_handlers(lab, tmp_path, text):
    try:
        df, *_ = pairs.batch_pairs(lab, A, A, text, None)
        assert len(df) > 0
    except common.UserError as e:
        assert is_clear_message(e), str(e)
    f = tmp_path / "upload.txt"
    f.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else b"")
    try:
        corpus, note = maps.upload_corpus(str(f))
        assert len(corpus) > 0 and "texts" in note
    except common.UserError as e:
        assert is_clear_message(e), str(e)


def test_bad_input_leaves_the_cache_intact(lab):
    """Good and bad requests mixed: every cached chunk still matches its checksum afterwards."""
    for q in ["a dog", "", "\ud800", "x" * 5000, "a cat"]:
        try:
            search_tab.search(lab, A, lab.adapter_path, "topics", None, q, 5)
        except common.UserError:
            pass
    assert any((lab.cache_dir / "embeddings").iterdir()) and cache_is_intact(lab.cache_dir)


# --- eval CLI -------------------------------------------------------------------------------------
@given(st.one_of(
    st.tuples(st.just("--model"), st.text(ANY_CHAR, min_size=1, max_size=30).filter(lambda s: s not in cli.MODELS)),
    st.tuples(st.just("--tasks"), st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=20)),
    st.tuples(st.just("--limit"), st.integers(max_value=1).map(str)),
    st.tuples(st.just("--limit"), st.text(max_size=5).filter(lambda s: not s.strip().lstrip("-").isdigit())),
    st.tuples(st.just("--sick"), st.text(max_size=8)),
))
@settings(max_examples=examples(80), deadline=None, suppress_health_check=FIXTURES)
def test_eval_cli_refuses_bad_arguments_with_a_message(capsys, arg):
    flag, value = arg
    if flag == "--tasks" and value.startswith("-"):
        value = "x" + value
    try:
        rc = cli.main(["eval", flag, value] if flag != "--tasks" else ["eval", "--model", "not-a-model", flag, value])
    except SystemExit as e:  # argparse: usage + "error: ..." on stderr, exit 2
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "error" in err and "Traceback" not in err


def test_eval_cli_adapter_that_is_not_an_adapter(capsys, tmp_path, monkeypatch):
    """`python -m embedlab eval --adapter X` on a model that loads (the tiny one, through load_encoder's own
    adapter step): every bad adapter is refused with its own reason, and a good one gets through to the
    evaluation (so the refusals come from the adapter checks, not from the model being unavailable)."""
    import embedlab.loading as loading

    def tiny_load(key, adapter=None, device=None, **kw):
        enc = tiny_encoder("llama")
        if adapter is not None:
            loading.attach_adapter(enc, adapter)
        return enc

    monkeypatch.setattr(loading, "load_encoder", tiny_load)
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "adapter_config.json").write_text("{not json")
    (tmp_path / "badjson" / "adapter_model.safetensors").write_bytes(b"x")
    make_adapter(tmp_path / "other", base="some-other-model")
    make_adapter(tmp_path / "pickled")
    (tmp_path / "pickled" / "adapter_model.safetensors").rename(tmp_path / "pickled" / "adapter_model.bin")
    make_adapter(tmp_path / "good")
    cases = [(tmp_path / "badjson", "not valid JSON"), (tmp_path / "missing", "is not a folder"),
             (Path("/etc"), "no adapter_model.safetensors"), (tmp_path / "other", "trained for 'some-other-model'"),
             (tmp_path / "pickled", "pickled weights")]
    for path, why in cases:
        assert cli.main(["eval", "--model", M, "--adapter", str(path), "--tasks", "STS12", "--limit", "5"]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and why in err and "Traceback" not in err, (path, err)
    assert cli.main(["eval", "--model", M, "--adapter", str(tmp_path / "good"), "--tasks", "STS12", "--limit", "5"]) == 0
    assert "STS12" in capsys.readouterr().out


# --- train.py -------------------------------------------------------------------------------------
FIELD_VALUES = st.one_of(st.integers(min_value=-5, max_value=10**6), st.floats(allow_nan=True), st.text(max_size=10),
                         st.none(), st.booleans(), st.lists(st.integers(), max_size=2))


@given(st.dictionaries(st.sampled_from([f.name for f in train.dataclasses.fields(train.Config)] + ["bogus"]),
                       FIELD_VALUES, max_size=4))
@settings(max_examples=examples(150), deadline=None, suppress_health_check=FIXTURES)
def test_train_config_file_is_checked(tmp_path_factory, capsys, values):
    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(json.dumps(values, allow_nan=True))
    try:
        cfg = train.parse_config(["--config", str(path)])
    except SystemExit as e:
        assert e.code == 2 and "error:" in capsys.readouterr().err
        return
    for f in train.dataclasses.fields(train.Config):  # accepted: every field has its declared type
        v = getattr(cfg, f.name)
        want = {int: int, float: (int, float), str: str, bool: bool, list[str]: list}.get(f.type, str)  # precision: a Literal of str
        assert isinstance(v, want) and not (f.type is int and isinstance(v, bool)), (f.name, v)


@pytest.mark.parametrize("content", [b"{", b"[1, 2]", b"\xff\xfe", b"", b'{"steps": "many"}', b'{"lr": -1}',
                                     b'{"eval_tasks": "STS12"}', b'{"steps": 1e999}'])
def test_train_config_bad_files(tmp_path, capsys, content):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--config", str(path)])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_config(["--config", str(tmp_path / "missing.json")])


@given(CSVISH)
@settings(max_examples=examples(200), deadline=None, suppress_health_check=FIXTURES)
def test_training_file_reads_or_explains(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("tri") / "t.csv"
    path.write_bytes(data)
    try:
        t = read_triplets(path)
    except DataError as e:
        assert is_clear_message(e)
        return
    assert len(t.anchor) == len(t.positive) >= 2 and len(t.negative) in (0, len(t.anchor))  # no hard_neg: pairs only


def test_train_cli_reports_data_and_model_errors_without_a_traceback(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a,b,c\n1,2,3\n")
    good = tmp_path / "good.csv"
    good.write_text("sent0,sent1,hard_neg\na,b,c\nd,e,f\n")
    from embedlab import ROOT as root
    for args, msg in [(["--data", str(bad)], "lacks column"), (["--data", str(good), "--model", "gpt-17"], "gpt-17"),
                      (["--data", str(tmp_path / "none.csv")], "does not exist")]:
        r = subprocess.run([sys.executable, str(root / "train.py"), *args, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
