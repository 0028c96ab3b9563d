import numpy as np
import pytest
import torch

from embedlab.encode import TextError, collate, length_batches, pool, tokenize
from tiny import tiny_encoder

SENTS = ["a man is playing a guitar .", "the dog", "a woman is eating food in the park with a cat .",
         "cat", "the man is running in the park ."]


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_batched_equals_one_at_a_time(kind):
    enc = tiny_encoder(kind)
    batched = enc.embed(SENTS, batch_size=3)
    single = np.stack([enc.embed([s])[0] for s in SENTS])
    assert batched.dtype == np.float32 and batched.shape == (len(SENTS), 32)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert (np.einsum("ij,ij->i", batched, single) >= 0.9999).all()


def test_order_is_input_order_despite_length_sorting():
    enc = tiny_encoder("llama")
    a = enc.embed(SENTS)
    b = enc.embed(SENTS[::-1])[::-1]
    assert np.allclose(a, b, atol=1e-5)


def test_eos_appended_after_truncated_text_and_reported():
    enc = tiny_encoder("llama", max_length=8)
    long = " ".join(["dog"] * 50)
    ids, n_trunc = tokenize(enc.tokenizer, enc.spec, [long, "cat"], enc.max_length)
    eos = enc.tokenizer.convert_tokens_to_ids("</s>")
    bos = enc.tokenizer.bos_token_id
    assert n_trunc == 1
    assert len(ids[0]) == 8 and ids[0][0] == bos and ids[0][-1] == eos
    assert ids[1][0] == bos and ids[1][-1] == eos
    _, report = enc.embed([long, "cat"], return_report=True)
    assert report.n_truncated == 1 and report.n_texts == 2


def test_bert_truncation_keeps_sep():
    enc = tiny_encoder("bert", max_length=6)
    ids, n_trunc = tokenize(enc.tokenizer, enc.spec, ["a b c d e f g h", "a b"], 6)
    sep = enc.tokenizer.sep_token_id
    assert n_trunc == 1 and len(ids[0]) == 6 and ids[0][-1] == sep and ids[1][-1] == sep


@pytest.mark.parametrize("bad", [[], [""], ["   \n\t"], ["ok", None], ["ok", 3], "a plain string"])
def test_bad_texts_rejected(bad):
    with pytest.raises(TextError):
        tiny_encoder("llama").embed(bad)


def test_huge_text_rejected():
    with pytest.raises(TextError, match="characters"):
        tiny_encoder("llama").embed(["a" * 200_000])


def test_pool_eos_left_and_right_padding():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert pool(h, left, "eos").flatten().tolist() == [3.0, 7.0]
    assert pool(h, right, "eos").flatten().tolist() == [1.0, 7.0]
    assert pool(h, right, "mean").flatten().tolist() == [0.5, 5.5]


def test_collate_left_padding_positions():
    b = collate([[5, 6, 7], [8]], pad_id=0, left=True, device=torch.device("cpu"))
    assert b["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    r = collate([[5, 6, 7], [8]], pad_id=0, left=False, device=torch.device("cpu"))
    assert r["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and "position_ids" not in r


def test_length_batches_bounds_and_coverage():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500).tolist()
    batches = list(length_batches(lengths, batch_size=16, max_tokens=512))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 512
    # sorted: each batch's lengths are contiguous in the descending order
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)


def test_length_batches_asks_a_function_cap_once_per_batch_after_the_one_before_is_used():
    """A cap given as a function is asked as each batch is formed, after the consumer is done with the batch
    before: a consumer that times each batch sizes the next (the serving app's background batches)."""
    limit, sizes = [40], []
    for b in length_batches([10] * 12, batch_size=64, max_tokens=lambda: limit[0]):
        sizes.append(len(b))
        limit[0] = 10  # what the consumer measured: the next batch follows it
    assert sizes == [4, 1, 1, 1, 1, 1, 1, 1, 1]


