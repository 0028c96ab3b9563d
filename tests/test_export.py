"""`python -m embedlab export`: a side as a sentence-transformers folder that embeds exactly as the lab does.

Unit tests run the whole export on the tiny random models (tests/tiny.py); the integration test exports the
shipped adapters and a base model and compares `SentenceTransformer(OUT).encode` with the lab's vectors on
STSBenchmark test sentences at batch sizes 1 and 64 (bench/export_parity.py measures the full set).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import embedlab.export as X
from embedlab.encode import tokenize
from embedlab.registry import MODELS
from embedlab.side import Side
from tiny import BERT_SPEC, LLAMA_SPEC, make_adapter, tiny_encoder, tiny_load_side

TEXTS = ["a man is playing a guitar", "the dog", "a woman is eating food in the park . " * 6, "cat",
         "a cat is running with the dog on the guitar", "5 dogs ? !"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a.astype(np.float64) * b, axis=1)


@pytest.fixture
def tiny_sides(tmp_path, monkeypatch):
    """The tiny models registered, an adapter for the tiny Llama, and the lab's loader serving tiny encoders."""
    monkeypatch.setitem(MODELS, LLAMA_SPEC.key, LLAMA_SPEC)
    monkeypatch.setitem(MODELS, BERT_SPEC.key, BERT_SPEC)
    folder = tmp_path / "adapters" / "cft"
    make_adapter(folder, "llama")
    monkeypatch.setattr(X, "load_side", tiny_load_side)
    return {"llama+cft": Side(LLAMA_SPEC.key, "cft", None, folder, folder, "0" * 64, None),
            "llama": Side(LLAMA_SPEC.key), "bert": Side(BERT_SPEC.key)}


def st_vectors(out, texts, batch_size):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(out), device="cpu").encode(texts, batch_size=batch_size, convert_to_numpy=True)


def test_prompt_parts():
    assert X.prompt_parts("{s}") == ("", "")
    assert X.prompt_parts("query: {s}") == ("query: ", "")
    assert X.prompt_parts("{{x}} {s} !") == ("{x} ", " !")
    with pytest.raises(X.ExportError, match="no"):
        X.prompt_parts("{{s}}")


