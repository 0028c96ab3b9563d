"""train.py and embedlab.training on a tiny random Llama: loss goes down, kill-and-resume, adapter loads and changes embeddings."""
import json

import numpy as np
import pytest
import torch

import train
from embedlab import training
from embedlab.loading import attach_adapter
from embedlab.precision import resolve as resolve_precision
from tiny import tiny_encoder

WORDS = "a the man woman dog cat is are playing eating guitar food running park".split()


@pytest.fixture
def triplets(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["sent0,sent1,hard_neg"]
    for _ in range(64):
        s = " ".join(rng.choice(WORDS, size=5))
        rows.append(f"{s},{s} .,{' '.join(rng.choice(WORDS, size=5))}")
    path = tmp_path / "tri.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_load(key, adapter=None, device=None, max_length=None, precision=None):
    """load_encoder's stand-in: a tiny random Llama in ``precision`` (auto|bf16|fp32; None: $EMBEDLAB_PRECISION)."""
    enc = tiny_encoder("llama", max_length=max_length)
    enc.precision = resolve_precision(device or "cpu", precision)
    if adapter is not None:
        attach_adapter(enc, adapter)
    return enc


def cfg(tmp_path, data, **kw):
    base = dict(model="tiny-llama", data=str(data), out=str(tmp_path / "out"), steps=20, batch_size=16, chunk_size=12,
                lr=3e-3, warmup_steps=2, log_every=5, ckpt_every=5, eval_tasks=["STS17"], eval_limit=20,
                max_length=32, device="cpu", precision="fp32")  # fp32: exact comparisons (bf16: test_training.py)
    base.update(kw)
    return training.Config(**base)


def test_twenty_steps_lower_the_loss_and_save_a_working_adapter(tmp_path, triplets):
    c = cfg(tmp_path, triplets)
    assert train.main(c, load=tiny_load) == 0
    out = tmp_path / "out"
    rec = json.loads((out / "training.json").read_text())
    curve = [l for _, l in rec["training"]["loss_curve"]]
    assert len(curve) == 20 and np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.2
    assert rec["data"]["rows"] == 64 and len(rec["data"]["sha256"]) == 64
    assert rec["trained_on"] == "cpu" and rec["training"]["effective_contrastive_batch"] == 16
    assert "STSBenchmark-dev" in rec["dev"] and "STS17" in rec["test"]["tasks"]
    assert (out / "adapter_model.safetensors").is_file() and not (out / "checkpoint").exists()
    cfg_json = json.loads((out / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == "tiny-llama" and cfg_json["r"] == 8
    assert cfg_json["task_type"] == "CAUSAL_LM"  # the standard form: keys as over AutoModelForCausalLM
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert all(k.startswith("base_model.model.model.layers.") for k in f.keys())
    assert rec["command"].startswith("python train.py --model tiny-llama") and "--steps 20" in rec["command"]
    assert rec["training"]["precision"] == rec["precision"] == "fp32" and rec["device"].startswith("CPU")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny-llama\n") and rec["command"] in card and rec["device"] in card
    enc = tiny_encoder("llama")
    sents = ["a man is playing a guitar", "the dog is eating food"]
    base = enc.embed(sents)
    name = attach_adapter(enc, out).name
    assert (np.einsum("ij,ij->i", enc.embed(sents, name), base) < 0.9999).all()


def test_gradient_cache_and_plain_training_agree(tmp_path, triplets):
    a = cfg(tmp_path / "a", triplets, steps=3, chunk_size=12, lora_dropout=0.0, eval_tasks=[])
    b = cfg(tmp_path / "b", triplets, steps=3, chunk_size=0, lora_dropout=0.0, eval_tasks=[])
    assert train.main(a, load=tiny_load) == 0 and train.main(b, load=tiny_load) == 0
    la = json.loads((tmp_path / "a/out/training.json").read_text())["training"]["loss_curve"]
    lb = json.loads((tmp_path / "b/out/training.json").read_text())["training"]["loss_curve"]
    assert np.allclose([x for _, x in la], [x for _, x in lb], atol=1e-4)


def assert_same_adapter(a_dir, b_dir, atol: float) -> None:
    from safetensors.torch import load_file

    a = load_file(str(a_dir / "adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


def test_kill_and_resume_gives_the_same_adapter(tmp_path, triplets, monkeypatch):
    full = cfg(tmp_path / "full", triplets, steps=10, eval_tasks=[])
    assert train.main(full, load=tiny_load) == 0

    class Killed(Exception):
        pass

    real_save = training.save_checkpoint

    def save_then_die(acc, path):
        real_save(acc, path)
        raise Killed  # the process dies right after the first (step-5) checkpoint

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    part = cfg(tmp_path / "part", triplets, steps=10, eval_tasks=[])
    with pytest.raises(Killed):
        train.main(part, load=tiny_load)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    resumed = cfg(tmp_path / "part", triplets, steps=10, eval_tasks=[], resume=True)
    assert train.main(resumed, load=tiny_load) == 0
    assert_same_adapter(tmp_path / "full/out", tmp_path / "part/out", atol=1e-5)
    rec = json.loads((tmp_path / "part/out/training.json").read_text())
    assert rec["training"]["resumed_at"] == 5 and len(rec["training"]["loss_curve"]) == 10


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, triplets, monkeypatch, capsys):
    calls = {"n": 0}
    real = training.distributed_info_nce

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(training, "distributed_info_nce", poisoned)
    c = cfg(tmp_path, triplets, steps=10, eval_tasks=[])
    assert train.main(c, load=tiny_load) == 3
    err = capsys.readouterr().out
    # found at the step-10 log sync, reported at the step it happened, with the checkpoint's own step (5, not 6)
    assert "loss is nan at step 7" in err and "checkpoint (step 5)" in err
    assert checkpoint_step(tmp_path / "out/checkpoint") == 5 and not (tmp_path / "out/adapter_model.safetensors").exists()


def checkpoint_step(folder) -> int:
    """The step train.TrainState saved in an accelerate checkpoint (custom object 1; 0 is the scheduler)."""
    return torch.load(folder / "custom_checkpoint_1.pkl", weights_only=True)["step"]


def test_nan_before_any_checkpoint_says_none_written(tmp_path, triplets, monkeypatch, capsys):
    real = training.distributed_info_nce
    monkeypatch.setattr(training, "distributed_info_nce", lambda *a, **k: real(*a, **k) * float("nan"))
    assert train.main(cfg(tmp_path, triplets, steps=10, eval_tasks=[]), load=tiny_load) == 3
    err = capsys.readouterr().out
    assert "loss is nan at step 1" in err and "none written yet" in err


@pytest.mark.parametrize("content,msg", [
    ("a,b,c\n1,2,3\n", "lacks column"),
    ("sent0,sent1,hard_neg\nx,y,\n", "empty hard_neg"),
    ("sent0,sent1,hard_neg\nx,y,z\n", "at least 2"),
])
def test_bad_training_files(tmp_path, content, msg):
    from embedlab.nli import DataError, read_triplets

    p = tmp_path / "d.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=msg):
        read_triplets(p)


def test_non_utf8_training_file(tmp_path):
    from embedlab.nli import DataError, read_triplets

    p = tmp_path / "d.csv"
    p.write_bytes(b"sent0,sent1,hard_neg\n\xff\xfe,b,c\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_triplets(p)


def test_config_flags_and_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"lr": 0.001, "batch_size": 32}))
    c = train.parse_config(["--config", str(f), "--batch-size", "64", "--lora-targets", "q_proj", "k_proj", "--no-bf16"])
    assert c.lr == 0.001 and c.batch_size == 64 and c.lora_targets == ["q_proj", "k_proj"] and c.precision == "fp32"
    f.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(SystemExit):
        train.parse_config(["--config", str(f)])
    with pytest.raises(SystemExit):
        train.parse_config(["--batch-size", "1"])


def test_a_training_record_decides_neither_where_to_write_nor_other_data(tmp_path, monkeypatch):
    """--config <training.json>: the record's out is dropped (a downloaded record must not write into "."),
    its relative data is the file next to it before one of that name here, and data whose sha256 or row count
    is not the record's is refused (that would not be the run again)."""
    from embedlab.nli import read_triplets

    run = tmp_path / "run"
    run.mkdir()
    rows = "sent0,sent1,hard_neg\n" + "".join(f"a{i},b{i},c{i}\n" for i in range(20))
    (run / "data.csv").write_text(rows)
    t = read_triplets(run / "data.csv")
    record = {"config": {"data": "data.csv", "out": ".", "steps": 3, "resume": True}, "command": "python train.py",
              "data": {"path": "data.csv", "sha256": t.sha256, "rows": len(t)}}
    (run / "training.json").write_text(json.dumps(record))
    here = tmp_path / "here"
    here.mkdir()
    (here / "data.csv").write_text(rows.replace("a1,", "x1,"))  # a decoy of the same name where train.py runs
    monkeypatch.chdir(here)
    c = train.parse_config(["--config", str(run / "training.json")])
    assert c.out == training.Config().out and not c.resume and c.steps == 3
    assert c.data == str(run / "data.csv")
    assert train.parse_config(["--config", str(run / "training.json"), "--out", "again"]).out == "again"
    (run / "data.csv").write_text(rows + "extra,row,here\n")  # the data changed since the run
    with pytest.raises(SystemExit):
        train.parse_config(["--config", str(run / "training.json")])


def test_batches_are_a_function_of_step():
    a = training.batch_indices(7, 100, 16, seed=0)
    assert (a == training.batch_indices(7, 100, 16, seed=0)).all() and len(set(a)) == 16
    epoch0 = np.concatenate([training.batch_indices(s, 100, 16, 0) for s in range(6)])
    assert len(set(epoch0)) == 96  # no triplet repeats within an epoch


def test_snli_triplets_exclude_evaluation_sentences():
    from embedlab.nli import evaluation_sentences, normalise, read_triplets

    t = read_triplets("assets/data/NLI/snli_all_triplets.csv")
    banned = evaluation_sentences()
    assert len(t) > 6000
    assert not any(normalise(s) in banned for s in t.anchor + t.positive + t.negative)


KILLABLE = """
import sys, time
import train  # the repository and tests/ come from PYTHONPATH, as pytest.ini's pythonpath gives them to the tests
from embedlab import training
from embedlab.loading import attach_adapter
from tiny import tiny_encoder

def load(key, adapter=None, device=None, max_length=None, precision=None):
    enc = tiny_encoder("llama", max_length=max_length)
    if adapter is not None:
        attach_adapter(enc, adapter)
    return enc

real = training.contrastive_step
training.contrastive_step = lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1]  # slow enough to be killed mid-run
cfg = training.Config(**{cfg!r})
sys.exit(train.main(cfg, load=load))
"""


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, triplets):
    """A real SIGKILL (no cleanup, no exception handlers) after the first checkpoint, then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from embedlab import ROOT

    kw = dict(model="tiny-llama", data=str(triplets), out=str(tmp_path / "killed"), steps=12, batch_size=16,
              chunk_size=12, lr=3e-3, warmup_steps=2, log_every=5, ckpt_every=4, eval_tasks=[], max_length=32,
              device="cpu", precision="fp32")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    script = tmp_path / "run.py"
    script.write_text(KILLABLE.format(cfg=kw))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    ckpt = tmp_path / "killed" / "checkpoint" / "adapter_model.safetensors"
    deadline = time.time() + 120
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()

    resumed = subprocess.run([sys.executable, "-c", KILLABLE.format(cfg={**kw, "resume": True})], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    full = cfg(tmp_path / "full", triplets, steps=12, ckpt_every=4, eval_tasks=[])
    assert train.main(full, load=tiny_load) == 0
    assert_same_adapter(tmp_path / "full/out", tmp_path / "killed", atol=1e-4)
    rec = json.loads((tmp_path / "killed/training.json").read_text())
    assert rec["training"]["resumed_at"] in (4, 8) and len(rec["training"]["loss_curve"]) == 12


def test_length_bucketed_passes_give_the_loss_and_gradients_of_one_pass():
    from peft import LoraConfig, get_peft_model

    from embedlab.encode import embed_batch

    enc = tiny_encoder("llama")
    model = get_peft_model(enc.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    rng = np.random.default_rng(1)
    sents = [" ".join(rng.choice(WORDS, size=n)) for n in rng.integers(2, 25, size=24)]  # lengths vary 10x
    a, p, n = sents[:8], sents[8:16], sents[16:]
    device = torch.device("cpu")
    embed = lambda b: embed_batch(model, b, enc.spec)  # noqa: E731

    def run(**kw):
        c = training.Config(model="tiny-llama", batch_size=8, max_length=32, **kw)
        passes, units = [], []
        loss = training.contrastive_step(lambda b: passes.append(b["input_ids"].shape) or embed(b), enc.tokenizer, enc.spec,
                                      enc.pad_id, a, p, n, c, device, executor=lambda fn: units.append(1) or fn())
        grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        model.zero_grad(set_to_none=True)
        return float(loss), grads, passes, len(units)

    one_loss, one, one_passes, _ = run(chunk_size=0, max_tokens=10**9)
    assert len(one_passes) == 1 and len(one) == 8  # 2 layers x (q, v) x (A, B)
    for kw in (dict(chunk_size=0, max_tokens=40), dict(chunk_size=10, max_tokens=40)):  # plain, gradient cache
        loss, grads, passes, units = run(**kw)
        assert len(passes) > 2 and all(rows * width <= 40 or rows == 1 for rows, width in passes)
        # plain: a unit per pass, the loss, a backward per pass; the cache: each chunk's no-grad pass, the loss,
        # each chunk's pass with its backward (it embeds twice). A caller's executor waits for one pass at most.
        assert units == (len(passes) + 1 if kw["chunk_size"] else 2 * len(passes) + 1)
        assert loss == pytest.approx(one_loss, abs=1e-5)
        for k in one:
            assert torch.allclose(grads[k], one[k], atol=1e-5), k
    assert training.tokens_per_pass(training.Config(), device) == 512
    assert training.tokens_per_pass(training.Config(), torch.device("cuda")) == 8192
    assert training.tokens_per_pass(training.Config(max_tokens=2048), torch.device("cuda")) == 2048


def test_device_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.choose_device("", 0) == cpu and training.choose_device("", 2) == cuda
    assert training.choose_device("cpu", 2) == cpu  # a CPU run on a GPU host
    assert training.choose_device("cuda:1", 2) == torch.device("cuda", 1)
    for requested, count, procs, msg in [("cuda", 0, 1, "no CUDA"), ("cuda:2", 2, 1, "cuda:0..cuda:1"),
                                         ("cuda:1", 2, 4, "CUDA_VISIBLE_DEVICES"), ("mps", 0, 1, "only cpu and cuda"),
                                         ("gpu please", 1, 1, "not a device")]:
        with pytest.raises(training.SetupError, match=msg):
            training.choose_device(requested, count, procs)


def test_bf16_base_keeps_trainable_lora_weights_in_fp32():
    from peft import LoraConfig, get_peft_model

    enc = tiny_encoder("llama")
    enc.model.to(training.base_dtype("bf16"))
    model = get_peft_model(enc.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert len(trainable) == 8 and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in frozen)


def test_checkpoint_is_accelerate_state_with_lora_weights_only(tmp_path, triplets, monkeypatch):
    class Stop(Exception):
        pass

    real_save = training.save_checkpoint

    def save_then_stop(acc, path):
        real_save(acc, path)
        raise Stop

    monkeypatch.setattr(training, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train.main(cfg(tmp_path, triplets, steps=10, eval_tasks=[]), load=tiny_load)
    ck = tmp_path / "out" / "checkpoint"
    names = {p.name for p in ck.iterdir()}
    # per-rank RNG (accelerate), optimiser, scheduler + step/history; the adapter but no frozen base weights
    assert {"random_states_0.pkl", "optimizer.bin", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
            "adapter_model.safetensors"} <= names
    assert not any(n.startswith("model") for n in names) and checkpoint_step(ck) == 5


def test_command_line_names_the_changed_settings():
    c = training.Config(steps=300, batch_size=32, lora_targets=["q_proj"], precision="fp32", prompt="{s} means: ")
    assert train.command_line(c) == ("python train.py --prompt '{s} means: ' --lora-targets q_proj --steps 300 "
                                     "--batch-size 32 --precision fp32")
    import shlex

    assert train.parse_config(shlex.split(train.command_line(c))[2:]) == c  # the command reproduces the settings


def _ddp_grads(rank: int, world: int, port: int, q) -> None:
    """One process of test_multi_process_steps_of_several_passes_give_the_single_process_gradients."""
    import os

    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.nn.parallel import DistributedDataParallel

    from embedlab.encode import embed_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        q.put((rank, _lora_step_grads(rank, world, DistributedDataParallel, embed_batch, LoraConfig, get_peft_model)))
    finally:
        dist.destroy_process_group()


def _lora_step_grads(rank: int, world: int, wrap, embed_batch, LoraConfig, get_peft_model) -> dict:
    """The LoRA gradients of one plain (no gradient cache) step in passes of <= 40 tokens, on this process's
    share of 8 triplets whose lengths vary 10x: {name: numpy array}."""
    enc = tiny_encoder("llama")
    torch.manual_seed(0)
    model = get_peft_model(enc.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    net = wrap(model) if wrap is not None else model
    rng = np.random.default_rng(1)
    sents = [" ".join(rng.choice(WORDS, size=n)) for n in rng.integers(2, 25, size=24)]
    B = 8 // world
    sl = slice(rank * B, (rank + 1) * B)
    a, p, n = sents[:8][sl], sents[8:16][sl], sents[16:][sl]
    cfg = training.Config(model="tiny-llama", batch_size=B, max_length=32, chunk_size=0, max_tokens=40)
    training.contrastive_step(lambda b: embed_batch(net, b, enc.spec), enc.tokenizer, enc.spec, enc.pad_id, a, p, n,
                              cfg, torch.device("cpu"), no_sync=getattr(net, "no_sync", None))
    return {k.replace("module.", "", 1): v.grad.numpy().copy() for k, v in net.named_parameters() if v.grad is not None}


def test_multi_process_steps_of_several_passes_give_the_single_process_gradients():
    """With several processes (accelerate launch, DDP) a step of several passes must all-reduce every pass's
    gradients: a backward per pass all-reduced the first pass's alone (DDP arms its reducer at each forward), and
    the processes' weights drifted apart without an error. Two gloo processes against one process on all 8."""
    import socket

    import torch.multiprocessing as mp
    from peft import LoraConfig, get_peft_model

    from embedlab.encode import embed_batch

    one = _lora_step_grads(0, 1, None, embed_batch, LoraConfig, get_peft_model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_grads, args=(r, 2, port, q)) for r in range(2)]
    for pr in procs:
        pr.start()
    res = dict(q.get(timeout=180) for _ in procs)
    for pr in procs:
        pr.join(timeout=60)
        assert pr.exitcode == 0
    assert len(one) == 8
    for rank in (0, 1):
        assert set(res[rank]) == set(one)
        for k in one:
            np.testing.assert_allclose(res[rank][k], one[k], atol=1e-5, err_msg=f"rank {rank}: {k}")
