"""EMBEDLAB_PRECISION: the setting, the CPU detection (both branches, mocked), bf16 forward passes."""
import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch

import embedlab.precision as precision
from embedlab.precision import Precision, PrecisionError, requested, resolve
from test_train import triplets  # noqa: F401  (fixture)
from tiny import make_adapter, tiny_encoder

SENTS = ["a man is playing a guitar .", "the dog", "a woman is eating food in the park with a cat .", "cat"]


@pytest.fixture
def native(monkeypatch):
    """Set what the CPU detector answers: native(True) / native(False)."""
    def set_(value: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: value)
        monkeypatch.setattr(precision, "_warned", set())
    return set_


def test_the_detector_reads_torchs_cpu_capabilities(monkeypatch):
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": False})
    assert precision.cpu_has_native_bf16() is False
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": True})
    assert precision.cpu_has_native_bf16() is True
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "aarch64", "bf16": True})
    assert precision.cpu_has_native_bf16() is True
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("has_bf16, want", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_exactly_where_the_cpu_has_it(native, monkeypatch, has_bf16, want):
    native(has_bf16)
    monkeypatch.delenv(precision.ENV, raising=False)
    p = resolve("cpu")
    assert (p.name, p.requested, p.emulated) == (want, "auto", False)
    assert resolve("cuda").name == "bf16"  # a GPU: bf16 whatever the CPU
    assert resolve("cpu", "fp32").name == "fp32"


def test_forced_bf16_without_native_support_works_emulated_and_says_so_once(native, monkeypatch, caplog):
    native(False)
    monkeypatch.setenv(precision.ENV, "bf16")
    with caplog.at_level(logging.WARNING, logger="embedlab.precision"):
        p, again = resolve("cpu"), resolve("cpu")
    assert p == again == Precision("bf16", "bf16", emulated=True)
    assert len([r for r in caplog.records if "emulates" in r.getMessage()]) == 1
    assert "emulated" in p.describe()
    native(True)
    assert not resolve("cpu", "bf16").emulated


@pytest.mark.parametrize("bad", ["fp16", "", "bfloat16", "float32", "auto,bf16"])
def test_any_other_value_is_an_error_naming_the_three(monkeypatch, bad):
    monkeypatch.setenv(precision.ENV, bad)
    with pytest.raises(PrecisionError, match="auto, bf16, fp32"):
        requested()
    with pytest.raises(PrecisionError, match=precision.ENV):
        resolve("cpu")
    assert requested(" BF16 ") == "bf16"  # case and spaces forgiven


def test_the_cli_refuses_a_bad_precision_before_doing_anything(capsys):
    from embedlab.cli import main

    assert main(["--precision", "fp16", "models"]) == 2
    err = capsys.readouterr().err
    assert "fp16" in err and "auto, bf16, fp32" in err


def test_the_server_start_up_refuses_a_bad_precision(monkeypatch):
    from embedlab import compute

    monkeypatch.setenv(precision.ENV, "half")
    monkeypatch.setattr(compute.sys, "setswitchinterval", lambda s: pytest.fail("configured despite a bad setting"))
    with pytest.raises(PrecisionError, match="auto, bf16, fp32"):
        compute.configure_for_serving(background_batch_s=0.25)


def test_records_and_the_status_line_say_the_precision(native, monkeypatch, tmp_path):
    from embedlab.lab import Lab
    from embedlab.provenance import environment

    native(True)
    monkeypatch.delenv(precision.ENV, raising=False)
    env = environment("cpu")
    assert (env["precision"], env["precision_setting"], env["precision_emulated"]) == ("bf16", "auto", False)
    assert "cached_vectors" in env  # a view may read cached vectors computed in the other precision: it says so
    assert environment("cpu", Precision("fp32", "fp32"))["precision"] == "fp32"
    lab = Lab(cache_dir=tmp_path, seed_dir=None)
    lab.status = {"x": "ready"}
    assert lab.status_line().startswith("Ready") and lab.status_line().endswith("Precision: bf16 (auto)")
    monkeypatch.setenv(precision.ENV, "fp32")
    assert lab.status_line().endswith("Precision: fp32")
    native(False)
    monkeypatch.setenv(precision.ENV, "bf16")
    assert "emulated" in lab.status_line()


def _bf16(enc, mode: str):
    """A copy of a tiny fp32 encoder that runs in bf16 as ``mode`` says (what load_encoder builds)."""
    out = copy.deepcopy(enc)
    out.spec = dataclasses.replace(enc.spec, bf16=mode)
    out.precision = Precision("bf16", "bf16")
    if mode == "weights":
        out.model = out.model.to(torch.bfloat16)
    return out


@pytest.mark.parametrize("mode", ["weights", "autocast"])
def test_a_mixed_adapter_pass_runs_in_bf16_with_fp32_lora_weights(tmp_path, mode):
    from embedlab.loading import attach_adapter

    make_adapter(tmp_path / "a", seed=1)
    make_adapter(tmp_path / "b", seed=2)
    ref = tiny_encoder("llama")
    enc = _bf16(tiny_encoder("llama"), mode)
    names = [attach_adapter(enc, tmp_path / x).name for x in ("a", "b")]
    assert [attach_adapter(ref, tmp_path / x).name for x in ("a", "b")] == names
    lora = {p.dtype for n, p in enc.model.named_parameters() if "lora_" in n}
    base = {p.dtype for n, p in enc.model.named_parameters() if "lora_" not in n}
    assert lora == {torch.float32} and base == {torch.bfloat16 if mode == "weights" else torch.float32}
    rows = [None] * 4 + [names[0]] * 4 + [names[1]] * 4
    got = enc.embed(SENTS * 3, rows)
    want = np.concatenate([ref.embed(SENTS, n) for n in (None, *names)])
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.einsum("ij,ij->i", got, want).min() > 0.99  # a random tiny model: bf16 close to fp32
    assert not np.allclose(got[:4], got[4:8], atol=1e-2)  # the rows did get their own adapters


def test_the_registrys_fp32_modules_run_in_float32_under_bf16_autocast_also_through_peft(tmp_path):
    """ModelSpec.bf16_fp32_modules (Gemma 3's first layers lost the most in bf16): inside the named modules the
    pass runs in float32, elsewhere in bf16, in a mixed-adapter pass too; the hooks are gone after the pass."""
    from embedlab.loading import attach_adapter

    make_adapter(tmp_path / "a", seed=1)
    enc = _bf16(tiny_encoder("llama"), "autocast")
    enc.spec = dataclasses.replace(enc.spec, bf16_fp32_modules=(r"layers\.0",))
    name = attach_adapter(enc, tmp_path / "a").name
    seen: dict[str, set] = {"layers.0": set(), "layers.1": set()}
    for n, m in enc.model.named_modules():
        if n.endswith(("layers.0.mlp.down_proj", "layers.1.mlp.down_proj")):
            key = "layers.0" if "layers.0." in n else "layers.1"
            m.register_forward_hook(lambda _m, _a, out, key=key: seen[key].add(out.dtype))
    plain = _bf16(tiny_encoder("llama"), "autocast")
    attach_adapter(plain, tmp_path / "a")
    ref = tiny_encoder("llama")
    attach_adapter(ref, tmp_path / "a")
    rows = [None] * 4 + [name] * 4
    got = enc.embed(SENTS * 2, rows)
    assert seen == {"layers.0": {torch.float32}, "layers.1": {torch.bfloat16}}
    layer0 = next(m for n, m in enc.model.named_modules() if n.endswith("layers.0"))
    assert not layer0._forward_pre_hooks and not layer0._forward_hooks  # only while a pass runs
    want = np.concatenate([ref.embed(SENTS, None), ref.embed(SENTS, name)])
    assert np.einsum("ij,ij->i", got, want).min() > 0.99
    assert not np.allclose(got, plain.embed(SENTS * 2, rows), atol=1e-6)  # not the plain autocast pass
    assert enc._fp32_modules() == [layer0]
    assert not torch.is_autocast_enabled("cpu")  # nothing left switched on or off


@pytest.mark.integration
def test_the_shipped_adapter_in_bf16_stays_within_0999_of_fp32_in_one_mixed_pass():
    """The default model and its shipped adapter, loaded as auto gives a bf16 CPU: base and adapter rows
    in one PEFT mixed-adapter pass, each vector within cosine 0.999 of the fp32 one."""
    from embedlab.loading import load_encoder
    from embedlab.adapters import shipped_adapters

    shipped = shipped_adapters("smollm2-135m")[0]
    texts = ["A man is playing a guitar.", "A woman is slicing an onion.", "Hi",
             "The stock market fell sharply on Tuesday after the announcement."]
    ref = load_encoder("smollm2-135m", adapter=shipped, device="cpu", precision="fp32")
    enc = load_encoder("smollm2-135m", adapter=shipped, device="cpu", precision="bf16")
    assert enc.precision.bf16 and {p.dtype for n, p in enc.model.named_parameters() if "lora_" in n} == {torch.float32}
    (name,) = enc.adapters
    got = enc.embed(texts + texts, [None] * 4 + [name] * 4)
    want = np.concatenate([ref.embed(texts, None), ref.embed(texts, name)])
    assert np.einsum("ij,ij->i", got, want).min() >= 0.999


@pytest.mark.parametrize("setting, env", [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_training_run_loads_and_records_its_configs_precision_not_the_environments(native, monkeypatch, tmp_path,
                                                                                      triplets, setting, env):  # noqa: F811
    """Issue 21: training.json's environment() said $EMBEDLAB_PRECISION, and the run's encoders (the one trained,
    the evaluator, the saved adapter's) loaded in it too, whatever the run's --precision said."""
    from embedlab import training
    from test_train import cfg, tiny_load

    native(True)
    monkeypatch.setenv(precision.ENV, env)
    asked = []

    def load(key, **kw):
        asked.append(kw.get("precision"))
        return tiny_load(key, **kw)

    trainer = training.Trainer(cfg(tmp_path, triplets, steps=2, precision=setting, eval_tasks=[], eval_limit=8), load=load)
    assert trainer.precision == setting and trainer.enc.precision.name == setting
    list(trainer.steps())
    rec = trainer.finish(evaluate=True)
    assert (rec["precision"], rec["environment"]["precision"], rec["environment"]["precision_setting"]) == (setting,) * 3
    assert "cached_vectors" not in rec["environment"]  # every vector of the record is the run's own
    assert asked and set(asked) == {setting}
