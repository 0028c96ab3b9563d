"""The lab's shared models behind every feature: failed loads reported, the pool and the status line, the warm-up's
exported seeds."""

import time

import numpy as np
import pytest

from embedlab import warmup
from embedlab.features import common, maps, pairs
from embedlab.features import search as search_tab
from embedlab.side import parse_side
from embedlab.lab import Lab
from tiny import A, B, tiny_encoder, tiny_models


def test_a_model_that_fails_to_load_is_reported_and_the_lab_goes_on(tmp_path, monkeypatch):
    """The real Lab.encoder path: the loader fails (corrupt weights, missing package) -> the user reads why;
    the next request loads again and, once the model loads, works."""
    import embedlab.lab as lab_mod
    from embedlab.loading import ModelUnavailableError

    tiny_models(monkeypatch)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    calls = {"n": 0}

    def flaky(key, device=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ModelUnavailableError(f"{key}: the cached weights are corrupt (sha256 mismatch); delete and retry")
        return tiny_encoder("llama")

    monkeypatch.setattr(lab_mod, "load_encoder", flaky)
    with pytest.raises(common.UserError, match="cached weights are corrupt") as e:
        pairs.compare(lab, A, A, "a dog", "a cat")
    assert "Traceback" not in str(e.value) and not lab.status  # no "loading" left in the status line
    assert "cosine" in pairs.compare(lab, A, A, "a dog", "a cat") and calls["n"] == 2


def test_at_most_two_models_are_loaded_and_the_status_line_says_which_one_loads(tmp_path, monkeypatch):
    """The real pool with a count cap (max_models=2; by default the pool is sized by memory, see
    test_availability.py): a cross-model request holds both of its models; a request for a third model
    waits until they are released, then the least recently used one is evicted. While a model loads the
    status line names it."""
    import threading

    import embedlab.lab as lab_mod
    import embedlab.side as side_mod
    from embedlab.registry import MODELS

    encs = tiny_models(monkeypatch)
    monkeypatch.setitem(MODELS, "tiny-3", __import__("dataclasses").replace(MODELS[A], key="tiny-3", base_ids=("tiny-3",)))
    monkeypatch.setattr(side_mod, "available_models", lambda: {A: (True, ""), B: (True, ""), "tiny-3": (True, "")})
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None, max_models=2)
    loading, release = threading.Event(), threading.Event()
    lines = []

    def load(key, device=None):
        if key == "tiny-3":
            loading.set()
            release.wait(30)
        return encs.get(key) or tiny_encoder("llama", seed=3)

    monkeypatch.setattr(lab_mod, "load_encoder", load)
    a, b, c = (parse_side(x) for x in (A, B, "tiny-3"))
    with lab.hold(a, b):
        assert set(lab._models) == {A, B}
        t = threading.Thread(target=lambda: lines.append(pairs.compare(lab, "tiny-3", "tiny-3", "a", "b")), daemon=True)
        t.start()
        t.join(1.0)
        assert t.is_alive() and not loading.is_set()  # waits: both slots are held by this cross-model request
        for _ in range(600):  # the compare reaches the wait for a slot (at once here; later on a loaded machine)
            if "waiting for tiny-3" in lab.status_line():
                break
            time.sleep(0.05)
        assert "waiting for tiny-3" in lab.status_line()
    assert loading.wait(10)
    assert "Loading tiny-3" in lab.status_line()
    release.set()
    t.join(30)
    assert lines and set(lab._models) == {B, "tiny-3"} and "Loading" not in lab.status_line()
    with pytest.raises(lab_mod.ModelsBusy, match="needs 3 models at once"):
        with lab.hold(a, b, c):
            pass


def test_exported_seeds_serve_a_fresh_cache_without_recomputing(lab, adapter, tmp_path, monkeypatch):
    """`python -m embedlab build-cache` in small: export, then a Lab with an empty cache and only the seeds
    answers the map and search views without encoding a corpus or fitting UMAP again."""
    from embedlab.corpora import builtin

    sides = common.sides(A, adapter)
    files = warmup.export_seeds(lab, [(sides, ("topics",))], out=tmp_path / "seed")
    assert any(f.suffix == ".npz" for f in files) and sum(f.name == "manifest.json" for f in files) == 4

    fresh = Lab(cache_dir=tmp_path / "empty", seed_dir=tmp_path / "seed")
    enc = lab.encoder(A)
    monkeypatch.setattr(fresh, "encoder", lambda key: enc)
    monkeypatch.setattr(maps.TwinMaps, "fit", lambda *a, **k: pytest.fail("UMAP refitted"))
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda texts, a=None, **k: real(texts, a, **k) if len(texts) <= 2
                        else pytest.fail(f"corpus of {len(texts)} re-encoded"))
    m = maps.twin_map(fresh, *sides, builtin("topics"))
    assert m["xy_a"].shape == (len(builtin("topics")), 2) and not np.allclose(m["xy_a"], m["xy_b"])
    assert search_tab.top_k(fresh, *sides, builtin("topics"), "a football match", k=3)["b"]

    # build-cache again on a machine whose only copy is the seed folder itself (maps and vectors read from it)
    again = warmup.export_seeds(fresh, [(sides, ("topics",))], out=tmp_path / "seed")
    assert [f.name for f in again] == [f.name for f in files]
    assert np.allclose(np.load(next((tmp_path / "seed" / "maps").glob("*.npz")))["base_xy"], m["xy_a"])


def test_the_warm_up_runs_its_later_jobs_after_the_sides_are_ready_even_when_one_fails(tmp_path, monkeypatch, caplog):
    """warmup.warm(then=...): the app's later start-up work (UMAP compiled for live runs) runs after the default
    sides are ready, in order, on the status line while it runs; a failing job is logged, the next still runs,
    nothing is raised, and the status line says Ready after them."""
    tiny_models(monkeypatch)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    done: list[str] = []
    monkeypatch.setattr(warmup, "prepare", lambda lab, sides, corpora: done.append("prepare"))

    def broken() -> None:
        done.append(lab.status_line())
        raise RuntimeError("no numba")

    warmup.warm(lab, then=[("maps", broken), ("more", lambda: done.append("after"))])
    assert done[0] == "prepare" and "Preparing in the background" in done[1] and "maps: preparing" in done[1]
    assert done[2] == "after" and "maps failed" in caplog.text and lab.status_line().startswith("Ready") and "maps" not in lab.status