@pytest.mark.parametrize("spec", [LLAMA_SPEC, BERT_SPEC], ids=["causal", "encoder"])
def test_exported_tokenizer_adds_what_the_lab_adds(tmp_path, spec):
    """BOS (add_bos) + text + EOS by the post-processor, cut to max_length keeping both; right padding."""
    from transformers import AutoTokenizer

    enc = tiny_encoder("llama" if spec.causal else "bert", max_length=12)
    tok = X.export_tokenizer(enc.tokenizer, spec, 12, tmp_path / "scratch")
    tok.save_pretrained(str(tmp_path / "tok"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    want, cut = tokenize(enc.tokenizer, spec, TEXTS, 12)
    assert cut >= 1  # the long text is cut: truncation is tested
    for t in (tok, again):
        assert t(TEXTS, truncation=True)["input_ids"] == want
        assert t.padding_side == "right" and t.model_max_length == 12
    if spec.causal:
        assert want[0][0] == enc.tokenizer.bos_token_id and all(x[-1] == again.eos_token_id for x in want)
        assert again.eos_token == spec.eos_token


@pytest.mark.parametrize("key,pooling", [("llama+cft", "lasttoken"), ("llama", "lasttoken"), ("bert", "mean")])
def test_tiny_export_matches_the_lab_at_batch_sizes_1_and_64(tmp_path, tiny_sides, key, pooling):
    side = tiny_sides[key]
    r = X.export_side(side, tmp_path / "out")
    assert r.min_cosine >= 0.9999 and r.path == (tmp_path / "out").absolute() and r.note == ""
    want = X.lab_vectors(side, TEXTS * 12)
    for bs in (1, 64):
        got = st_vectors(r.path, TEXTS * 12, bs)
        assert got.shape == want.shape and cosines(got, want).min() >= 0.9999, bs
    files = {p.name for p in r.path.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "modules.json", "README.md", X.RECORD_FILE} <= files
    assert json.loads((r.path / "1_Pooling" / "config.json").read_text())["pooling_mode"] == pooling
    record = json.loads((r.path / X.RECORD_FILE).read_text())
    assert record["side"]["spec"] == side.spec and record["dtype"] == "float32"
    assert oct((r.path / "model.safetensors").stat().st_mode & 0o777) != oct(0o600)  # not left private
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_merge_changes_the_weights_and_base_export_does_not(tmp_path, tiny_sides):
    from safetensors.torch import load_file

    merged = load_file(str(X.export_side(tiny_sides["llama+cft"], tmp_path / "a").path / "model.safetensors"))
    base = load_file(str(X.export_side(tiny_sides["llama"], tmp_path / "b").path / "model.safetensors"))
    plain = tiny_encoder("llama").model.state_dict()
    assert not any("lora" in k for k in merged)
    q = next(k for k in merged if k.endswith("q_proj.weight"))
    assert not torch.equal(merged[q], base[q])
    assert all(torch.equal(base[k], plain[k]) for k in base)


def test_prefix_prompt_becomes_the_default_prompt_and_a_suffix_a_note(tmp_path, tiny_sides):
    side = tiny_sides["llama+cft"]
    pre = Side(side.model, side.adapter, None, side.weights, side.folder, side.sha256, "a {s}")
    r = X.export_side(pre, tmp_path / "pre")
    cfg = json.loads((r.path / "config_sentence_transformers.json").read_text())
    assert cfg["default_prompt_name"] == X.PROMPT_NAME and cfg["prompts"][X.PROMPT_NAME] == "a "
    assert cosines(st_vectors(r.path, TEXTS, 4), X.lab_vectors(pre, TEXTS)).min() >= 0.9999
    post = Side(side.model, side.adapter, None, side.weights, side.folder, side.sha256, "{s} .")
    r = X.export_side(post, tmp_path / "post")
    assert "{s} ." in r.note and "format" in (r.path / "README.md").read_text()
    cfg = json.loads((r.path / "config_sentence_transformers.json").read_text())
    assert cfg["default_prompt_name"] is None
    formatted = [f"{t} ." for t in TEXTS]  # the user applies the template, as the card says
    assert cosines(st_vectors(r.path, formatted, 4), X.lab_vectors(post, TEXTS)).min() >= 0.9999


def test_bf16_export(tmp_path, tiny_sides):
    from safetensors import safe_open

    r = X.export_side(tiny_sides["llama+cft"], tmp_path / "out", dtype="bf16")
    assert r.dtype == "bfloat16" and r.min_cosine >= X.MIN_COSINE[torch.bfloat16]
    with safe_open(str(r.path / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_out_folder_rules(tmp_path, tiny_sides):
    side = tiny_sides["llama"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(X.ExportError, match="not a folder"):
        X.export_side(side, tmp_path / "file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(X.ExportError, match="not empty"):
        X.export_side(side, mine)
    with pytest.raises(X.ExportError, match="earlier export"):  # --force never deletes other files
        X.export_side(side, mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    first = X.export_side(side, tmp_path / "empty")  # an empty folder is fine
    with pytest.raises(X.ExportError, match="--force"):
        X.export_side(side, first.path)
    stamp = json.loads((first.path / X.RECORD_FILE).read_text())["exported_at"]
    again = X.export_side(tiny_sides["llama+cft"], first.path, force=True)
    assert json.loads((again.path / X.RECORD_FILE).read_text())["side"]["adapter"] == "cft" and stamp
    with pytest.raises(X.ExportError, match="dtype"):
        X.export_side(side, tmp_path / "x", dtype="int4")


def test_a_failed_check_leaves_nothing(tmp_path, tiny_sides, monkeypatch):
    monkeypatch.setitem(X.MIN_COSINE, torch.float32, 1.5)  # no export can pass
    with pytest.raises(X.ExportError, match="differ"):
        X.export_side(tiny_sides["llama"], tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["adapters"]  # the fixture's; no staging, no out


def test_cli_refuses_with_one_line(tmp_path, capsys):
    from embedlab.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert main(["export", "minilm-l6", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "no-such-model", str(tmp_path / "o2")]) == 2
    assert "unknown model" in capsys.readouterr().err


# --- the real models --------------------------------------------------------------------------------------

SIDES = ["smollm2-135m+nli-cft", "gemma3-270m+nli-cft", "gemma3-270m"]
N_SENTENCES = 300  # of STSBenchmark test's distinct sentences; the full set: bench/export_parity.py


def stsb_sentences(n: int | None = None) -> list[str]:
    """STSBenchmark test's distinct sentences; ``n``: a fixed sample that keeps the longest ones."""
    from embedlab.sts import load_task

    t = load_task("STSBenchmark")
    uniq = list(dict.fromkeys(t.s1 + t.s2))
    if n is None or n >= len(uniq):
        return uniq
    longest = sorted(uniq, key=len)[-20:]
    rest = [s for s in uniq if s not in set(longest)]
    rng = np.random.default_rng(0)
    return longest + [rest[i] for i in sorted(rng.choice(len(rest), n - len(longest), replace=False))]


@pytest.mark.integration
@pytest.mark.parametrize("spec", SIDES)
def test_export_gives_the_labs_vectors_on_stsbenchmark(tmp_path, spec):
    from embedlab.side import parse_side

    texts = stsb_sentences(N_SENTENCES)
    side = parse_side(spec)
    r = X.export_side(side, tmp_path / "out")
    want = X.lab_vectors(side, texts)
    for bs in (1, 64):
        got = st_vectors(r.path, texts, bs)
        c = cosines(got, want)
        assert c.min() >= 0.9999, (spec, bs, float(c.min()), texts[int(c.argmin())])


def test_the_export_loads_its_side_in_fp32_whatever_the_precision_setting(monkeypatch):
    """On a bf16 host (EMBEDLAB_PRECISION=auto on this CPU) the export must still merge fp32 weights and check
    itself against fp32 vectors: bf16's rounding alone is below its 0.9999 cosine bar."""
    import embedlab.loading as loading

    seen = {}
    monkeypatch.setenv("EMBEDLAB_PRECISION", "bf16")
    monkeypatch.setattr(loading, "load_encoder", lambda key, **kw: seen.update(kw) or tiny_encoder("llama"))
    enc, name = X.load_side(Side(LLAMA_SPEC.key))
    assert seen["precision"] == "fp32" and name is None
