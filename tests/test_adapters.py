import json

import numpy as np
import pytest

from embedlab.adapters import AdapterError, inspect_adapter, snapshots
from embedlab.loading import attach_adapter
from tiny import LLAMA_SPEC, make_adapter, tiny_encoder

SENTS = ["a man is playing a guitar .", "the dog is running in the park ."]


@pytest.fixture
def adapter_dir(tmp_path):
    make_adapter(tmp_path / "ad")
    return tmp_path / "ad"


def test_adapter_changes_embeddings_and_switches_off(adapter_dir):
    enc = tiny_encoder("llama")
    base = enc.embed(SENTS)
    info = attach_adapter(enc, adapter_dir)
    tuned = enc.embed(SENTS, info.name)
    off = enc.embed(SENTS, None)
    assert info.r == 4 and info.targets == ("q_proj", "v_proj") and len(info.sha256) == 64
    assert np.allclose(off, base, atol=1e-6)  # None gives the base model back, no reload
    assert (np.einsum("ij,ij->i", tuned, base) < 0.999).all()
    assert np.array_equal(enc.embed(SENTS, info.name), tuned)


def test_two_adapters_on_one_backbone(tmp_path):
    make_adapter(tmp_path / "a", seed=1)
    make_adapter(tmp_path / "b", seed=2)
    enc = tiny_encoder("llama")
    a = attach_adapter(enc, tmp_path / "a")
    ea = enc.embed(SENTS, a.name)
    b = attach_adapter(enc, tmp_path / "b")
    assert not np.allclose(enc.embed(SENTS, b.name), ea, atol=1e-4)
    assert np.array_equal(enc.embed(SENTS, a.name), ea)
    assert attach_adapter(enc, tmp_path / "a").name == a.name and len(enc.adapters) == 2


def test_attaching_draws_nothing_from_torchs_random_generator(tmp_path):
    """A live run's dropout draws from torch's global generator on its own thread while the lab attaches its frames'
    adapters: an attach that drew from it made the run's losses differ from train.py --config's."""
    import torch

    make_adapter(tmp_path / "a", seed=1)
    make_adapter(tmp_path / "b", seed=2)
    enc = tiny_encoder("llama")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for name in ("a", "b"):  # the first wraps the backbone, the second adds to it
        attach_adapter(enc, tmp_path / name)
    assert torch.equal(torch.get_rng_state(), state)
    assert {p.dtype for n, p in enc.model.named_parameters() if "lora_" in n} == {torch.float32}


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


def test_loading_an_adapter_leaves_the_base_vectors_as_they_were(adapter_dir):
    enc = tiny_encoder("llama")
    base = enc.embed(SENTS)
    attach_adapter(enc, adapter_dir)
    assert np.allclose(enc.embed(SENTS), base, atol=1e-6)  # adapters=None -> base, whatever is loaded


def test_base_and_tuned_in_one_pass_equal_separate_passes(adapter_dir):
    enc = tiny_encoder("llama")
    name = attach_adapter(enc, adapter_dir).name
    texts = ["a man is playing a guitar", "the dog", "a woman is eating food in the park today"]
    out = enc.embed(texts + texts, [None] * 3 + [name] * 3)
    base, tuned = out[:3], out[3:]
    assert np.allclose(base, enc.embed(texts, None), atol=1e-5)
    assert np.allclose(tuned, enc.embed(texts, name), atol=1e-5)
    assert not np.allclose(base, tuned, atol=1e-3)
    assert np.allclose(enc.embed(texts, [None] * 3), base, atol=1e-5)
    with pytest.raises(KeyError):
        enc.embed(texts, [None, "not-loaded", None])
    with pytest.raises(KeyError):
        enc.embed(texts, "not-loaded")
    with pytest.raises(ValueError, match="adapter names"):
        enc.embed(texts, [None])


