"""Training replay on a tiny random model: precomputed maps and anisotropy per snapshot step, the step view's
figures, stale-data protection, and adopting a retraining's snapshots into a shipped adapter."""
import json

import numpy as np
import pytest

import train
from embedlab import replay
from embedlab.features import common, pairs
from embedlab.features import replay as replay_tab
from embedlab.adapters import AdapterError, snapshots
from test_train import cfg, tiny_load, triplets  # noqa: F401  (fixture)
from embedlab.registry import MODELS
from embedlab.side import parse_side
from tiny import A as M

RUN = f"{M}+out"  # the side spec of the run below (its folder is <allowed root>/out)


@pytest.fixture
def lab(lab, tmp_path, monkeypatch):
    """conftest's lab (the tiny models, registered as loadable: side specs name them), its replay files under tmp_path."""
    monkeypatch.setattr(replay, "replay_dir", lambda: tmp_path / "replay")
    return lab


@pytest.fixture
def run(tmp_path, triplets, monkeypatch):  # noqa: F811
    """A tiny adapter trained with snapshots at steps 0, 2, 4 (final 6), under an allowed adapter folder."""
    root = tmp_path / "adapters"
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(root))
    c = cfg(root, triplets, steps=6, eval_tasks=[], eval_limit=0, snapshot_steps="0,2,4")
    assert train.main(c, load=tiny_load) == 0
    return root / "out"


def test_replay_is_built_read_and_drawn_step_by_step(lab, run, tmp_path, monkeypatch):
    import embedlab.lab

    # a command waits for its embeddings however long they take (a request is told CacheBusy after JOB_WAIT_S;
    # replay-cache of a new Gemma adapter died of that)
    monkeypatch.setattr(embedlab.lab, "JOB_WAIT_S", 0.0)
    path = replay.build_replay(lab, M, run, "topics")
    assert path.parent == tmp_path / "replay" and path.stat().st_size < 64 * 1024
    r = replay.load_replay(MODELS[M], run, "topics")
    n = len(replay.replay_corpus("topics"))
    assert r.steps == (0, 2, 4, 6) and r.xy.shape == (4, n, 2) and np.isfinite(r.xy).all()
    # the histogram's pairs are the anisotropy view's: step 0 = base, the last step = the adapter itself
    final = pairs.anisotropy_cosines(lab, parse_side(M), parse_side(RUN))
    assert np.allclose(r.cosines[0], final["a"], atol=1e-3) and np.allclose(r.cosines[-1], final["b"], atol=1e-3)
    assert not np.allclose(r.cosines[1], r.cosines[0], atol=1e-3)  # training changed the geometry
    assert [s for s, _ in r.dev] == [0, 2, 4, 6] and len(r.loss_curve) == 6

    x, y = "a man is playing a guitar", "the dog is eating food"
    steps, note, curves, hist, maps = replay_tab.replay_open(lab, M, RUN, "topics", x, y)
    assert steps == [0, 2, 4, 6] and "Step 6" in note
    # the Pairs tab's pair at each step: the step's side itself (step 0 = the base model)
    at = {k: pairs.cosines(lab, parse_side(f"{RUN}@{k}"), parse_side(M), x, y)["a"] for k in (0, 2, 4, 6)}
    assert f"cosine **{at[6]:.3f}**" in note and abs(at[0] - pairs.cosines(lab, parse_side(M), parse_side(M), x, y)["a"]) < 1e-5
    seen = []
    for i in range(4):
        note, curves, hist, maps = replay_tab.replay_step(lab, M, RUN, "topics", x, y, float(i))
        assert f"**Step {r.steps[i]}**" in note and f"step {r.steps[i]}: cosine **{at[r.steps[i]]:.3f}**" in note
        right = [t for t in maps.data if t.xaxis == "x2"]  # the map at that step (left: the base model)
        seen.append(np.concatenate([np.asarray(t.x, dtype=float) for t in right]))
        assert len(hist.data) == (1 if i == 0 else 2)
        assert any(t.name.startswith(f"step {r.steps[i]}:") for t in curves.data)
        # the axes stay put while scrubbing, so motion is the points' own
        assert tuple(maps.layout.xaxis.range) == tuple(maps.layout.xaxis2.range) == r.bounds[:2]
    assert not np.allclose(seen[0], seen[-1])


def test_a_changed_adapter_or_corpus_never_gets_stale_data(lab, run):
    replay.build_replay(lab, M, run, "topics")
    assert replay.load_replay(MODELS[M], run, "topics").steps == (0, 2, 4, 6)
    with pytest.raises(replay.ReplayUnavailable, match="no replay of out on snli"):
        replay.load_replay(MODELS[M], run, "snli")
    w = run / "snapshots/step-2/adapter_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1  # one bit of one snapshot's weights
    w.write_bytes(bytes(data))
    with pytest.raises(replay.ReplayUnavailable, match="precomputed"):
        replay.load_replay(MODELS[M], run, "topics")


def test_replay_handlers_refuse_bad_input_with_a_message(lab, run):
    replay.build_replay(lab, M, run, "topics")
    for index in (-1, 4, 1.5, "x", None, [1]):
        with pytest.raises(common.UserError, match="snapshot"):
            replay_tab.replay_step(lab, M, RUN, "topics", "", "", index)
    with pytest.raises(common.UserError, match="corpora topics, snli"):
        replay_tab.replay_step(lab, M, RUN, "stsb", "", "", 0)
    with pytest.raises(common.UserError, match="Valid sides"):
        replay_tab.replay_step(lab, M, f"{M}+/etc", "topics", "", "", 0)
    steps, note, *figs = replay_tab.replay_open(lab, M, M, "topics")
    assert steps == [] and "Neither side has an adapter" in note and figs == [None, None, None]
    # an empty sentence on the Pairs tab: the step view still shows, without the pair line
    note, *_ = replay_tab.replay_step(lab, M, RUN, "topics", "", "", 1)
    assert "**Step 2**" in note and "two sentences" not in note


