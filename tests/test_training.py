"""embedlab.training as a library (what the app's live training calls) on a tiny random Llama: a callback after
every step, stopping between steps with a usable adapter, passes run through a caller's executor on another
thread, and the precision setting (bf16 where the CPU has it) with both branches of its detection."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import train
from embedlab import training
from embedlab.loading import attach_adapter
from test_train import cfg, tiny_load, triplets  # noqa: F401  (fixture)
from tiny import tiny_encoder

SENTS = ["a man is playing a guitar", "the dog is eating food"]
CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_precision_resolution_both_detection_branches(monkeypatch, native):
    """Training resolves --precision by the embedding side's rule and detection (embedlab.precision, whose own
    test covers the CPU flags)."""
    from embedlab import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert training.resolve_precision("auto", CPU) == ("bf16" if native else "fp32", "")
    assert training.resolve_precision("auto", torch.device("cuda")) == ("bf16", "")  # a GPU: bf16, whatever the CPU
    assert training.resolve_precision("fp32", CPU) == ("fp32", "")
    name, note = training.resolve_precision("bf16", CPU)  # runs; emulated (and says so) where the CPU lacks it
    assert name == "bf16" and ("emulated" in note) == (not native)
    with pytest.raises(training.ConfigError, match="auto, bf16, fp32"):
        training.resolve_precision("fp16", CPU)
    assert training.base_dtype("bf16") == torch.bfloat16 and training.base_dtype("fp32") == torch.float32


def test_precision_flags_and_the_deprecated_bf16_alias(tmp_path):
    assert train.parse_config([]).precision == "auto"
    assert train.parse_config(["--precision", "bf16"]).precision == "bf16"
    assert train.parse_config(["--no-bf16"]).precision == "fp32" and train.parse_config(["--bf16"]).precision == "auto"
    assert train.parse_config(["--no-bf16", "--precision", "bf16"]).precision == "bf16"  # the new flag wins
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"bf16": False, "steps": 3}))  # a config of an older training record
    assert train.parse_config(["--config", str(f)]).precision == "fp32"
    f.write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(SystemExit):
        train.parse_config(["--config", str(f)])
    with pytest.raises(SystemExit):
        train.parse_config(["--precision", "fp16"])


def test_bf16_run_keeps_lora_weights_and_optimiser_in_fp32_and_learns(tmp_path, triplets):  # noqa: F811
    c = cfg(tmp_path, triplets, steps=12, precision="bf16", eval_tasks=[], eval_limit=20)
    trainer = training.Trainer(c, load=tiny_load)
    assert trainer.precision == "bf16"
    list(trainer.steps())
    params = dict(trainer.model.named_parameters())
    lora = {n: p for n, p in params.items() if p.requires_grad}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert all(p.dtype == torch.bfloat16 for n, p in params.items() if not p.requires_grad)
    state = [s for s in trainer.optimizer.state_dict()["state"].values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)
    rec = trainer.finish()
    assert rec["precision"] == rec["training"]["precision"] == "bf16" and rec["device"].startswith("CPU")
    curve = [loss for _, loss in rec["training"]["loss_curve"]]
    assert len(curve) == 12 and np.mean(curve[-4:]) < np.mean(curve[:4]) - 0.2
    saved = json.loads((tmp_path / "out/training.json").read_text())
    assert saved["precision"] == "bf16" and saved["config"]["precision"] == "bf16" and "--precision bf16" in saved["command"]


def test_bf16_gradient_cache_agrees_with_plain_bf16_steps(tmp_path, triplets):  # noqa: F811
    curves = []
    for name, chunk in (("cache", 12), ("plain", 0)):
        c = cfg(tmp_path / name, triplets, steps=3, chunk_size=chunk, lora_dropout=0.0, eval_tasks=[], precision="bf16")
        curves.append([loss for _, loss in training.train(c, load=tiny_load, evaluate=False)["training"]["loss_curve"]])
    assert np.allclose(curves[0], curves[1], atol=2e-2)  # bf16 passes: not bit-equal, close


def test_callback_after_every_step_and_stop_between_steps_leaves_a_usable_adapter(tmp_path, triplets):  # noqa: F811
    seen = []
    rec = training.train(cfg(tmp_path, triplets, steps=20, eval_tasks=[], eval_limit=20), load=tiny_load,
                         on_step=seen.append, should_stop=lambda: len(seen) >= 3)
    assert [i.step for i in seen] == [1, 2, 3] and all(i.steps == 20 for i in seen)
    assert all(np.isfinite(i.loss) and i.lr > 0 and i.sentences_per_second > 0 and i.seconds > 0 for i in seen)
    assert [i.loss for i in seen] == [loss for _, loss in rec["training"]["loss_curve"]]
    assert rec["training"]["steps"] == 3 and rec["training"]["stopped_early"] == {"planned_steps": 20, "trained_now": 3}
    assert "STSBenchmark-dev" in rec["dev"]  # evaluated like a finished run
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "checkpoint").exists()
    enc = tiny_encoder("llama")
    base = enc.embed(SENTS)
    name = attach_adapter(enc, out).name
    assert (np.einsum("ij,ij->i", enc.embed(SENTS, name), base) < 0.9999).all()


def test_breaking_out_of_the_steps_then_finish_saves_the_steps_done(tmp_path, triplets):  # noqa: F811
    trainer = training.Trainer(cfg(tmp_path, triplets, steps=20, eval_tasks=[]), load=tiny_load)
    for info in trainer.steps(report_every=2):
        if info.step == 4:
            break
    rec = trainer.finish(evaluate=False)
    assert rec["training"]["steps"] == 4 and [s for s, _ in rec["training"]["loss_curve"]] == [1, 2, 3, 4]
    assert "dev" not in rec and (tmp_path / "out/adapter_model.safetensors").is_file()


@pytest.mark.parametrize("chunk_size", [12, 0])  # gradient cache, plain passes
def test_an_executor_on_another_thread_runs_every_pass_and_trains_identically(tmp_path, triplets, chunk_size):  # noqa: F811
    direct = training.train(cfg(tmp_path / "direct", triplets, steps=4, chunk_size=chunk_size, eval_tasks=[]),
                            load=tiny_load, evaluate=False)
    units, caller = [], threading.get_ident()
    with ThreadPoolExecutor(1) as pool:  # as the app's compute thread would

        def executor(fn):
            def unit():
                units.append(threading.get_ident())
                return fn()
            return pool.submit(unit).result()

        via = training.train(cfg(tmp_path / "via", triplets, steps=4, chunk_size=chunk_size, eval_tasks=[]),
                             load=tiny_load, executor=executor, evaluate=False)
    assert via["training"]["loss_curve"] == direct["training"]["loss_curve"]
    assert units and all(t != caller for t in units)
    # per step: passes (twice each with the gradient cache), the loss, the optimiser step; and the final save
    assert len(units) > 4 * (3 if chunk_size else 2)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "direct/out/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "via/out/adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