def test_two_adapters_and_the_base_in_one_pass_equal_separate_passes(adapter_dir, tmp_path):
    """Side A and side B as two adapters (or a snapshot) of one backbone: PEFT's per-row adapter_names."""
    enc = tiny_encoder("llama")
    one = attach_adapter(enc, adapter_dir).name
    make_adapter(tmp_path / "other", seed=7)
    two = attach_adapter(enc, tmp_path / "other").name
    texts = ["a man is playing a guitar", "the dog", "a woman is eating food"]
    out = enc.embed(texts * 3, [one] * 3 + [None] * 3 + [two] * 3)
    for i, use in enumerate([one, None, two]):
        assert np.allclose(out[3 * i:3 * i + 3], enc.embed(texts, use), atol=1e-5), use
    assert not np.allclose(out[:3], out[6:], atol=1e-3)


def test_interactive_texts_are_remembered_per_text_and_adapter(adapter_dir, tmp_path):
    from embedlab.cache import EmbeddingCache

    enc = tiny_encoder("llama")
    name = attach_adapter(enc, adapter_dir).name
    cache = EmbeddingCache(tmp_path / "c", memory_texts=6)
    calls = []
    real = enc.embed
    enc.embed = lambda texts, adapters=None, **kw: calls.append(list(texts)) or real(texts, adapters, **kw)
    a, b, c = "a man is playing a guitar", "the dog", "a woman is eating food"
    base, tuned = cache.sides(enc, [a, b], [None, name])
    ref_b, ref_t = real([a, b], None), real([a, b], name)
    assert base.dtype == np.float32 and base.shape == (2, enc.dim)
    assert np.allclose(base, ref_b, atol=1e-5) and np.allclose(tuned, ref_t, atol=1e-5)
    assert calls == [[a, b, a, b]]  # both sides in one pass
    # one sentence edited: only the new one is embedded; the order of the answer follows the request
    base2, tuned2 = cache.sides(enc, [c, a, c], [None, name])
    assert calls[1:] == [[c, c]]
    assert np.allclose(base2[1], base[0]) and np.allclose(tuned2[1], tuned[0]) and np.allclose(base2[0], base2[2])
    # answers are copies: a caller writing into one cannot change what the next request gets
    base2[1] += 1
    assert np.array_equal(cache.sides(enc, [a], [None])[0][0], base[0]) and len(calls) == 2
    # each (text, side) is its own entry: the tuned vector of a text alone comes from memory too
    (only_tuned,) = cache.sides(enc, [a], [name])
    assert np.allclose(only_tuned[0], tuned[0]) and len(calls) == 2
    # bounded: 6 entries (3 texts x 2 sides), least recently used dropped first (b's were)
    assert len(cache._texts) == 6
    cache.sides(enc, ["a park"], [None, name])
    assert len(cache._texts) == 6 and len(calls) == 3
    cache.sides(enc, [b], [name])
    assert calls[-1] == [b]
    with pytest.raises(KeyError, match="not loaded"):
        cache.sides(enc, [a], ["not-loaded"])


# --- standard (causal-LM) form, conversion, the training record, the adapter's prompt -------------

import dataclasses  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402

from embedlab import adapters as ad  # noqa: E402
from embedlab.encode import collate, tokenize  # noqa: E402

HUB_SPEC = dataclasses.replace(LLAMA_SPEC, base_ids=("tiny-llama", "tiny-org/tiny-llama"))


def keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def causal_lm_with(enc):
    """AutoModelForCausalLM holding the tiny encoder's backbone weights (what a Hub user loads)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(enc.model.config)
    lm.model.load_state_dict(enc.model.state_dict())
    return lm.eval()


def standard_embed(lm, enc, texts, prompt=None):
    """EOS-pooled last hidden state through the causal LM (output_hidden_states), our tokenisation."""
    ids, _ = tokenize(enc.tokenizer, enc.spec, texts, enc.max_length, prompt)
    with torch.no_grad():
        out = lm(**collate(ids, enc.pad_id, True, torch.device("cpu")), output_hidden_states=True)
    return torch.nn.functional.normalize(out.hidden_states[-1][:, -1].float(), dim=-1).numpy()


def test_converted_adapter_embeds_identically_and_loads_the_standard_way(adapter_dir, tmp_path):
    from peft import PeftModel

    old = tmp_path / "old"
    shutil.copytree(adapter_dir, old)
    assert all(k.startswith("base_model.model.layers.") for k in keys(old))  # backbone form
    enc = tiny_encoder("llama")
    assert ad.convert_adapter(adapter_dir, HUB_SPEC, enc.model) is True
    assert ad.convert_adapter(adapter_dir, HUB_SPEC, enc.model) is False  # already standard
    new_keys = keys(adapter_dir)
    assert len(new_keys) == 8 and all(k.startswith("base_model.model.model.layers.") for k in new_keys)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-org/tiny-llama" and cfg["task_type"] == "CAUSAL_LM"

    # our loader: both forms give the same embeddings, bit for bit
    e_old, e_new = tiny_encoder("llama"), tiny_encoder("llama")
    n_old = attach_adapter(e_old, old).name
    e_new.spec = HUB_SPEC
    n_new = attach_adapter(e_new, adapter_dir).name
    assert np.array_equal(e_old.embed(SENTS, n_old), e_new.embed(SENTS, n_new))

    # the standard way: every LoRA tensor applied, and the same embeddings as our encoder
    lm = PeftModel.from_pretrained(causal_lm_with(enc), str(adapter_dir))
    lora_b = [p for n, p in lm.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 4 and all(p.abs().sum() > 0 for p in lora_b)
    assert np.abs(standard_embed(lm, enc, SENTS) - e_new.embed(SENTS, n_new)).max() < 1e-5
    # ... which the old form did not survive: PEFT applies none of its B weights
    lm_old = PeftModel.from_pretrained(causal_lm_with(enc), str(old))
    assert all(p.abs().sum() == 0 for n, p in lm_old.named_parameters() if "lora_B" in n)


def test_loader_fails_loudly_when_lora_tensors_are_missing_or_extra(adapter_dir):
    from safetensors.torch import load_file, save_file

    w = adapter_dir / "adapter_model.safetensors"
    state = load_file(str(w))
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, str(w))
    enc = tiny_encoder("llama")
    base = enc.embed(SENTS)
    with pytest.raises(AdapterError, match="7 of 8 LoRA tensors"):
        attach_adapter(enc, adapter_dir)
    assert not enc.adapters and np.array_equal(enc.embed(SENTS), base)  # left as it was
    save_file({**state, "base_model.model.layers.9.self_attn.q_proj.lora_A.weight": state[first].clone()}, str(w))
    with pytest.raises(AdapterError, match="fit no module"):
        attach_adapter(enc, adapter_dir)
    assert not enc.adapters


def test_a_second_adapter_that_does_not_fit_leaves_the_first(tmp_path):
    from safetensors.torch import load_file, save_file

    make_adapter(tmp_path / "a", seed=1)
    make_adapter(tmp_path / "b", seed=2)
    w = tmp_path / "b" / "adapter_model.safetensors"
    save_file(dict(list(load_file(str(w)).items())[1:]), str(w))
    enc = tiny_encoder("llama")
    a = attach_adapter(enc, tmp_path / "a")
    ea = enc.embed(SENTS, a.name)
    with pytest.raises(AdapterError, match="7 of 8 LoRA tensors.*missing"):
        attach_adapter(enc, tmp_path / "b")
    assert list(enc.adapters) == [a.name] and np.array_equal(enc.embed(SENTS, a.name), ea)


def test_training_record_reader(adapter_dir, tmp_path):
    assert ad.read_training_record(adapter_dir) == {}
    rec = adapter_dir / "training.json"
    rec.write_text(json.dumps({"prompt": "{s}", "model": "tiny-llama"}))
    assert ad.read_training_record(adapter_dir)["model"] == "tiny-llama"
    rec.write_text("[1, 2]")
    with pytest.raises(AdapterError, match="JSON object"):
        ad.read_training_record(adapter_dir)
    rec.write_text(" " * (ad.MAX_JSON_BYTES + 1))
    with pytest.raises(AdapterError, match="larger"):
        ad.read_training_record(adapter_dir)
    rec.unlink()
    os.mkfifo(rec)  # a FIFO nobody writes to: opening it plainly would block forever
    with pytest.raises(AdapterError, match="not a regular file"):
        ad.read_training_record(adapter_dir)
    with pytest.raises(AdapterError, match="not a regular file"):
        inspect_adapter(adapter_dir, LLAMA_SPEC)
    rec.unlink()
    rec.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(AdapterError, match="cannot read"):
        ad.read_training_record(adapter_dir)


@pytest.mark.parametrize("prompt,ok", [("{s}", True), ("query: {s}", True), ("{{x}} {s}", True),
                                        ("no slot", False), ("{s} {t}", False), (42, False), ("{s}" * 400, False)])
def test_prompt_in_the_record_is_validated(adapter_dir, prompt, ok):
    (adapter_dir / "training.json").write_text(json.dumps({"prompt": prompt}))
    if ok:
        assert inspect_adapter(adapter_dir, LLAMA_SPEC).prompt == prompt
    else:
        with pytest.raises(AdapterError, match="prompt"):
            inspect_adapter(adapter_dir, LLAMA_SPEC)


def test_adapter_embeds_with_its_training_prompt_also_beside_the_base(adapter_dir, tmp_path):
    shutil.copytree(adapter_dir, tmp_path / "plain")
    (adapter_dir / "training.json").write_text(json.dumps({"prompt": "the {s} is"}))
    enc = tiny_encoder("llama")
    base = enc.embed(SENTS)
    info = attach_adapter(enc, adapter_dir)
    assert info.prompt == "the {s} is" and enc.prompt_for(info.name) == "the {s} is" and enc.prompt_for(None) == "{s}"
    tuned = enc.embed(SENTS, info.name)
    # the reference: the same weights with the prompt put in by hand
    ref = tiny_encoder("llama")
    ref.spec = dataclasses.replace(ref.spec, prompt="the {s} is")
    assert np.allclose(tuned, ref.embed(SENTS, attach_adapter(ref, tmp_path / "plain").name), atol=1e-6)
    plain = tiny_encoder("llama")
    plain_name = attach_adapter(plain, tmp_path / "plain").name
    assert not np.allclose(tuned, plain.embed(SENTS, plain_name), atol=1e-3)  # the prompt does change the vectors
    # mixed base + tuned pass: each side with its own prompt
    texts = SENTS + ["a cat"]
    out = enc.embed(texts + texts, [None] * len(texts) + [info.name] * len(texts))
    b, t = out[:len(texts)], out[len(texts):]
    assert np.allclose(b[:2], base, atol=1e-5) and np.allclose(t[:2], tuned, atol=1e-5)
    assert np.allclose(enc.embed(SENTS, None), base, atol=1e-6)


def test_cache_key_follows_the_adapters_prompt(adapter_dir, tmp_path):
    from embedlab.cache import embedding_key

    shutil.copytree(adapter_dir, tmp_path / "p")
    (tmp_path / "p" / "training.json").write_text(json.dumps({"prompt": "the {s} is"}))
    enc = tiny_encoder("llama")
    a = attach_adapter(enc, adapter_dir).name
    b = attach_adapter(enc, tmp_path / "p").name
    assert a.split("-")[-1] == b.split("-")[-1]  # same weights
    assert embedding_key(enc, a, "0" * 64) != embedding_key(enc, b, "0" * 64)


# --- model cards ------------------------------------------------------------------------------

def _record(prompt="{s}"):
    scores = {t: 50.0 + i for i, t in enumerate(["STS12", "STS13", "STS14", "STS15", "STS16", "STS17",
                                                  "STSBenchmark", "BIOSSES", "SICK-R"])}
    return {"config": {"lr": 3e-4, "lora_r": 4, "lora_alpha": 8, "temperature": 0.05, "batch_size": 32,
                       "bf16": True, "lora_targets": [], "prompt": "", "out": "runs/x"},
            "command": "python train.py --model tiny-llama --steps 2", "model": "tiny-llama", "prompt": prompt,
            "data": {"path": "assets/data/NLI/snli_all_triplets.csv", "rows": 6317},
            "device": "NVIDIA H100 80GB HBM3", "trained_on": "cuda",
            "training": {"steps": 2, "effective_contrastive_batch": 32, "wall_seconds": 1.5, "world_size": 1},
            "dev": {"STSBenchmark-dev": 70.5}, "test": {"tasks": scores, "average": 54.0, "sick": "mteb"}}


def test_model_card_is_hub_yaml_with_the_nine_results():
    import yaml

    from embedlab.modelcard import render_card

    card = render_card(HUB_SPEC, _record(), "nli-cft")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "tiny-org/tiny-llama" and meta["library_name"] == "peft"
    assert meta["license"] == "other" and meta["datasets"] == ["stanfordnlp/snli"] and "peft" in meta["tags"]
    results = meta["model-index"][0]["results"]
    assert len(results) == 9 and results[6]["dataset"]["type"] == "mteb/stsbenchmark-sts"
    assert results[6]["metrics"][0] == {"type": "cosine_spearman", "value": 56.0}
    assert "NVIDIA H100 80GB HBM3" in body and "python train.py --model tiny-llama --steps 2" in body
    assert "| average | 54.00 |" in body and "STSBenchmark dev: 70.50" in body


def test_model_card_without_a_record_or_command_still_renders():
    from embedlab.modelcard import command_of, render_card

    assert "model-index" not in render_card(LLAMA_SPEC, {}, "x")
    rec = {"config": {"steps": 3, "bf16": False, "lora_targets": ["q_proj"], "prompt": "", "resume": True}}
    assert command_of(rec) == "python train.py --steps 3 --no-bf16 --lora-targets q_proj"


def test_the_cards_usage_snippet_embeds_like_our_encoder(adapter_dir, tmp_path):
    """Run the card's snippet (the standard PEFT load) against the tiny model saved as a causal LM."""
    from embedlab.modelcard import usage_snippet

    enc = tiny_encoder("llama")
    base_dir = tmp_path / "base"
    causal_lm_with(enc).save_pretrained(base_dir)
    enc.tokenizer.save_pretrained(base_dir)
    ad.convert_adapter(adapter_dir, HUB_SPEC, enc.model)
    (adapter_dir / "training.json").write_text(json.dumps({"prompt": "the {s} is"}))
    ours = tiny_encoder("llama")
    ours.spec = HUB_SPEC
    name = attach_adapter(ours, adapter_dir).name
    ns: dict = {}
    exec(usage_snippet(HUB_SPEC, "the {s} is", str(base_dir), str(adapter_dir), ours.max_length), ns)
    texts = SENTS + ["a woman is eating food in the park ."]
    assert np.abs(ns["embed"](texts).numpy() - ours.embed(texts, name)).max() < 1e-5


