"""Live training (embedlab/live.py and the Train tab's handlers) on a tiny random Llama: settings and their caps,
a run end to end (frames, snapshots as sides, zip, train.py --config reproducing it), stop, the queue, one run per
session, id scoping, the watcher's heartbeat, files deleted after their time, and other users' embeddings
bit-identical while a run trains."""
import json
import os
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

import train as train_cli
from embedlab import live
from embedlab.features import train as train_tab
from embedlab.lab import Lab
from embedlab.side import SideError, parse_side, side_choices, valid_specs
from test_train import tiny_load
from tiny import A, tiny_models

SMALL = dict(steps=3, batch_size=8, lr=1e-3, lora_r=4, temperature=0.05)


def small(**kw) -> live.Settings:
    return live.settings("Advanced", A, **{**SMALL, **kw})


@pytest.fixture
def env(tmp_path, monkeypatch):
    encs = tiny_models(monkeypatch)
    monkeypatch.setenv("EMBEDLAB_LIVE_DIR", str(tmp_path / "live"))
    monkeypatch.setenv("EMBEDLAB_LIVE_TRAINING", "on")
    # frames are measured by a lab (the app's, features/train.py); here one serving the tiny models
    lab = Lab(cache_dir=tmp_path / "frames-cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: encs[key])
    monkeypatch.setattr(live.Manager, "frame_vectors",
                        lambda self, spec, texts: lab.side_vectors(parse_side(spec), texts))
    return encs


def manager(**kw) -> live.Manager:
    return live.Manager(load=tiny_load, **{"frame_every_s": 0.0, "maps": False, **kw})


def wait_until(cond, what: str, timeout: float = 300.0) -> None:
    """Poll ``cond`` (a safety net against a hang, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.05)


def test_settings_caps_and_bad_settings(env):
    s = live.settings()  # the default preset: the shipped gemma3-270m adapter's settings (model as loadable here)
    assert (s.steps, s.batch_size, s.lr, s.lora_r, s.temperature) == (54, 24, 3e-4, 8, 0.05)
    assert live.settings("A few minutes", A, steps=999).steps == 54  # a preset ignores the advanced values
    assert small().steps == 3 and A in live.trainable_models() and "tiny-bert" not in live.trainable_models()
    for bad, msg in [(dict(steps=0), "steps must be a whole number from 1 to 200"), (dict(steps=201), "steps"),
                     (dict(steps=2.5), "whole number"), (dict(batch_size=2), "batch size"),
                     (dict(batch_size=129), "batch size"), (dict(lr=0.01), "lr must be a number"),
                     (dict(lr=float("nan")), "lr"), (dict(lora_r=65), "lora r"), (dict(temperature=0), "temperature"),
                     (dict(steps=True), "steps.*not true/false"), (dict(steps="3"), "steps.*not text"),
                     (dict(batch_size=1e30), r"not 1e\+30$"), (dict(lora_r=[4]), "not a list")]:
        with pytest.raises(live.LiveError, match=msg):
            small(**bad)
    with pytest.raises(live.LiveError, match="preset must be one of"):
        live.settings("Fast", A)
    with pytest.raises(live.LiveError, match="cannot be trained here"):
        live.settings("Advanced", "tiny-bert", **SMALL)  # not a causal LM
    with pytest.raises(live.LiveError, match="unknown setting"):
        live.settings("Advanced", A, **SMALL, dropout=0.2)


def test_disabled_host_refuses(env, monkeypatch):
    monkeypatch.setenv("EMBEDLAB_LIVE_TRAINING", "off")
    with pytest.raises(live.LiveError, match="disabled on this host"):
        manager().submit("s", small())
    monkeypatch.setenv("EMBEDLAB_LIVE_TRAINING", "maybe")
    with pytest.raises(live.LiveError, match="on or off"):
        live.enabled()


def test_a_run_becomes_a_private_side_with_frames_a_zip_and_a_reproducible_record(env, tmp_path, monkeypatch):
    m = live.Manager(load=tiny_load, frame_every_s=0.0, maps=True)
    run = m.submit("me", small(), None, ("a man is playing a guitar", "a dog is running"))
    assert m.wait(run, 900) and run.state == "done", run.message
    f = run.frame
    # a frame at step 0, one begun whenever the one before is measured, one after the last step
    assert [s for s, _ in f.loss_curve] == [1, 2, 3] and f.measured[0] == 0 and f.measured[-1] == 3
    assert f.measured == sorted(set(f.measured)) and len(f.dev) == len(f.pair) == len(f.cosines) == len(f.measured)
    assert sorted(f.maps) == f.measured
    assert all(xy.shape == (96, 2) and np.isfinite(xy).all() for xy in f.maps.values())
    p = train_tab.progress(m, run)
    assert p["spec"] == run.spec and p["step"] == 3 and p["state"] == "done" and p["queue_position"] == 0
    assert "is a side now" in train_tab.status_line(p)
    curves, hist, topics = train_tab.figures(run)  # drawn by the Training replay's figures
    assert curves is not None and hist is not None and topics is not None

    # a side in every view for whoever holds the id; listed nowhere (nor to this session's picker lists)
    side = parse_side(run.spec)
    assert side.adapter == run.name and all(parse_side(f"{run.spec}@{s}").step == s for s in f.measured) and parse_side(run.spec + "@0").weights is None
    assert not any("live-" in s for s in valid_specs()) and not any("live-" in v for _, v in side_choices())
    with pytest.raises(SideError) as e:
        parse_side(f"{A}+live-{'0' * 32}")
    assert "live-" not in str(e.value).split("Valid sides here")[1]
    mine = [v for _, v in train_tab.session_choices(m, "me")]
    assert run.spec in mine and f"{run.spec}@3" in mine
    assert not any("live-" in v for _, v in train_tab.session_choices(m, "someone else"))
    with pytest.raises(live.LiveError, match="no such run"):
        m.get("someone else", run.id)
    assert m.runs("someone else") == [] and m.latest("someone else") is None and m.stop("someone else") is None

    # the download: standard PEFT adapter, model card, training.json (device, precision, data, command), data
    z = zipfile.ZipFile(run.zip_path())
    assert sorted(z.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "data.csv",
                                    "training.json"]
    rec = json.loads(z.read("training.json"))
    assert rec["device"] and rec["precision"] in ("fp32", "bf16") and rec["data"]["rows"] == 6317
    assert len(rec["data"]["sha256"]) == 64 and rec["command"].startswith("python train.py --model tiny-llama --data data.csv")
    assert json.loads(z.read("adapter_config.json"))["peft_type"] == "LORA" and str(tmp_path) not in json.dumps(rec)
    for name in ("README.md", "training.json", "adapter_config.json"):  # no server path in any text file
        assert str(tmp_path) not in z.read(name).decode() and "/live/" not in z.read(name).decode(), name
    assert rec["command"] in z.read("README.md").decode()  # the card's command reproduces the run

    # train.py --config <the downloaded training.json> trains the same run again: the same losses
    unzipped = tmp_path / "unzipped"
    z.extractall(unzipped)
    cwd = os.getcwd()
    monkeypatch.chdir(tmp_path)  # the record's data path is relative to the record, not to where train.py runs
    cfg = train_cli.parse_config(["--config", str(unzipped / "training.json"), "--out", str(tmp_path / "again")])
    monkeypatch.chdir(cwd)
    assert cfg.data == str(unzipped / "data.csv") and cfg.steps == 3
    from embedlab import training

    again = training.train(cfg, load=tiny_load, evaluate=False)
    assert np.allclose([v for _, v in again["training"]["loss_curve"]], [v for _, v in f.loss_curve], atol=1e-4)


def test_stop_saves_the_steps_done_as_a_usable_side(env):
    m = manager(frame_every_s=3600.0)
    run = m.submit("me", small(steps=200))
    wait_until(lambda: run.frame.step >= 2, "two steps")
    assert m.stop("me") is run
    assert m.wait(run, 300) and run.state == "stopped" and "Stop or the page closed" in run.message
    done = run.frame.step
    assert 2 <= done < 200
    rec = json.loads((run.folder / "training.json").read_text())
    assert rec["training"]["stopped_early"]["planned_steps"] == 200 and rec["training"]["steps"] == done
    assert parse_side(run.spec).weights is not None and parse_side(f"{run.spec}@{done}").step == done
    assert run.zip_path().is_file()


def test_a_frame_cut_short_by_a_stop_leaves_no_snapshot_behind(env, monkeypatch):
    """A frame's snapshot is saved when its measuring begins; a stop before it is measured removes it, so every
    snapshot folder on disk is one training.json lists (a side) and none is dead weight until the sweep."""
    from embedlab import compute

    measuring, release = threading.Event(), threading.Event()
    measure = live.Manager.frame_vectors

    def held(self, spec, texts):  # the second frame's vectors wait (as a slow frame does) until the stop
        if "@" in spec and not measuring.is_set():
            measuring.set()
            release.wait(60)
            compute.on_compute_thread(lambda: None)  # the next batch: dropped once the run stops
        return measure(self, spec, texts)

    monkeypatch.setattr(live.Manager, "frame_vectors", held)
    m = manager(frame_every_s=0.0)
    run = m.submit("me", small(steps=200))
    assert measuring.wait(300)
    wait_until(lambda: run.frame.step >= 3, "three steps")  # the training goes on meanwhile
    m.stop("me")
    release.set()
    assert m.wait(run, 300) and run.state == "stopped" and run.frame.measured == [0]
    rec = json.loads((run.folder / "training.json").read_text())
    listed = {x["path"] for x in rec["snapshots"] if x["path"]}
    # the frame begun at step 1 went with its snapshot; the final weights' snapshot stays
    assert {f"snapshots/{p.name}" for p in (run.folder / "snapshots").iterdir()} == listed
    assert listed == {f"snapshots/step-{run.frame.step}"} and run.frame.step > 1


def test_a_run_nobody_watches_stops(env):
    m = manager(frame_every_s=3600.0, heartbeat_s=0.3)
    run = m.submit("me", small(steps=200))
    # a watcher came, then went (a closed tab stops iterating the stream)
    wait_until(lambda: m.heartbeat("me", run.id).frame.step >= 1 or run.finished, "a step while watched")
    assert m.wait(run, 300) and run.state == "stopped" and run.frame.step < 200


def test_one_run_at_a_time_fifo_queue_and_one_run_per_session(env):
    m = manager(frame_every_s=3600.0)
    first = m.submit("s1", small(steps=200))
    wait_until(lambda: first.state == "training", "the first run trains")
    second = m.submit("s2", small(steps=2))
    third = m.submit("s3", small(steps=2))
    assert (m.position(first), m.position(second), m.position(third)) == (0, 1, 2)
    p = train_tab.progress(m, third)
    assert p["state"] == "queued" and "**2** in line" in train_tab.status_line(p)
    with pytest.raises(live.LiveError, match="already has a run going"):
        m.submit("s1", small())
    m.stop("s3")  # a queued run leaves the line, its folder goes
    assert third.finished and third.state == "stopped" and not third.folder.exists() and m.position(second) == 1
    m.stop("s1")
    assert m.wait(first, 300) and m.wait(second, 300) and second.state == "done"
    later = m.submit("s1", small(steps=1))  # the first run ended: the session may start another
    assert m.wait(later, 300) and later.state == "done"


def test_files_are_deleted_an_hour_after_their_last_use(env, tmp_path):
    m = manager(ttl_s=3600.0)
    run = m.submit("me", small(steps=1))
    assert m.wait(run, 300) and run.state == "done"
    left = m.root / A / "live-leftover"  # a run a previous process left
    left.mkdir(parents=True)
    now = time.time()
    assert m.sweep(now) == 0 and run.folder.exists()
    os.utime(left, (now - 4000, now - 4000))
    assert m.sweep(now) == 1 and not left.exists() and run.folder.exists()
    parse_side(run.spec)  # using the side counts as use
    assert m.sweep(now + 3000) == 0
    assert m.sweep(now + 3700) == 1 and not run.folder.exists() and m.runs("me") == []
    with pytest.raises(SideError):
        parse_side(run.spec)


def test_step_0_comes_from_the_labs_cached_base_vectors_before_the_model_loads(env, tmp_path):
    """The lab's base vectors of the built-in corpora (cached) plus the pair (embedded: 2 texts) give step 0 (the
    base model: LoRA's B is zero); later frames are their snapshots measured as sides."""
    from embedlab.corpora import builtin
    from embedlab.replay import replay_corpus

    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    corpora = [builtin("stsb").sample(50), replay_corpus("topics")]
    pair = ("a man plays a guitar", "someone plays music")
    texts = [*corpora[0].texts[:5], *corpora[1].texts[:5], *pair]
    assert lab.cached_base(A, texts, corpora) is None  # the model is not in the pool: never loaded for this
    lab._models[A] = env[A]
    assert lab.cached_base(A, texts, corpora) is None  # nor are the corpora cached: never embedded for this
    with lab.hold(parse_side(A)) as (r,):
        for c in corpora:
            lab.corpus(r, c, wait=True)
    got = lab.cached_base(A, texts, corpora)
    assert got.dtype == np.float32 and got.shape == (len(texts), env[A].embed(texts[:1]).shape[1])
    np.testing.assert_allclose(got, env[A].embed(texts), atol=1e-5)
    assert lab.cached_base(A, [*texts, "one more", "and another"], corpora) is None  # more than 2 new texts

    m = manager(frame_every_s=3600.0)
    probe = live.Probe(pair)
    m.base_vectors = lambda model, t: env[model].embed(t) if t == probe.texts else None
    run = m.submit("me", small(steps=2), pair=pair)
    assert m.wait(run, 300) and run.state == "done"
    assert run.frame.measured == [0, 1, 2]  # the first step's frame at once (step 0's came from the caches), the last
    dev, _, _, pair_cos = probe.measure(env[A].embed(probe.texts))
    assert run.frame.dev[0] == (0, dev) and run.frame.pair[0] == (0, pytest.approx(pair_cos))
    record = json.loads((run.folder / "training.json").read_text())
    assert [(x["step"], x["path"]) for x in record["snapshots"]] == [(0, None), (1, "snapshots/step-1"),
                                                                      (2, "snapshots/step-2")]


def test_frames_are_their_snapshots_as_sides_measured_while_the_training_goes_on(env, monkeypatch):
    """A frame is its step's snapshot measured as the side ``<spec>@<step>`` (by the lab's model, beside the run): the
    training does not wait for it (steps go on while one is held), and what it shows is what that side gives."""
    pair = ("a man is playing a guitar", "a dog is running")
    held, release, specs = threading.Event(), threading.Event(), []
    measure = live.Manager.frame_vectors

    def slow(self, spec, texts):
        specs.append(spec)
        if "@" in spec and not held.is_set():
            held.set()
            release.wait(60)
        return measure(self, spec, texts)

    monkeypatch.setattr(live.Manager, "frame_vectors", slow)
    m = manager(frame_every_s=0.0)
    run = m.submit("me", small(steps=6), pair=pair)
    assert held.wait(300)
    wait_until(lambda: run.frame.step >= 4, "steps while a frame is measured")
    assert run.frame.measured == [0]
    release.set()
    assert m.wait(run, 300) and run.state == "done", run.message
    f = run.frame
    assert f.measured[0] == 0 and f.measured[-1] == 6 and len(f.measured) < 7  # one frame at a time
    assert specs[0] == A and all(s.startswith(run.spec + "@") for s in specs[1:])
    probe = live.Probe(pair)
    for i, step in enumerate(f.measured):
        spec = A if step == 0 else f"{run.spec}@{step}"
        dev, cos, _, pair_cos = probe.measure(measure(m, spec, probe.texts))
        assert f.dev[i] == (step, dev) and f.pair[i][1] == pytest.approx(pair_cos, abs=1e-6)
        np.testing.assert_allclose(f.cosines[i], cos, atol=1e-6)


def test_a_frame_due_mid_step_snapshots_the_last_whole_step_without_waiting_for_the_steps_end(env, monkeypatch):
    """A frame that falls due during a step (here: the one before is measured during step 2's first unit) begins at
    the next boundary between two units, with step 1's weights, not at step 2's end: on one core a step is ~5-10 s,
    a unit ~1 s."""
    from safetensors.torch import load_file

    from embedlab.training import Trainer

    release, after, saves, holder = threading.Event(), {}, [], {}
    measure = live.Manager.frame_vectors

    def slow(self, spec, texts):
        if spec == A:  # the base model's frame (no cached vectors here): held until step 2 has begun
            release.wait(60)
        return measure(self, spec, texts)

    step = Trainer._optimiser_step

    def key(name: str) -> str:  # a LoRA tensor's name from "layers." on, without PEFT's adapter name
        return name[name.index("layers."):].replace(".default", "")

    def stepping(self):
        step(self)
        after[self.done + 1] = {key(n): p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    save = live.Probe.save_snapshot

    def saving(self, run, s):
        saves.append((s, release.is_set(), len(after)))
        if s == 0:  # the base frame's future, submitted next: what the run asks (frame_due) before the next frame
            submit = self.frames.submit

            def keep(*a, **kw):
                f = submit(*a, **kw)
                holder.setdefault("f0", f)
                return f

            self.frames.submit = keep
        return save(self, run, s)

    def executor(fn):
        out = fn()
        if len(after) == 1 and not release.is_set() and getattr(fn, "__func__", None) is not stepping:
            release.set()  # step 2's first unit: the base frame is measured now, and the next is due
            # the frame's whole task done (measured, shown, its record written), not only shown: else the run may
            # find it pending after this unit and take the next frame a step later
            wait_until(lambda: "f0" in holder and holder["f0"].done(), "the base model's frame")
            assert holder["run"].frame.measured == [0]
        return out

    monkeypatch.setattr(live.Manager, "frame_vectors", slow)
    monkeypatch.setattr(Trainer, "_optimiser_step", stepping)
    monkeypatch.setattr(live.Probe, "save_snapshot", saving)
    m = manager(frame_every_s=0.0, executor=executor)
    holder["run"] = run = m.submit("me", small(steps=3))
    assert m.wait(run, 300) and run.state == "done", run.message
    # step 1's snapshot was saved after step 2 had begun (the base frame released) and before its optimiser step
    assert (1, True, 1) in saves and 1 in run.frame.measured
    snap = {key(n): w for n, w in load_file(run.folder / "snapshots" / "step-1" / "adapter_model.safetensors").items()}
    assert snap and set(snap) <= set(after[1])
    for name, w in snap.items():
        np.testing.assert_allclose(w.float().numpy(), after[1][name].float().numpy(), rtol=2e-3, atol=1e-4)
    assert any(not np.allclose(after[1][n].numpy(), after[2][n].numpy(), atol=1e-4) for n in snap)  # step 2 moved
    assert parse_side(f"{run.spec}@1").step == 1


def test_a_run_stopped_after_the_worker_took_it_before_it_began_ends_stopped_and_leaves_no_folder(env, monkeypatch):
    """A Stop in the gap between the worker taking the run off the queue and its start: stop() no longer finds it
    queued, so the worker ends it (not "queued" for ever, its folder not left behind)."""
    real = live.Manager._train

    def stopped_first(self, run):
        run.stop_requested.set()  # the Stop lands in the gap
        return real(self, run)

    monkeypatch.setattr(live.Manager, "_train", stopped_first)
    m = manager()
    run = m.submit("me", small())
    assert m.wait(run, 300) and run.state == "stopped" and run.message == "Stopped before it started."
    assert not run.saved and not run.folder.exists() and m.latest("me") is run


def test_frames_come_less_often_while_other_visitors_use_the_app(env, monkeypatch):
    """While the compute thread served interactive work within FRAME_EVERY_S (other visitors comparing), the next
    frame waits BUSY_FRAME_REST_S after the one before was measured: frames share that thread's core with their
    compares. The last step's frame still comes."""
    monkeypatch.setattr(live, "seconds_since_interactive", lambda: 0.0)
    m = manager(frame_every_s=1e-6, busy_frame_rest_s=3600.0)
    run = m.submit("me", small(steps=4))
    assert m.wait(run, 300) and run.state == "done", run.message
    assert run.frame.measured == [0, 4]


def test_a_runs_units_run_beside_the_compute_thread_not_before_its_compares(env, monkeypatch):
    """The run's model is its own copy, so its units need no place in the compute thread's queue: a compare queued
    while a unit runs (here an optimiser step held until the compare is answered) does not wait for it."""
    from embedlab import compute
    from embedlab.training import Trainer

    held, answered, threads = threading.Event(), threading.Event(), []
    step = Trainer._optimiser_step

    def slow_step(self):
        threads.append(threading.current_thread().name)
        if not held.is_set():
            held.set()
            answered.wait(60)  # what a long pass is to a compare queued meanwhile
        return step(self)

    monkeypatch.setattr(Trainer, "_optimiser_step", slow_step)
    m = manager(frame_every_s=3600.0)
    run = m.submit("me", small(steps=1))
    assert held.wait(300)
    result = []
    compare = threading.Thread(target=lambda: result.append(compute.on_compute_thread(lambda: 42)))
    compare.start()
    compare.join(30)
    answered.set()
    assert result == [42], "a compare waited for the run's unit"
    assert m.wait(run, 300) and run.state == "done", run.message
    assert threads and compute._NAME not in threads


@pytest.mark.skipif(sys.platform != "linux", reason="niceness per thread is Linux's")
def test_a_run_trains_at_a_lower_cpu_priority_than_the_server(env, monkeypatch):
    """The run's thread is TRAIN_NICE steps nicer than the server's threads (Linux, per thread): on a shared core a
    compare and the web server go first (bench.load --worst --cases train, docs/load.md); the server's own threads
    keep their priority."""
    from embedlab.training import Trainer

    seen = []
    step = Trainer._optimiser_step

    def noting_step(self):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return step(self)

    monkeypatch.setattr(Trainer, "_optimiser_step", noting_step)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    m = manager(frame_every_s=3600.0)
    run = m.submit("me", small(steps=1))
    assert m.wait(run, 300) and run.state == "done", run.message
    assert seen and set(seen) == {min(19, mine + live.TRAIN_NICE)}, seen
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    from embedlab import compute

    tid = compute.on_compute_thread(threading.get_native_id)  # compares: never niced by a run
    assert os.getpriority(os.PRIO_PROCESS, tid) == mine


def test_over_the_disk_cap_the_least_recently_used_runs_go_first(env):
    m = manager()
    runs = []
    for i in range(3):
        runs.append(m.submit(f"s{i}", small(steps=1)))
        assert m.wait(runs[-1], 300) and runs[-1].saved
    size = live.folder_bytes(runs[0].folder)
    assert size > 0
    now = time.time()
    for i, r in enumerate(runs):  # used in the order 1, 0, 2 (oldest first)
        os.utime(r.folder, (now - 100 + 10 * [1, 0, 2][i],) * 2)
    m.max_disk_bytes = 2 * size + size // 2  # room for two of the three
    assert m.sweep(now) == 1
    assert [r.folder.exists() for r in runs] == [True, False, True]
    assert m.runs("s1") == [] and m.runs("s0") == [runs[0]]
    m.max_disk_bytes = 0
    assert m.sweep(now) == 2 and not any(r.folder.exists() for r in runs)


def test_other_users_embeddings_stay_bit_identical_while_a_run_trains(env, tmp_path, monkeypatch):
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: env[key])
    base = parse_side(A)
    texts = ["a man is playing a guitar", "the dog is eating food", "a woman is running in the park"]
    before = lab.embed(base, base, texts)[0]
    m = manager(frame_every_s=0.0)
    run = m.submit("me", small(steps=200))
    # a trained step's frame measured: its snapshot is attached to the lab's model, the one the lab embeds with
    wait_until(lambda: run.frame.step >= 2 and any(s > 0 for s in run.frame.measured), "a step's frame")
    lab.embeddings._memory.clear() if hasattr(lab.embeddings, "_memory") else None
    during = [env[A].embed(texts) for _ in range(3)]  # straight through the lab's encoder: no cache in between
    m.stop("me")
    assert m.wait(run, 300)
    assert all(np.array_equal(before, d) for d in during)
    # nothing of the run leaked into the lab's model: not in training mode, the base weights as before, and the
    # only adapters on it are the frames' snapshots, attached by the frames' lab as sides (which keeps them, within
    # its adapter budget)
    enc = env[A]
    assert not enc.model.training and np.array_equal(enc.embed(texts), before)
    snaps = (run.folder / "snapshots").resolve()
    assert enc.adapters and all(i.path.resolve().parent == snaps for i in enc.adapters.values())


def test_the_tabs_start_refuses_bad_choices_with_a_message(env):
    m = manager()
    for args, msg in [(("nli-x", None), "data must be nli or file"), (("file", None), "choose a file of triplets"),
                      (("file", {"path": "x"}), "choose a file of triplets")]:
        with pytest.raises(train_tab.UserError, match=msg):
            train_tab.start(m, "me", A, args[0], args[1], "Advanced", 3, 8, 1e-3, 4, 0.05)
    with pytest.raises(train_tab.UserError, match="preset must be one of"):
        train_tab.start(m, "me", A, "nli", None, 7, 3, 8, 1e-3, 4, 0.05)
    with pytest.raises(train_tab.UserError, match="steps must be a whole number"):
        train_tab.start(m, "me", A, "nli", None, "Advanced", 0, 8, 1e-3, 4, 0.05)
    assert m.runs("me") == []


def test_a_watcher_whose_client_has_gone_stops_the_run(env):
    m = manager(frame_every_s=3600.0)
    run = m.submit("me", small(steps=200))
    gone = threading.Event()
    seen = []
    for p in train_tab.watch(m, "me", run, gone.is_set):
        seen.append(p)
        if p["step"] >= 1:
            gone.set()  # the tab closed: the next poll stops the run
    assert m.wait(run, 300) and run.state == "stopped" and 1 <= run.frame.step < 200
    assert seen[0]["state"] in ("queued", "loading") and parse_side(run.spec).weights is not None


def test_racing_submits_of_one_session_queue_one_run(env, monkeypatch):
    """Every submit passes the early check (a barrier holds them all inside the file parse): the re-check in the
    locked section that adds the run lets one through; the refused ones' folders go."""
    m = manager(frame_every_s=3600.0, max_waiting=2)
    n = 12
    barrier = threading.Barrier(n)
    real = live.Manager._write_data

    def slow_parse(data, dst):
        barrier.wait(60)  # all n submits are past the early check now
        return real(data, dst)

    monkeypatch.setattr(live.Manager, "_write_data", staticmethod(slow_parse))
    ok, refused = [], []

    def go() -> None:
        try:
            ok.append(m.submit("me", small(steps=200)))
        except live.LiveError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(ok) == 1 and len(refused) == n - 1 and all("already has a run going" in r for r in refused)
    assert [p.name for p in (m.root / A).iterdir()] == [ok[0].folder.name]  # the refused ones left no folder
    m.stop("me")
    assert m.wait(ok[0], 300)


def test_one_unfinished_run_per_address_and_a_file_smaller_than_a_batch(env, tmp_path):
    m = manager(frame_every_s=3600.0)
    first = m.submit("s1", small(steps=200), client="203.0.113.7")
    with pytest.raises(live.LiveError, match="from your address"):
        m.submit("s2", small(), client="203.0.113.7")  # a new session from the same address
    other = m.submit("s3", small(steps=1), client="198.51.100.1")
    small_file = tmp_path / "twenty.csv"
    small_file.write_text("sent0,sent1\n" + "".join(f"a sentence {i},another one {i}\n" for i in range(20)))
    with pytest.raises(live.LiveError, match="fewer than one batch"):
        m.submit("s4", small(batch_size=64), small_file)  # refused now, not after the wait in line
    m.stop("s1")
    assert m.wait(first, 300) and m.wait(other, 300)


def test_stop_does_not_wait_for_a_map_being_laid_out(env, monkeypatch):
    """A layout blocked on an event (as the first one is for a minute of numba compile): the stop completes while
    it is still blocked."""
    started, release = threading.Event(), threading.Event()

    def blocked_layout(self, topics, prev_xy):
        started.set()
        release.wait(300)
        return np.zeros((len(topics), 2), dtype=np.float32)

    monkeypatch.setattr(live.Probe, "layout", blocked_layout)
    m = live.Manager(load=tiny_load, frame_every_s=0.0, maps=True)
    run = m.submit("me", small(steps=200))
    assert started.wait(300), "no layout started"
    m.stop("me")
    try:
        assert m.wait(run, 300) and not release.is_set() and run.state == "stopped"
    finally:
        release.set()


def test_a_run_that_saved_nothing_is_no_side_and_is_forgotten_by_the_sweep(env):
    m = manager(frame_every_s=3600.0)
    first = m.submit("s1", small(steps=200))
    queued = m.submit("s2", small(steps=2))  # stopped while waiting: nothing saved, its folder goes
    m.stop("s2")
    p = train_tab.progress(m, queued)
    assert queued.finished and not queued.saved and not p["saved"] and "is a side now" not in train_tab.status_line(p)
    m.stop("s1")
    assert m.wait(first, 300)
    assert m.sweep() == 0 and m.runs("s2") == []  # finished, folder gone: dropped from memory
    assert first.saved == first.folder.exists() and m.runs("s1") == ([first] if first.saved else [])


def test_the_status_line_shows_the_files_warnings_and_no_server_path(env):
    m = manager(frame_every_s=3600.0)
    run = m.submit("me", small(steps=200))
    run.data_note = "your file: 20 rows; 3 rows also in the STS-B test set"
    run.message = f"could not read {m.root}/{A}/live-x/data.csv"
    p = train_tab.progress(m, run)
    line = train_tab.status_line(p)
    assert "also in the STS" in line and str(m.root) not in line and str(m.root) not in p["message"]
    m.stop("me")
    assert m.wait(run, 300)


def test_the_pair_texts_are_checked(env):
    m = manager()
    with pytest.raises(train_tab.UserError, match="text A of the pair must be text"):
        train_tab.start(m, "me", A, "nli", None, "Advanced", 3, 8, 1e-3, 4, 0.05, 5, "b")
    with pytest.raises(train_tab.UserError, match="text B of the pair has"):
        train_tab.start(m, "me", A, "nli", None, "Advanced", 3, 8, 1e-3, 4, 0.05, "a", "x" * 100_000)
    assert m.runs("me") == []


def test_the_train_group_is_behind_the_fair_share_gate(tmp_path, monkeypatch):
    """The page's Train and /train wait behind the long requests' gate (per session and per address), not
    only the manager's one-run-per-session rule; the sweep starts also when training is off (a previous
    process's runs still go)."""
    import app
    from embedlab.gradio_internals import LongRequests

    swept = []
    monkeypatch.setattr(live.Manager, "sweep_forever", lambda self, every_s=300.0: swept.append(self))
    monkeypatch.setenv("EMBEDLAB_LIVE_TRAINING", "off")

    demo = app.build(Lab(cache_dir=tmp_path / "cache"))  # builds the page only: no model is loaded
    train_fns = [f for f in demo.fns.values() if f.concurrency_id == "train"]
    assert len(train_fns) == 2 and all(f.validator is not None for f in train_fns)
    gates = [g for g in demo.__dict__["_embedlab_gates"] if g.group == "train"]
    assert len(gates) == 1 and isinstance(gates[0], LongRequests)
    assert all(f.validator.__self__ is gates[0] for f in train_fns)
    assert len(swept) == 1


def test_a_run_trains_in_the_processs_precision(env, tmp_path, monkeypatch):
    """The frames' cosines are the ones /compare gives for the same side: both in EMBEDLAB_PRECISION."""
    for p in ("fp32", "bf16"):
        monkeypatch.setenv("EMBEDLAB_PRECISION", p)
        assert live.config(small(), tmp_path).precision == p