def test_an_adapter_without_snapshots_says_so(lab, tmp_path, monkeypatch):
    from tiny import make_adapter

    make_adapter(tmp_path / "adapters2" / "plain")
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(tmp_path / "adapters2"))
    steps, note, *_ = replay_tab.replay_open(lab, M, f"{M}+plain", "topics")
    assert steps == [] and "no training snapshots" in note


def test_aligned_layouts_keep_unchanged_texts_in_place():
    """Two steps with identical vectors: the alignment keeps every text where it was."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(60, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = rng.normal(size=(60, 16)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    xy = replay.aligned_layouts([v, v, w])
    spread = np.sqrt(((xy[0] - xy[0].mean(0)) ** 2).sum(1).mean())
    same = np.median(np.linalg.norm(xy[1] - xy[0], axis=1)) / spread
    changed = np.median(np.linalg.norm(xy[2] - xy[1], axis=1)) / spread
    assert same < 0.1 and changed > 2 * same


def test_adopt_snapshots_keeps_the_shipped_weights_and_refuses_another_training(tmp_path, triplets):  # noqa: F811
    shipped, run_dir = tmp_path / "shipped", tmp_path / "run"
    assert train.main(cfg(shipped, triplets, steps=6, eval_tasks=[], eval_limit=0), load=tiny_load) == 0
    assert train.main(cfg(run_dir, triplets, steps=6, eval_tasks=[], eval_limit=0, snapshot_steps="0,2,4"),
                      load=tiny_load) == 0
    before = (shipped / "out/adapter_model.safetensors").read_bytes()
    got = replay.adopt_snapshots(run_dir / "out", shipped / "out", keep=[4])
    assert got == {"max_abs_difference": 0.0, "snapshots": [0, 4, 6], "learning_curve": [0, 2, 4, 6]}
    assert (shipped / "out/adapter_model.safetensors").read_bytes() == before
    snaps = snapshots(shipped / "out")
    assert [s.step for s in snaps] == [0, 4, 6] and snaps[1].path == (shipped / "out/snapshots/step-4").resolve()
    assert not (shipped / "out/snapshots/step-2").exists()
    rec = json.loads((shipped / "out/training.json").read_text())
    assert [e["step"] for e in rec["learning_curve"]] == [0, 2, 4, 6]
    assert rec["snapshot_run"]["final_adapter_max_abs_difference"] == 0.0

    other = tmp_path / "other"
    assert train.main(cfg(other, triplets, steps=6, eval_tasks=[], eval_limit=5, snapshot_steps="2", seed=1),
                      load=tiny_load) == 0
    with pytest.raises(AdapterError, match="max abs difference"):
        replay.adopt_snapshots(other / "out", shipped / "out", keep=[2])
    with pytest.raises(AdapterError, match="not intermediate snapshots"):
        replay.adopt_snapshots(run_dir / "out", shipped / "out", keep=[3])


def test_cli_refuses_an_adapter_without_snapshots_and_a_bad_keep_list(tmp_path, capsys):
    from embedlab import cli
    from tiny import make_adapter

    make_adapter(tmp_path / "plain")
    assert cli.main(["replay-cache", "--adapter", str(tmp_path / "plain"), "--corpora", "topics"]) == 2
    assert "lists 0 training snapshot(s)" in capsys.readouterr().err
    assert cli.main(["adopt-snapshots", str(tmp_path / "plain"), str(tmp_path / "plain"), "--keep", "x"]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["adopt-snapshots", str(tmp_path / "plain"), str(tmp_path / "nowhere"), "--keep", "1"]) == 2


def test_side_b_changed_while_the_tab_is_hidden_then_the_tab_opened_makes_exactly_one_update(tmp_path, monkeypatch):
    """Issue 20: the replay tab queued two updates when side B changed and then the tab opened (both events drew
    it). Its one handler (side changes, tab select, corpus) draws only while the tab is shown, and only for inputs
    not drawn yet: the side change while hidden is skipped, the tab's select draws, a late duplicate is skipped."""
    import gradio as gr

    import app
    from embedlab.lab import Lab
    from tiny import A, tiny_models

    encs = tiny_models(monkeypatch)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: encs[key])
    demo = app.build(lab)

    def name(f) -> str:
        fn = getattr(f.fn, "__wrapped__", None)
        return getattr(getattr(fn, "func", None), "__name__", "")

    (dep,) = [f for f in demo.fns.values() if name(f) == "on_open"]
    events = {(demo.blocks[t[0]].__class__.__name__ if t[0] is not None else "", t[1]) for t in dep.targets}
    assert {("Tab", "select"), ("Dropdown", "change")} <= events  # one handler for the tab and both sides

    def skipped(out) -> bool:
        return all(isinstance(o, dict) and o == gr.skip() for o in out)

    inputs = [A, f"{A}", "topics", "a man is playing a guitar", "a woman is eating food"]
    drawn = None
    updates = 0
    for shown in (False, True, True):  # side B changed (tab hidden); the tab opened; the change's late duplicate
        out = dep.fn(shown, *inputs, drawn)
        if not skipped(out):
            updates += 1
            drawn = out[-1]
    assert updates == 1 and drawn == inputs