def test_report_reads_each_adapters_training_record(tmp_path):
    from embedlab.report import adapters_frame

    good, bad = tmp_path / "tiny-llama" / "good", tmp_path / "tiny-llama" / "bad"
    make_adapter(good)
    make_adapter(bad)
    (good / "training.json").write_text(json.dumps(_record()))
    (bad / "training.json").write_text("{not json")
    df = adapters_frame(tmp_path)
    assert list(df["adapter"]) == ["tiny-llama/good"]  # the unreadable record is skipped (with a warning)
    row = df.iloc[0]
    assert row["device"] == "NVIDIA H100 80GB HBM3" and row["lr"] == "0.0003" and row["STS-B dev"] == 70.5
def test_shipped_training_records_read_typed_and_write_back_unchanged(tmp_path):
    """Every shipped training.json: the typed record holds what the file says, and writing it back gives the same JSON."""
    shipped = sorted(ad.ADAPTERS_DIR.glob("*/*/training.json"))
    assert shipped
    for path in shipped:
        data = json.loads(path.read_text())
        rec = ad.TrainingRecord.read(path.parent)
        assert rec.raw == data and rec.model == data["model"] and rec.prompt == data["prompt"]
        assert rec.device == data["device"] and rec.trained_on == data["trained_on"]
        assert rec.dev == data["dev"]["STSBenchmark-dev"] and rec.test_average == data["test"]["average"]
        assert rec.stat("steps") == data["training"]["steps"] and rec.setting("lr") == data["config"]["lr"]
        assert rec.loss_curve == tuple((s, v) for s, v in data["training"]["loss_curve"])
        assert [s.step for s in rec.snapshots] == sorted(e["step"] for e in data["snapshots"])
        assert [s.rel for s in rec.snapshots] == [e["path"] for e in sorted(data["snapshots"], key=lambda e: e["step"])]
        out = tmp_path / path.parent.name
        ad.write_training_record(out, rec.raw)
        assert json.loads((out / "training.json").read_text()) == data