def test_background_batches_in_a_serving_process_are_sized_to_the_time_budget(monkeypatch):
    """In a serving process (compute.configure_for_serving's seconds per background batch) an encoder times its
    background batches and sizes the next from their cost per padded token, within BACKGROUND_BATCH_TOKENS; its
    interactive passes are neither capped nor timed, and the vectors are the same either way. A fake clock makes
    every padded token cost 1 ms."""
    import types

    from embedlab import compute, encode

    enc = tiny_encoder("llama")
    texts = [f"sentence {i} is about a dog" for i in range(60)]
    widths = []
    clock = [0.0]
    real = encode.embed_batch

    def timed_pass(model, batch, spec, **extra):
        n, width = batch["input_ids"].shape
        widths.append((n, width))
        clock[0] += 0.001 * n * width
        return real(model, batch, spec, **extra)

    monkeypatch.setattr(encode, "embed_batch", timed_pass)
    monkeypatch.setattr(encode, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    want = enc.embed(texts)  # interactive: one pass, untimed
    assert len(widths) == 1 and enc._s_per_token is None
    monkeypatch.setattr(compute, "_background_batch_s", 0.1)
    widths.clear()
    got = enc.embed(texts, priority=compute.BACKGROUND)
    assert np.allclose(got, want, atol=1e-5)
    padded = [n * w for n, w in widths]
    lo, hi = compute.BACKGROUND_BATCH_TOKENS
    assert padded[0] <= lo and enc._s_per_token == pytest.approx(0.001)  # unmeasured: the least
    assert all(p <= 100 for p in padded[1:]) and max(padded[1:]) > 2 * lo, padded  # 0.1 s at 1 ms a token
    monkeypatch.setattr(compute, "_background_batch_s", 0.001)  # less than a batch of the least size takes
    widths.clear()
    enc.embed(texts[:20], priority=compute.IDLE)
    assert all(n * w <= lo for n, w in widths[1:]) and all(n * w > lo // 2 for n, w in widths[1:-1]), widths


def _switched_reference(enc, texts, adapter, batch_size=64, max_tokens=4096):
    """The former forward path (before ``Encoder.embed``): the adapter switched on the model
    (``set_adapter``, or PEFT's ``disable_adapter`` for the base), then plain forward passes over the
    same length-sorted batches, with no per-row ``adapter_names``."""
    import contextlib

    from embedlab.encode import embed_batch

    ids, _ = tokenize(enc.tokenizer, enc.spec, texts, enc.max_length, enc.prompt_for(adapter))
    out = np.empty((len(texts), enc.dim), dtype=np.float32)
    if adapter is not None:
        enc.model.set_adapter(adapter)
    with (enc.model.disable_adapter() if adapter is None else contextlib.nullcontext()), torch.inference_mode():
        for idx in length_batches([len(x) for x in ids], batch_size, max_tokens):
            batch = collate([ids[i] for i in idx], enc.pad_id, left=enc.spec.causal, device=enc.device)
            out[idx] = embed_batch(enc.model, batch, enc.spec).numpy()
    return out


def test_naming_the_adapter_per_row_gives_the_switched_models_vectors_bit_for_bit(tmp_path):
    """``embed(texts, name)`` routes every row through PEFT's ``adapter_names`` (None = base): the vectors
    are exactly those of the former path that switched the model's adapter, base and adapters alike."""
    from embedlab.loading import attach_adapter
    from tiny import make_adapter

    enc = tiny_encoder("llama")
    make_adapter(tmp_path / "a", seed=1)
    make_adapter(tmp_path / "b", seed=2)
    (tmp_path / "b" / "training.json").write_text('{"prompt": "the {s} is"}')
    a, b = attach_adapter(enc, tmp_path / "a").name, attach_adapter(enc, tmp_path / "b").name
    texts = SENTS * 3
    for name in [None, a, b, None, a]:  # in an order that would catch state left behind by the previous call
        assert np.array_equal(enc.embed(texts, name), _switched_reference(enc, texts, name)), name
        assert np.array_equal(enc.embed(texts, name, batch_size=4, priority=10),
                              _switched_reference(enc, texts, name, batch_size=4)), name
    mixed = enc.embed(texts + texts + texts, [None] * 15 + [a] * 15 + [b] * 15)
    for i, name in enumerate([None, a, b]):
        assert np.allclose(mixed[15 * i:15 * (i + 1)], _switched_reference(enc, texts, name), atol=1e-6), name
