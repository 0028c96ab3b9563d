import json

import numpy as np
import pytest

from embedlab.adapters import AdapterError, inspect_adapter
from embedlab.loading import attach_adapter
from tiny import LLAMA_SPEC, make_adapter, tiny_encoder

SENTS = ["a man is playing a guitar .", "the dog is running in the park ."]


@pytest.fixture
def adapter_dir(tmp_path):
    make_adapter(tmp_path / "ad")
    return tmp_path / "ad"


def test_adapter_changes_embeddings_and_switches_off(adapter_dir):
    enc = tiny_encoder("llama")
    base = enc.encode(SENTS)
    info = attach_adapter(enc, adapter_dir)
    tuned = enc.encode(SENTS)
    off = enc.encode(SENTS, use_adapter=False)
    assert info.r == 4 and info.targets == ("q_proj", "v_proj") and len(info.sha256) == 64
    assert np.allclose(off, base, atol=1e-6)  # switching off gives the base model back, no reload
    assert (np.einsum("ij,ij->i", tuned, base) < 0.999).all()
    assert np.allclose(enc.encode(SENTS, use_adapter=info.name), tuned, atol=1e-6)


def test_two_adapters_on_one_backbone(tmp_path):
    make_adapter(tmp_path / "a", seed=1)
    make_adapter(tmp_path / "b", seed=2)
    enc = tiny_encoder("llama")
    a = attach_adapter(enc, tmp_path / "a")
    ea = enc.encode(SENTS)
    b = attach_adapter(enc, tmp_path / "b")
    assert enc.active_adapter == b.name
    assert not np.allclose(enc.encode(SENTS), ea, atol=1e-4)
    assert np.allclose(enc.encode(SENTS, use_adapter=a.name), ea, atol=1e-6)
    assert attach_adapter(enc, tmp_path / "a").name == a.name and len(enc.adapters) == 2


def test_pickle_weights_refused(adapter_dir):
    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickle"):
        inspect_adapter(adapter_dir, LLAMA_SPEC)


def test_adapter_for_another_base_refused(tmp_path):
    make_adapter(tmp_path / "x", base="google/gemma-2b-it")
    with pytest.raises(AdapterError, match="trained for"):
        inspect_adapter(tmp_path / "x", LLAMA_SPEC)


def test_truncated_weights_refused(adapter_dir):
    w = adapter_dir / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(AdapterError, match="corrupt or truncated"):
        inspect_adapter(adapter_dir, LLAMA_SPEC)


def test_garbage_weights_and_config_refused(adapter_dir):
    (adapter_dir / "adapter_config.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        inspect_adapter(adapter_dir, LLAMA_SPEC)
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "tiny-llama"}))
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError):
        inspect_adapter(adapter_dir, LLAMA_SPEC)


def test_oversized_weights_refused(adapter_dir, monkeypatch):
    import embedlab.adapters as ad

    monkeypatch.setattr(ad, "MAX_ADAPTER_BYTES", 100)
    with pytest.raises(AdapterError, match="limit"):
        inspect_adapter(adapter_dir, LLAMA_SPEC)


@pytest.mark.parametrize("bad", ["", "   ", None, 42, "/definitely/not/here"])
def test_not_an_adapter(bad):
    with pytest.raises(AdapterError):
        inspect_adapter(bad, LLAMA_SPEC)


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        inspect_adapter(tmp_path / "empty", LLAMA_SPEC)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(AdapterError, match="not a folder"):
        inspect_adapter(tmp_path / "f.txt", LLAMA_SPEC)


def test_outside_allowed_roots_refused(adapter_dir, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(AdapterError, match="outside"):
        inspect_adapter(adapter_dir, LLAMA_SPEC, allowed_roots=[allowed])
    # a symlink inside the allowed folder pointing outside is still outside
    (allowed / "link").symlink_to(adapter_dir)
    with pytest.raises(AdapterError, match="outside"):
        inspect_adapter(allowed / "link", LLAMA_SPEC, allowed_roots=[allowed])
    assert inspect_adapter(adapter_dir, LLAMA_SPEC, allowed_roots=[tmp_path]).r == 4


def test_adapter_with_wrong_shapes_refused_at_attach(tmp_path):
    make_adapter(tmp_path / "ad")
    enc = tiny_encoder("bert")  # BERT spec: base check fails first
    with pytest.raises(AdapterError):
        attach_adapter(enc, tmp_path / "ad")


def test_inactive_adapter_means_base(adapter_dir):
    enc = tiny_encoder("llama")
    base = enc.encode(SENTS)
    attach_adapter(enc, adapter_dir, activate=False)
    assert enc.active_adapter is None
    assert np.allclose(enc.encode(SENTS), base, atol=1e-6)  # use_adapter=True with none active -> base


def test_base_and_tuned_in_one_pass_equal_separate_passes(adapter_dir):
    enc = tiny_encoder("llama")
    attach_adapter(enc, adapter_dir)
    name = enc.active_adapter
    texts = ["a man is playing a guitar", "the dog", "a woman is eating food in the park today"]
    base, tuned = enc.encode_sides(texts, name)
    assert np.allclose(base, enc.encode(texts, use_adapter=False), atol=1e-5)
    assert np.allclose(tuned, enc.encode(texts, use_adapter=name), atol=1e-5)
    assert not np.allclose(base, tuned, atol=1e-3)
    b2, none = enc.encode_sides(texts, None)
    assert none is None and np.allclose(b2, base, atol=1e-5)
    with pytest.raises(KeyError):
        enc.encode_sides(texts, "not-loaded")


def test_interactive_texts_are_remembered_per_text_and_adapter(adapter_dir, tmp_path):
    from embedlab.cache import EmbeddingCache

    enc = tiny_encoder("llama")
    name = attach_adapter(enc, adapter_dir, activate=False).name
    cache = EmbeddingCache(tmp_path / "c", memory_texts=3)
    calls = []
    real = enc.encode_sides
    enc.encode_sides = lambda texts, adapter, **kw: calls.append(list(texts)) or real(texts, adapter, **kw)
    a, b, c = "a man is playing a guitar", "the dog", "a woman is eating food"
    base, tuned = cache.sides(enc, [a, b], name)
    ref_b, ref_t = real([a, b], name)
    assert base.dtype == np.float32 and base.shape == (2, enc.dim)
    assert np.allclose(base, ref_b, atol=1e-5) and np.allclose(tuned, ref_t, atol=1e-5)
    # one sentence edited: only the new one is embedded; the order of the answer follows the request
    base2, tuned2 = cache.sides(enc, [c, a, c], name)
    assert calls == [[a, b], [c]]
    assert np.allclose(base2[1], base[0]) and np.allclose(tuned2[1], tuned[0]) and np.allclose(base2[0], base2[2])
    # answers are copies: a caller writing into one cannot change what the next request gets
    base2[1] += 1
    assert np.array_equal(cache.sides(enc, [a], name)[0][0], base[0]) and len(calls) == 2
    # the base side is its own entry: no adapter -> tuned None, embedded once more without the adapter
    only_base, none = cache.sides(enc, [a], None)
    assert none is None and np.allclose(only_base[0], base[0], atol=1e-5) and calls[-1] == [a]
    # bounded: 3 entries, least recently used dropped first (b was)
    cache.sides(enc, [b], name)
    assert calls[-1] == [b]
    with pytest.raises(KeyError, match="not loaded"):
        cache.sides(enc, [a], "not-loaded")