def test_a_training_record_with_a_bad_prompt_or_snapshot_list_is_refused_where_it_matters(tmp_path):
    (tmp_path / "training.json").write_text(json.dumps({"prompt": "no slot", "device": "CPU"}))
    with pytest.raises(AdapterError, match="prompt must be a text"):
        ad.TrainingRecord.read(tmp_path)
    (tmp_path / "training.json").write_text(json.dumps({"device": "CPU", "snapshots": "x", "training": {"steps": 3}}))
    rec = ad.TrainingRecord.read(tmp_path)  # the adapter itself still loads: only its snapshots are unusable
    assert rec.device == "CPU" and rec.stat("steps") == 3 and rec.dev is None and rec.loss_curve == ()
    with pytest.raises(AdapterError, match="snapshots must be a list"):
        rec.snapshots
    assert not ad.TrainingRecord.read(tmp_path / "none") and not ad.TrainingRecord()


def test_snapshots_reads_and_validates(tmp_path):
    (tmp_path / "snapshots" / "step-50").mkdir(parents=True)
    rec = {"snapshots": [{"step": 50, "path": "snapshots/step-50", "loss": 2.5, "dev": 60.0, "random_pair_cosine": 0.5},
                         {"step": 0, "path": None, "loss": None, "dev": 20.0, "random_pair_cosine": 0.9},
                         {"step": 300, "path": ".", "loss": 1.4, "dev": 72.3, "random_pair_cosine": 0.44}]}
    (tmp_path / "training.json").write_text(json.dumps(rec))
    s = snapshots(tmp_path)
    assert [x.step for x in s] == [0, 50, 300]
    assert s[0].path is None and s[1].path == (tmp_path / "snapshots/step-50").resolve() and s[2].path == tmp_path.resolve()
    assert s[1].dev == 60.0 and s[0].loss is None
    for bad in [{"step": -1}, {"step": 1.5}, {"step": "3"}, {"step": 3, "path": "../x"}, {"step": 3, "path": "/etc"},
                {"step": 3, "dev": "high"}, {"step": 3, "loss": True}, "x"]:
        (tmp_path / "training.json").write_text(json.dumps({"snapshots": [bad]}))
        with pytest.raises(AdapterError):
            snapshots(tmp_path)
    (tmp_path / "training.json").write_text(json.dumps({"snapshots": {}}))
    with pytest.raises(AdapterError):
        snapshots(tmp_path)
    (tmp_path / "training.json").unlink()
    assert snapshots(tmp_path) == []
