"""Side specs: model[+adapter][@step] parsed once (embedlab.side), and snapshots as sides, on tiny models."""
import json

import numpy as np
import pytest

from embedlab.features import pairs, sides as sides_tab
from embedlab.lab import Lab
from embedlab.side import MAX_SPEC_CHARS, Side, SideError, parse_side, side_choices, valid_specs
from tiny import A, B, make_adapter, tiny_models


@pytest.fixture
def encs(monkeypatch):
    return tiny_models(monkeypatch)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An allowed adapter folder with a tiny adapter "nli" for A that has training snapshots at steps 0, 2 and 5
    (5 is the adapter itself), as train.py --snapshot-steps writes them."""
    root = tmp_path / "adapters"
    make_adapter(root / "nli", seed=1)
    make_adapter(root / "nli" / "snapshots" / "step-2", seed=2)
    snaps = [{"step": 0, "path": None, "loss": None, "dev": 10.0, "random_pair_cosine": 0.9},
             {"step": 2, "path": "snapshots/step-2", "loss": 1.5, "dev": 20.0, "random_pair_cosine": 0.7},
             {"step": 5, "path": ".", "loss": 0.9, "dev": 30.0, "random_pair_cosine": 0.5}]
    (root / "nli" / "training.json").write_text(json.dumps({"prompt": "the {s}", "device": "CPU", "trained_on": "cpu", "snapshots": snaps}))
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(root))
    return root


def test_valid_specs_parse_to_their_canonical_spelling(encs, root):
    base = parse_side(A)
    assert base == Side(A) and base.spec == A and base.label == f"{A} (base)" and base.weights is None
    tuned = parse_side(f"  {A}+nli ")  # surrounding space is not part of the spec
    assert tuned.spec == f"{A}+nli" and tuned.label == f"{A}+nli" and tuned.weights == root / "nli"
    assert len(tuned.sha256) == 64 and tuned.prompt == "the {s}"
    step2 = parse_side(f"{A}+nli@2")
    assert step2.spec == f"{A}+nli@2" and step2.step == 2 and step2.weights == root / "nli" / "snapshots" / "step-2"
    assert step2.prompt == "the {s}"  # a snapshot embeds with its adapter's training prompt
    step0 = parse_side(f"{A}+nli@0")
    assert step0.weights is None and step0.folder == root / "nli"  # step 0: LoRA's B is zero, the base's vectors
    assert parse_side(f"{A}+nli@5").weights == root / "nli"  # the last snapshot is the adapter itself
    assert parse_side(f"{A}+nli@002") == step2  # one side, however the step is written
    rec = step2.record()
    assert rec["spec"] == f"{A}+nli@2" and rec["step"] == 2 and rec["adapter_sha256"] == step2.sha256
    want = {A, f"{A}+nli", f"{A}+nli@0", f"{A}+nli@2", f"{A}+nli@5", B}
    assert want <= set(valid_specs())
    assert all(parse_side(s).spec == s for s in valid_specs() if s.startswith(("tiny-",)))
    labels = dict((v, k) for k, v in side_choices())
    assert labels[f"{A}+nli"] == f"{A}+nli — adapter · CPU-trained" and "step 2" in labels[f"{A}+nli@2"]


@pytest.mark.parametrize("bad,msg", [
    (None, "side must be a side spec (text)"), (3, "not a number"), (["x"], "not a list"), ("", "side is empty"),
    ("   ", "side is empty"), ("x" * (MAX_SPEC_CHARS + 1), f"at most {MAX_SPEC_CHARS}"),
    ("gpt-17", "unknown model 'gpt-17'"), (f"{A}+nope", f"no adapter 'nope' for {A}"),
    (f"{B}+nli", f"no adapter 'nli' for {B}"),  # an adapter for another model is not this model's
    (f"{A}+nli@7", "no snapshot at step 7; its steps: 0, 2, 5"), (f"{A}@2", "a step needs an adapter"),
    (f"{A}+nli@-1", "is not spelled"), (f"{A}+nli@x", "is not spelled"), (f"{A}++nli", "is not spelled"),
    (f"{A}+../nli", "is not spelled"), (f"{A}+.hidden", "is not spelled"), ("/etc/passwd", "is not spelled"),
    (f"{A}+nli/snapshots", "not a published adapter"), ("a b", "is not spelled"), ("\ud800", "is not spelled"),
])
def test_bad_specs_say_why_and_list_the_valid_ones(encs, root, bad, msg):
    with pytest.raises(SideError) as e:
        parse_side(bad)
    text = str(e.value)
    assert msg in text, text
    listed = text.split("Valid sides here: ", 1)[1]  # an adapter's snapshots folded into one entry
    assert f"{A}, {A}+nli (@0, @2, @5)" in listed and B in listed and "phi-2" not in listed  # loadable ones only


def test_a_model_that_cannot_load_here_is_refused_with_its_reason(encs, monkeypatch):
    import embedlab.side as side_mod

    monkeypatch.setattr(side_mod, "available_models", lambda: {A: (True, ""), B: (False, "its package is not installed")})
    with pytest.raises(SideError, match=f"{B} cannot be loaded here \\(its package is not installed\\)") as e:
        parse_side(B, "side B")
    assert str(e.value).startswith("side B: ") and e.value.args[0].endswith(f"Valid sides here: {A}")


def test_a_malformed_snapshot_list_is_refused_for_steps_only(encs, root):
    (root / "nli" / "training.json").write_text(json.dumps({"snapshots": [{"step": 1, "path": "../../elsewhere"}]}))
    assert parse_side(f"{A}+nli").weights == root / "nli"  # the adapter itself still parses
    with pytest.raises(Exception, match="leaves the adapter folder"):
        parse_side(f"{A}+nli@1")
    assert f"{A}+nli" in valid_specs() and not [s for s in valid_specs() if s.startswith(f"{A}+") and "@" in s]


def test_snapshot_sides_embed_as_their_weights(encs, root, tmp_path, monkeypatch):
    """@0 embeds as the base model; @2 as the step-2 weights with the adapter's prompt; @5 as the adapter;
    the adapter and its snapshot compare in one mixed pass on one backbone."""
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: encs[key])
    texts = ["a man is playing a guitar", "a dog is running in the park"]
    base = lab.embed(parse_side(A), parse_side(f"{A}+nli@0"), texts)
    assert np.allclose(base[0], base[1])
    enc = encs[A]
    v2, v5 = lab.embed(parse_side(f"{A}+nli@2"), parse_side(f"{A}+nli@5"), texts)
    step2 = next(i for i in enc.adapters.values() if i.path.name == "step-2")
    assert step2.prompt == "the {s}"
    assert np.allclose(v2, enc.embed(texts, step2.name), atol=1e-5)
    tuned = next(i for i in enc.adapters.values() if i.path.name == "nli")
    assert np.allclose(v5, enc.embed(texts, tuned.name), atol=1e-5)
    assert not np.allclose(v2, v5, atol=1e-3) and not np.allclose(v2, base[0], atol=1e-3)
    r = pairs.compare_api(lab, f"{A}+nli@2", f"{A}+nli", *texts)
    assert r["side_a"] == f"{A}+nli@2" and abs(r["cosine_a"] - float(v2[0] @ v2[1])) < 1e-5
    assert abs(r["cosine_b"] - float(v5[0] @ v5[1])) < 1e-5
    card = sides_tab.model_card(f"{A}+nli@2")
    assert "Training snapshot at step **2**: loss 1.500, STS-B dev 20.0, random-pair cosine 0.700" in card
    assert "step 0: the base model's vectors" in sides_tab.model_card(f"{A}+nli@0")


def test_the_default_pair_is_registry_data(encs, root, monkeypatch):
    """default_sides() reads the registry's DEFAULT_PAIR (no name in the code), falls back to the first loadable
    model's base vs its first adapter when that pair cannot parse; model_pairs() puts it first and
    seeded_sides() gives each pair its model's registry seed_corpora."""
    import dataclasses

    import embedlab.side as side_mod
    from embedlab.registry import DEFAULT_PAIR, MODELS

    real = side_mod.default_sides()
    if DEFAULT_PAIR[0] in side_mod.loadable_models():  # where the real default loads (not on every machine)
        assert (real[0].spec, real[1].spec) == DEFAULT_PAIR
    monkeypatch.setitem(MODELS, A, dataclasses.replace(MODELS[A], seed_corpora=("topics",)))
    monkeypatch.setattr(side_mod, "DEFAULT_MODEL", A)
    monkeypatch.setattr(side_mod, "DEFAULT_PAIR", (A, f"{A}+nli@2"))
    assert [s.spec for s in side_mod.default_sides()] == [A, f"{A}+nli@2"]
    assert [s.spec for s in side_mod.model_pairs()[0]] == [A, f"{A}+nli@2"]
    assert all(p[1].adapter is not None for p in side_mod.model_pairs())  # B has no adapter: no pair
    assert [((a.spec, b.spec), c) for (a, b), c in side_mod.seeded_sides()][0] == ((A, f"{A}+nli@2"), ("topics",))
    monkeypatch.setattr(side_mod, "DEFAULT_PAIR", (A, f"{A}+gone"))  # its adapter removed: the first adapter
    assert [s.spec for s in side_mod.default_sides()] == [A, f"{A}+nli"]
