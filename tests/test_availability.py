"""Availability under public traffic (issue 20): the model pool is sized by memory and never makes the default
pair wait for another request's models; the first embedding of a large corpus is a visible, cancellable
background job, not a long request. On tiny random models."""
import dataclasses
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import embedlab.lab as lab_mod
import embedlab.side as side_mod
from embedlab.features import common, pairs, search
from embedlab.cache import model_of
from embedlab.corpora import Corpus
from embedlab.lab import Lab, ModelsBusy, model_bytes
from embedlab.registry import MODELS
from embedlab.side import parse_side
from tiny import A, B, make_adapter, tiny_encoder, tiny_models

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
    b, c = parse_side(B), parse_side(C)
    done = []
    with lab.hold(b, c):  # the long request: both its models held
        t = threading.Thread(target=lambda: done.append(pairs.compare(lab, A, A, "a man", "a dog")), daemon=True)
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
    a, b, c = (parse_side(k) for k in (A, B, C))
    for s in (a, b):
        with lab.hold(s):
            pass
    assert list(lab._models) == [A, B]
    with lab.hold(c):  # A is least recently used but resident: B goes
        assert set(lab._models) == {A, C}
    # C pinned by a long request: loading B waits for it (the budget holds two), then evicts it
    got, waiting = [], threading.Event()
    with lab.hold(c):
        t = threading.Thread(target=lambda: got.append(pairs.compare(lab, B, B, "a man", "a dog")), daemon=True)
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




def test_what_nobody_uses_is_let_go_when_idle_and_comes_back_when_asked(tmp_path, three, adapter):
    """Issue 20, memory: after a burst of requests for other models (the worst-request bench's search and map on
    minilm-l6, a live run's frames) the app's memory comes back. Lab.release_idle lets go of models that are not
    resident and adapters that are not the default sides', with the vectors and indexes kept in memory for those
    models, and the text vectors of requests, once nobody has used them for the idle time; never what is in use.
    They load again when asked."""
    make_adapter(Path(os.environ["EMBEDLAB_ADAPTER_DIRS"]) / "tiny-other", seed=5)  # a snapshot, a live run's frame
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    lab.resident.add(A)
    a, b, tuned, other = (parse_side(s) for s in (A, B, adapter, f"{A}+tiny-other"))
    corpus = _corpus(40)
    with lab.hold(a, tuned) as (_, rt):  # what the warm-up does for the default sides
        lab.resident_adapters.add((A, rt.adapter))
    for sides in ((a, b), (other,)):
        with lab.hold(*sides) as readies:
            for r in readies:
                lab.index(r, corpus)
    frame = readies[0].adapter
    cached = lab.corpus_vectors(a, b, corpus)
    lab.embed(a, b, ["a man plays", "a dog runs"])  # a compare's texts: 2 under each side
    assert set(lab._models) == {A, B} and len(lab._adapters) == 2 and len(lab._indexes) == 3
    assert lab.release_idle(idle_s=3600) == []  # all used a moment ago
    with lab.hold(b):  # in use: stays, however long ago it was last let go
        assert lab.release_idle(idle_s=0) == [f"{A} adapter {frame}", "4 text vectors"]
        assert B in lab._models
    assert lab.release_idle(idle_s=0) == [B] and set(lab._models) == {A}
    assert list(lab._adapters) == [(A, rt.adapter)]  # the default side's adapter stays
    assert set(three[A].adapters) == {rt.adapter}  # the frame's LoRA weights are gone from A
    assert {model_of(k) for k in lab._indexes} == {A} and {model_of(k) for k in lab.embeddings._memory} == {A}
    loads = len(three["loads"])
    with lab.hold(b, other) as (rb, ro):  # asked again: loaded and attached again, the same vectors
        np.testing.assert_array_equal(lab.corpus(rb, corpus), cached[1])
        assert ro.adapter in three[A].adapters
    assert len(three["loads"]) == loads + 1


def _corpus(n: int) -> Corpus:
    words = "a the man woman dog cat is playing eating guitar food running park".split()
    texts = tuple(f"{words[i % 13]} {words[(i // 13) % 13]} {words[(i // 169) % 13]} {i}" for i in range(n))
    return Corpus("big upload", texts, ("x",) * n, "test corpus", uploaded=True)


