"""Pairs tab: compare, batch pairs, /embed, the STS example (tiny random models)."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from embedlab.features import common, pairs
from tiny import A, B

COS = re.compile(r"\*\*(-?[0-9.]+)\*\*")


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


def test_embed_api(lab, adapter):
    out = pairs.embed_api(lab, B, adapter, ["a dog", "a cat"])
    assert out["dim_a"] == 48 and out["dim_b"] == 32 and len(out["a"]) == 2 and len(out["b"][0]) == 32
    assert out["side_a"] == B and out["side_b"] == adapter
    with pytest.raises(common.UserError, match="at most 256"):
        pairs.embed_api(lab, A, adapter, ["x"] * 300)
    with pytest.raises(common.UserError, match="non-empty list"):
        pairs.embed_api(lab, A, adapter, "not a list")


def test_sts_example_is_a_real_pair():
    a, b, note = pairs.sts_example(seed=1)
    assert a and b and "/ 5" in note


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
