"""The compute thread: one thread runs every forward pass, interactive work overtakes background batches."""
import threading
import time

import numpy as np
import pytest

from embedlab.compute import BACKGROUND, INTERACTIVE, on_compute_thread
from tiny import make_adapter, tiny_encoder


def test_runs_on_one_thread_and_propagates_errors():
    names = {on_compute_thread(lambda: threading.current_thread().name) for _ in range(3)}
    assert names == {"embedlab-compute"}
    assert on_compute_thread(lambda: on_compute_thread(lambda: 7)) == 7  # re-entrant, no deadlock
    with pytest.raises(ZeroDivisionError):
        on_compute_thread(lambda: 1 / 0)
    assert on_compute_thread(lambda: 1) == 1  # the thread survived the error


def test_interactive_request_overtakes_a_long_background_job():
    order = []
    gate = threading.Event()
    blocker = threading.Thread(target=on_compute_thread, args=(gate.wait,))
    blocker.start()  # occupy the compute thread so both kinds of work queue up behind it
    time.sleep(0.05)
    jobs = [threading.Thread(target=on_compute_thread, args=(lambda i=i: order.append(f"bg{i}"), BACKGROUND))
            for i in range(5)]
    for j in jobs:
        j.start()
    time.sleep(0.05)
    fast = threading.Thread(target=on_compute_thread, args=(lambda: order.append("interactive"), INTERACTIVE))
    fast.start()
    time.sleep(0.05)
    gate.set()
    for t in [blocker, fast, *jobs]:
        t.join(5)
    assert order[0] == "interactive" and sorted(order[1:]) == [f"bg{i}" for i in range(5)]


def test_concurrent_base_and_adapter_requests_never_mix_adapter_state(tmp_path):
    """Many threads asking for base, tuned and both at once get what each asked for."""
    from embedlab.loading import attach_adapter

    enc = tiny_encoder("llama")
    make_adapter(tmp_path / "a", seed=1)
    attach_adapter(enc, tmp_path / "a")
    name = enc.active_adapter
    texts = ["a man is playing a guitar", "the dog is eating food", "a woman runs in the park"]
    want_base, want_tuned = enc.encode(texts, use_adapter=False), enc.encode(texts, use_adapter=name)
    errors = []

    def worker(k: int) -> None:
        for i in range(10):
            kind = (k + i) % 3
            if kind == 0:
                ok = np.allclose(enc.encode(texts, use_adapter=False), want_base, atol=1e-5)
            elif kind == 1:
                ok = np.allclose(enc.encode(texts, use_adapter=name, priority=BACKGROUND), want_tuned, atol=1e-5)
            else:
                b, t = np.split(enc.encode_mixed(texts + texts, [None] * len(texts) + [name] * len(texts)), 2)
                ok = np.allclose(b, want_base, atol=1e-5) and np.allclose(t, want_tuned, atol=1e-5)
            if not ok:
                errors.append((k, i, kind))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_serving_settings_bound_the_heap_and_keep_computing():
    """configure_for_serving (the app's process settings): glibc arenas capped, a trimming thread running,
    background batches capped, and the compute thread still answers. In a subprocess: the settings are process-wide."""
    import subprocess
    import sys

    code = (
        "import threading, embedlab.compute as c\n"
        "c.configure_for_serving(256, threads=1, trim_heap_every_s=0.05)\n"
        "assert c.background_batch_tokens() == 256\n"
        "assert c._glibc() is not None, 'this test expects glibc (Linux)'\n"
        "assert any(t.name == 'heap-trim' for t in threading.enumerate())\n"
        "import time; time.sleep(0.2)\n"
        "import torch; assert c.on_compute_thread(torch.get_num_threads) == 1\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_work_of_a_request_whose_client_has_gone_stops_between_batches():
    """stop_when: once the check is true, the caller's next batch is not run and Cancelled is raised;
    other callers' work goes on. (The app's check asks Gradio whether the event's client is still there.)"""
    from embedlab.compute import Cancelled, stop_when

    enc = tiny_encoder("llama")
    texts = [f"a man is playing a guitar {i}" for i in range(200)]
    batches = []
    real = enc.model.forward

    def counting_forward(*a, **k):
        batches.append(1)
        return real(*a, **k)

    enc.model.forward = counting_forward
    gone = threading.Event()
    with stop_when(lambda: len(batches) >= 3 or gone.is_set()):
        with pytest.raises(Cancelled):
            enc.encode(texts, batch_size=8, priority=BACKGROUND)
    assert len(batches) == 3  # 25 batches asked for; none ran after the client left
    batches.clear()
    assert enc.encode(texts[:16], batch_size=8).shape == (16, 32) and len(batches) == 2  # outside: runs as usual
    gone.set()
    with stop_when(gone.is_set), pytest.raises(Cancelled):  # already gone: nothing is queued at all
        on_compute_thread(lambda: pytest.fail("ran"))
    with stop_when(lambda: 1 / 0):  # a broken check never stops work
        assert on_compute_thread(lambda: 5) == 5