def _until_no_jobs(lab: Lab, timeout_s: float = 20) -> None:
    """Wait (at most ``timeout_s``) until the lab's background corpus jobs have all ended."""
    deadline = time.monotonic() + timeout_s
    while lab.embeddings.jobs() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_first_embedding_of_a_large_corpus_is_a_visible_cancellable_background_job(lab, monkeypatch):
    """Issue 20, defect 1/2: an uncached search embedded its whole corpus inside the request (293 s) and the
    status line read "Ready". Now the search answers within JOB_WAIT_S with the job's progress, the status line
    shows it (never "Ready" meanwhile), compares still answer, the job can be cancelled and resumes."""
    import embedlab.cache as cache_mod

    monkeypatch.setattr(lab_mod, "JOB_WAIT_S", 0.3)
    monkeypatch.setattr(cache_mod, "CHUNK", 256)  # two slices per cached chunk
    enc = lab.encoder(A)
    gate, slices = threading.Event(), []
    real = enc.embed

    def slow(texts, adapters=None, **kw):  # corpus slices wait for the gate after the first two; short requests pass
        if len(texts) > 2:
            slices.append(kw.get("priority"))
            if len(slices) > 2:
                gate.wait(30)
        return real(texts, adapters, **kw)

    monkeypatch.setattr(enc, "embed", slow)
    corpus = _corpus(1000)
    out: list = []
    t = threading.Thread(target=lambda: out.append(_try(lambda: search.search(lab, A, A, "upload", corpus,
                                                                                "a dog", 5))), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the search hung while its corpus was embedded"
    msg = str(out[0])
    assert isinstance(out[0], common.UserError) and "Building the index for tiny-llama on big upload" in msg
    assert " of 1,000 texts (" in msg and "%" in msg
    line = lab.status_line()
    assert "Building the index for tiny-llama on big upload" in line and "of 1,000 texts" in line
    assert "Ready" not in line
    assert "cosine" in pairs.compare(lab, A, A, "a man", "a dog")  # other views answer meanwhile
    for _ in range(400):  # the job reaches the gate: its first chunk (two slices) is on disk
        if len(slices) > 2:
            break
        time.sleep(0.05)
    assert len(slices) > 2 and set(slices) == {lab_mod.BACKGROUND}  # the job's batches run at background priority
    assert lab.cancel_jobs() == 1
    gate.set()
    _until_no_jobs(lab, timeout_s=10)
    assert not lab.embeddings.jobs() and "Building" not in lab.status_line()
    monkeypatch.setattr(lab_mod, "JOB_WAIT_S", 30)
    slices.clear()
    r = search.top_k(lab, parse_side(A), parse_side(A), corpus, "a dog", 5)
    assert len(r["a"]) == 5
    assert len(slices) == 6  # resumed: the chunk finished before the cancel (2 slices of 8) was kept


def test_a_running_corpus_job_has_a_cancel_button_beside_the_status_line(lab, monkeypatch):
    """Issue 20: a corpus job could be cancelled from the API only. Now the status line has a Cancel button while
    a job runs; after a click the line says the job is stopping, then that it was cancelled and how far it got
    (the button gone, no "Building" left)."""
    import embedlab.cache as cache_mod
    from embedlab.features import status

    monkeypatch.setattr(lab_mod, "JOB_WAIT_S", 0.3)
    monkeypatch.setattr(cache_mod, "CHUNK", 256)
    enc = lab.encoder(A)
    gate, slices = threading.Event(), []
    real = enc.embed

    def slow(texts, adapters=None, **kw):  # the job's third slice waits for the gate
        if len(texts) > 2:
            slices.append(1)
            if len(slices) > 2:
                gate.wait(30)
        return real(texts, adapters, **kw)

    monkeypatch.setattr(enc, "embed", slow)
    line, button = status.view(lab)
    assert button["visible"] is False and "Building" not in line
    assert isinstance(_try(lambda: search.search(lab, A, A, "upload", _corpus(1000), "a dog", 5)), common.UserError)
    for _ in range(400):
        if len(slices) > 2:
            break
        time.sleep(0.05)
    line, button = status.view(lab)
    assert button["visible"] is True and "Building the index for tiny-llama on big upload" in line
    line, button = status.cancel(lab)
    assert button["visible"] is False and "Building" not in line
    assert re.search(r"Stopping the index for tiny-llama on big upload\*\* at \d+ of 1,000 texts", line), line
    assert "Cancelled" not in line  # said once it has stopped
    gate.set()
    _until_no_jobs(lab, timeout_s=10)
    line, button = status.view(lab)
    assert button["visible"] is False and "Stopping" not in line and "Building" not in line
    assert re.search(r"Cancelled\*\* building the index for tiny-llama on big upload at \d+ of 1,000 texts", line), line
    assert "search or map again to resume" in line
    monkeypatch.setattr(lab_mod, "CANCELLED_NOTE_S", 0.0)  # the note goes after a minute
    assert "Cancelled" not in lab.status_line()


def _try(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return e


def test_embed_has_bounded_work_and_runs_long_lists_at_background_priority(lab, monkeypatch):
    """Issue 20, defect 2: /embed took 256 texts of 20,000 characters (109-127 s of work on 2 cores) at
    interactive priority, and 8 such calls pushed the compare p50 from 0.28 s to 6.9 s. Now its characters and
    tokens are capped like /batch_pairs', and a long list runs at background priority."""
    enc = lab.encoder(A)
    seen = []
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda texts, adapters=None, priority=0, **kw: seen.append(priority)
                        or real(texts, adapters, priority=priority, **kw))
    words = "a the man woman dog cat is playing eating guitar food running park".split()
    long_text = " ".join(words[i % 13] for i in range(3500))  # ~15,000 characters, under the per-text limit
    with pytest.raises(common.UserError, match=r"characters in all; the API embeds at most 200,000 per call"):
        pairs.embed_api(lab, A, A, [long_text + f" {i}" for i in range(256)])
    assert not seen  # refused before any work
    monkeypatch.setattr(lab_mod, "MAX_EMBED_TOKENS", 1000)
    texts = [f"{words[i % 13]} {words[i // 13 % 13]} is playing {i}" for i in range(256)]
    with pytest.raises(common.UserError, match=r"tokens \(each text cut to its model's limit\); the API embeds at most 1,000"):
        pairs.embed_api(lab, A, A, texts)
    monkeypatch.setattr(lab_mod, "MAX_EMBED_TOKENS", 32_768)
    out = pairs.embed_api(lab, A, A, texts)  # ~2,800 tokens: a long list
    assert len(out["a"]) == 256 and seen == [lab_mod.BACKGROUND]
    pairs.embed_api(lab, A, A, ["a dog", "a cat"])  # a short one stays interactive
    assert seen[-1] == lab_mod.INTERACTIVE
    # each text counts what the encoder embeds: cut to max_length tokens (tiny-llama: 32)
    assert lab_mod._tokens(lab_mod.Ready(parse_side(A), enc, None), [long_text]) == enc.max_length


def test_a_jobs_estimate_grows_while_it_stalls(monkeypatch):
    """The bench on a loaded machine showed "128 of 10,000 texts (1%, about 12 min left)" for minutes while the
    job waited behind interactive work: the estimate is the rate measured up to now, so it grows in a stall."""
    import embedlab.cache as cache_mod

    now = [100.0]
    monkeypatch.setattr(cache_mod.time, "monotonic", lambda: now[0])
    job = cache_mod.Job("k", "x on y", 10_000)
    job.update(0, 10_000)
    assert "estimating the time left" in job.describe()
    now[0] += 10
    job.update(1_000, 10_000)
    assert job.describe() == "1,000 of 10,000 texts (10%, about 90 s left)"
    now[0] += 80  # no batch for 80 s
    assert job.describe() == "1,000 of 10,000 texts (10%, about 14 min left)"


def test_a_search_on_two_uncached_sides_starts_both_jobs_at_once(lab, monkeypatch):
    """Side B's job used to start only when side A's was done and the user asked again; now both start with the
    first request and its message lists both."""
    monkeypatch.setattr(lab_mod, "JOB_WAIT_S", 0.3)
    gate = threading.Event()
    for key in (A, B):
        enc = lab.encoder(key)
        monkeypatch.setattr(enc, "embed", lambda texts, adapters=None, _real=enc.embed, **kw:
                            (len(texts) <= 2 or gate.wait(30), _real(texts, adapters, **kw))[1])
    try:
        with pytest.raises(common.UserError) as e:
            search.search(lab, A, B, "upload", _corpus(600), "a dog", 5)
        assert "Building the index for tiny-llama on big upload" in str(e.value)
        assert "Also building tiny-bert on big upload: 0 of 600 texts" in str(e.value)
        assert lab.status_line().count("Building the index for") == 2
    finally:
        gate.set()
    _until_no_jobs(lab)
    r = search.search(lab, A, B, "upload", _corpus(600), "a dog", 5)
    assert len(r[0]) == 5 and len(r[1]) == 5


def test_background_corpus_jobs_are_capped_and_a_new_one_is_refused_with_a_message(lab, monkeypatch):
    """Review of issue 20's jobs: a request gives up after JOB_WAIT_S, so upload + search in a loop started one
    detached 20,000-text job after another. Now at most MAX_JOBS run; the next is refused, saying which run."""
    import embedlab.cache as cache_mod

    monkeypatch.setattr(lab_mod, "JOB_WAIT_S", 0.3)
    monkeypatch.setattr(cache_mod, "MAX_JOBS", 1)
    gate = threading.Event()
    enc = lab.encoder(A)
    monkeypatch.setattr(enc, "embed", lambda texts, adapters=None, _real=enc.embed, **kw:
                        (len(texts) <= 2 or gate.wait(30), _real(texts, adapters, **kw))[1])
    first, second = _corpus(600), Corpus("other upload", tuple(f"other {i}" for i in range(600)), ("x",) * 600,
                                         "test corpus", uploaded=True)
    try:
        with pytest.raises(common.UserError, match="Building the index for tiny-llama on big upload"):
            search.search(lab, A, A, "upload", first, "a dog", 5)
        with pytest.raises(common.UserError, match=r"already building as many indexes as it builds at once \(1: tiny-llama on big upload"):
            search.search(lab, A, A, "upload", second, "a dog", 5)
        assert len(lab.embeddings.jobs()) == 1
    finally:
        gate.set()
    _until_no_jobs(lab)
    monkeypatch.setattr(lab_mod, "JOB_WAIT_S", 30)
    assert len(search.top_k(lab, parse_side(A), parse_side(A), second, "a dog", 5)["a"]) == 5  # now it runs
