"""train.py --snapshot-steps on a tiny random Llama: snapshots saved (float16, standard form), evaluated,
listed in training.json in the format adapters.snapshots reads, and training unchanged by them."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train
from embedlab import training
from embedlab.adapters import save_adapter, snapshots
from embedlab.evaluation import run_eval
from embedlab.loading import attach_adapter
from test_train import cfg, tiny_load, triplets  # noqa: F401  (fixture)
from tiny import LLAMA_SPEC, tiny_encoder

SENTS = ["a man is playing a guitar", "the dog is eating food", "a cat in the park", "woman running"]


def test_snapshots_are_saved_evaluated_and_leave_training_unchanged(tmp_path, triplets):  # noqa: F811
    plain = cfg(tmp_path / "plain", triplets, steps=6, eval_tasks=[])
    snap = cfg(tmp_path / "snap", triplets, steps=6, eval_tasks=[], eval_limit=0, snapshot_steps="5,0,2,99")
    assert train.main(plain, load=tiny_load) == 0 and train.main(snap, load=tiny_load) == 0
    a = load_file(str(tmp_path / "plain/out/adapter_model.safetensors"))
    out = tmp_path / "snap/out"
    b = load_file(str(out / "adapter_model.safetensors"))
    # loading the evaluator and attaching snapshots draws random numbers: the run must not notice
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rec = json.loads((out / "training.json").read_text())
    assert [e["step"] for e in rec["snapshots"]] == [0, 2, 5, 6]  # 99 is past the end; the final step always
    snaps = snapshots(out)
    assert [s.step for s in snaps] == [0, 2, 5, 6]
    assert snaps[0].path is None and snaps[0].loss is None  # the base model: no weights
    assert snaps[1].path == (out / "snapshots/step-2").resolve() and snaps[-1].path == out.resolve()
    losses = dict((s, v) for s, v in rec["training"]["loss_curve"])
    assert [s.loss for s in snaps[1:]] == [losses[2], losses[5], losses[6]]
    assert snaps[-1].dev == rec["dev"]["STSBenchmark-dev"]
    assert all(s.dev is not None and s.random_pair_cosine is not None for s in snaps)

    # step 0 = the base model's dev score, by the same evaluation
    base = run_eval(tiny_encoder("llama"), ["STSBenchmark-dev"])
    assert snaps[0].dev == base["tasks"]["STSBenchmark-dev"]
    assert snaps[0].random_pair_cosine == base["random_pair_cosine"]

    # a snapshot is a standard-form PEFT folder in float16 that the app's loader takes into fp32 LoRA weights
    w = load_file(str(out / "snapshots/step-5/adapter_model.safetensors"))
    assert w.keys() == b.keys() and all(v.dtype == torch.float16 for v in w.values())
    enc = tiny_encoder("llama")
    info = attach_adapter(enc, out / "snapshots/step-5")
    lora = {n: p for n, p in enc.model.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert info.prompt == LLAMA_SPEC.prompt
    # its weights are the run's at step 5: not the start (B = 0) and not the end
    assert all(not torch.equal(w[k].float(), b[k]) for k in w if "lora_B" in k)
    assert any(w[k].abs().max() > 0 for k in w if "lora_B" in k)
    assert snaps[2].dev == run_eval(enc, ["STSBenchmark-dev"], adapter=info.name)["tasks"]["STSBenchmark-dev"]


def test_a_fresh_adapter_encodes_exactly_as_the_base_model(tmp_path):
    """Why step 0 needs no weights: LoRA's B starts at zero, so saved and loaded, it changes nothing."""
    from peft import LoraConfig, get_peft_model

    enc0 = tiny_encoder("llama")
    base = enc0.embed(SENTS)
    model = get_peft_model(tiny_encoder("llama").model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_A" in n)  # A is random, B zero
    save_adapter(model, tmp_path / "step0", LLAMA_SPEC, dtype=torch.float16)
    enc = tiny_encoder("llama")
    name = attach_adapter(enc, tmp_path / "step0").name
    assert np.array_equal(enc.embed(SENTS, name), base)


def test_snapshot_with_its_own_prompt_keeps_weights_and_prompt(tmp_path, triplets):  # noqa: F811
    """With a training prompt other than the registry's, step 0 is not the base model as the app encodes it."""
    c = cfg(tmp_path, triplets, steps=2, eval_tasks=[], eval_limit=5, snapshot_steps="0", prompt="{s} means:")
    assert train.main(c, load=tiny_load) == 0
    snaps = snapshots(tmp_path / "out")
    assert [s.step for s in snaps] == [0, 2] and snaps[0].path == (tmp_path / "out/snapshots/step-0").resolve()
    assert snaps[0].random_pair_cosine is None  # a limited evaluation records no anisotropy (as the final one)
    enc = tiny_encoder("llama")
    assert attach_adapter(enc, snaps[0].path).prompt == "{s} means:"


@pytest.mark.parametrize("bad", ["1,x", "-5", "3.5", "1e9999"])
def test_bad_snapshot_steps_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--snapshot-steps", bad])
    assert e.value.code == 2 and "--snapshot-steps" in capsys.readouterr().err


def test_resume_keeps_the_snapshots_taken_before_the_kill(tmp_path, triplets, monkeypatch):  # noqa: F811
    class Killed(Exception):
        pass

    real_save = training.save_checkpoint

    def save_then_die(acc, path):
        real_save(acc, path)
        raise Killed

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    kw = dict(steps=8, eval_tasks=[], eval_limit=5, snapshot_steps="2,6")
    with pytest.raises(Killed):
        train.main(cfg(tmp_path, triplets, **kw), load=tiny_load)  # dies at the step-5 checkpoint
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    assert train.main(cfg(tmp_path, triplets, resume=True, **kw), load=tiny_load) == 0
    assert [s.step for s in snapshots(tmp_path / "out")] == [2, 6, 8]


def test_model_card_lists_every_evaluated_step_and_where_its_weights_are():
    from embedlab.modelcard import render_card

    rec = {"snapshots": [{"step": 0, "path": None, "loss": None, "dev": 20.5, "random_pair_cosine": 0.94},
                         {"step": 50, "path": "snapshots/step-50", "loss": 0.81234, "dev": 61.0, "random_pair_cosine": 0.5},
                         {"step": 300, "path": ".", "loss": 0.3, "dev": 72.26, "random_pair_cosine": 0.44}],
           "learning_curve": [{"step": 10, "loss": 2.5, "dev": 30.0, "random_pair_cosine": 0.9},
                              {"step": 50, "loss": 0.81234, "dev": 61.0, "random_pair_cosine": 0.5}]}
    card = render_card(LLAMA_SPEC, rec, "x")
    table = card.split("## Training snapshots")[1]
    rows = [r for r in table.splitlines() if r.startswith("| ") and r[2].isdigit()]
    assert rows == ["| 0 | the base model | — | 20.50 | 0.940 |", "| 10 | not shipped | 2.5000 | 30.00 | 0.900 |",
                    "| 50 | `snapshots/step-50` | 0.8123 | 61.00 | 0.500 |", "| 300 | this adapter | 0.3000 | 72.26 | 0.440 |"]
    assert "## Training snapshots" not in render_card(LLAMA_SPEC, {}, "x")
