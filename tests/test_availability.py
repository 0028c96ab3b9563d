"""Availability under public traffic (issue 20): the model pool is sized by memory and never makes the default
pair wait for another request's models; the first embedding of a large corpus is a visible, cancellable
background job, not a long request. On tiny random models."""
import dataclasses
import threading
import time

import pytest

import embedlab.lab as lab_mod
import embedlab.side as side_mod
from embedlab import views
from embedlab.lab import Lab, ModelsBusy, model_bytes
from embedlab.registry import MODELS
from tiny import A, B, tiny_encoder, tiny_models

C = "tiny-3"


@pytest.fixture
def three(monkeypatch):
    """Three loadable tiny models (A, B, C) served through the Lab's real loading path; returns the encoders."""
    encs = tiny_models(monkeypatch)
    monkeypatch.setitem(MODELS, C, dataclasses.replace(MODELS[A], key=C, base_ids=(C,)))
    monkeypatch.setattr(side_mod, "available_models", lambda: {A: (True, ""), B: (True, ""), C: (True, "")})
    encs[C] = tiny_encoder("llama", seed=3)
    loads = []
    monkeypatch.setattr(lab_mod, "load_encoder", lambda key, device=None: loads.append(key) or encs[key])
    encs["loads"] = loads
    return encs


def test_the_default_pair_never_waits_for_a_long_request_on_two_other_models(tmp_path, three):
    """Issue 20, defect 1: a search on two other models (minilm + gemma) held both of the two model slots for
    ~5 minutes while the default compare waited 285 s. Now the pool is sized by memory: the default compare
    loads and answers at once, while the long request still holds its two models."""
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    lab.resident.add(A)
    b, c = views._side(B, "side"), views._side(C, "side")
    done = []
    with lab.hold(b, c):  # the long request: both its models held
        t = threading.Thread(target=lambda: done.append(views.compare(lab, A, A, "a man", "a dog")), daemon=True)
        t.start()
        t.join(20)
        assert done and "cosine" in done[0], "the default compare waited for the other request's models"
        assert set(lab._models) == {A, B, C}
    assert "Ready" not in lab.status_line() or not lab.status  # nothing left waiting


def test_the_pool_evicts_by_memory_keeps_resident_models_and_refuses_what_cannot_fit(tmp_path, three):
    sizes = {k: model_bytes(three[k]) for k in (A, B, C)}
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None, model_bytes=sizes[A] + max(sizes[B], sizes[C]))
    lab.resident.add(A)
    lab._bytes.update(sizes)  # measured at an earlier load (before one, the registry's parameter count estimates it)
    a, b, c = (views._side(k, "side") for k in (A, B, C))
    for s in (a, b):
        with lab.hold(s):
            pass
    assert list(lab._models) == [A, B]
    with lab.hold(c):  # A is least recently used but resident: B goes
        assert set(lab._models) == {A, C}
    # C pinned by a long request: loading B waits for it (the budget holds two), then evicts it
    got, waiting = [], threading.Event()
    with lab.hold(c):
        t = threading.Thread(target=lambda: got.append(views.compare(lab, B, B, "a man", "a dog")), daemon=True)
        t.start()
        for _ in range(200):
            if "waiting for tiny-bert" in lab.status_line():
                waiting.set()
                break
            time.sleep(0.02)
        assert waiting.is_set() and not got
    t.join(20)
    assert got and set(lab._models) == {A, B}
    small = Lab(cache_dir=tmp_path / "cache", seed_dir=None, model_bytes=sizes[A] + 10)
    small.resident.add(A)
    small._bytes.update(sizes)
    with small.hold(a):
        pass
    with pytest.raises(ModelsBusy, match="EMBEDLAB_MODEL_MEMORY_MB"):
        with small.hold(b):
            pass
