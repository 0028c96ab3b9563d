"""The compute thread: one thread runs every forward pass, interactive work overtakes background batches."""
import queue
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
    from embedlab import compute

    gate, blocker = _block_compute_thread()  # both kinds of work queue up behind it
    q0 = compute._queue.qsize()
    jobs = [threading.Thread(target=on_compute_thread, args=(lambda i=i: order.append(f"bg{i}"), BACKGROUND))
            for i in range(5)]
    for j in jobs:
        j.start()
    _wait_queued(q0 + 5)
    fast = threading.Thread(target=on_compute_thread, args=(lambda: order.append("interactive"), INTERACTIVE))
    fast.start()
    _wait_queued(q0 + 6)
    gate.set()
    for t in [blocker, fast, *jobs]:
        t.join(5)
    assert order[0] == "interactive" and sorted(order[1:]) == [f"bg{i}" for i in range(5)]


def test_concurrent_base_and_adapter_requests_never_mix_adapter_state(tmp_path):
    """Many threads asking for base, tuned and both at once get what each asked for."""
    from embedlab.loading import attach_adapter

    enc = tiny_encoder("llama")
    make_adapter(tmp_path / "a", seed=1)
    name = attach_adapter(enc, tmp_path / "a").name
    texts = ["a man is playing a guitar", "the dog is eating food", "a woman runs in the park"]
    want_base, want_tuned = enc.embed(texts, None), enc.embed(texts, name)
    errors = []

    def worker(k: int) -> None:
        for i in range(10):
            kind = (k + i) % 3
            if kind == 0:
                ok = np.allclose(enc.embed(texts, None), want_base, atol=1e-5)
            elif kind == 1:
                ok = np.allclose(enc.embed(texts, name, priority=BACKGROUND), want_tuned, atol=1e-5)
            else:
                b, t = np.split(enc.embed(texts + texts, [None] * len(texts) + [name] * len(texts)), 2)
                ok = np.allclose(b, want_base, atol=1e-5) and np.allclose(t, want_tuned, atol=1e-5)
            if not ok:
                errors.append((k, i, kind))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def in_a_new_process(code: str) -> None:
    """Run ``code`` in a new Python process (process-wide settings stay out of this one); it must print "ok"."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_serving_settings_bound_the_heap_and_keep_computing():
    """configure_for_serving (the app's process settings): glibc arenas capped, a trimming thread running,
    background batches capped, and the compute thread still answers. In a subprocess: the settings are process-wide."""
    code = (
        "import sys, threading, embedlab.compute as c\n"
        "assert c.on_compute_thread(lambda: 1) == 1 and sys.getswitchinterval() == 0.005  # the CLI, training: untouched\n"
        "assert c.background_batch_tokens(0.001) is None and not c.background_batches_timed()  # not serving: no cap\n"
        "c.configure_for_serving(0.25, threads=1, trim_heap_every_s=0.05)\n"
        "assert abs(sys.getswitchinterval() - c.SWITCH_INTERVAL_S) < 1e-6\n"
        "assert c.background_batches_timed() and c.background_batch_tokens(None) == 32\n"
        "assert c.background_batch_tokens(0.001) == 250\n"
        "assert c._glibc() is not None, 'this test expects glibc (Linux)'\n"
        "assert any(t.name == 'heap-trim' for t in threading.enumerate())\n"
        "import time; time.sleep(0.2)\n"
        "import torch; assert c.on_compute_thread(torch.get_num_threads) == 1\n"
        "print('ok')\n"
    )
    in_a_new_process(code)


def test_the_app_bounds_the_per_shape_kernel_caches_before_torch_loads():
    """app.py caps oneDNN's and torch's per-shape kernel caches (each new input shape's kernels stayed, 1,024 of
    each: hundreds of MiB, issue 20). The variables are read when torch starts, so they must be set before anything
    imports it; a host's own values win. In a subprocess: the check hooks the first import of torch."""
    code = (
        "import builtins, os, sys\n"
        "seen = {}\n"
        "real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name.split('.')[0] == 'torch' and 'torch' not in sys.modules and not seen:\n"
        "        seen.update((v, os.environ.get(v)) for v in ('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'LRU_CACHE_CAPACITY'))\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\n"
        "os.environ['LRU_CACHE_CAPACITY'] = '7'  # a host's setting\n"
        "from embedlab import ROOT; sys.path.insert(0, str(ROOT)); import app\n"
        "assert seen == {'ONEDNN_PRIMITIVE_CACHE_CAPACITY': '16', 'LRU_CACHE_CAPACITY': '7'}, seen\n"
        "print('ok')\n"
    )
    in_a_new_process(code)


def test_beside_a_live_run_the_compute_thread_takes_one_core_and_gets_its_own_back():
    """sharing_cores (a live run's block): the compute thread on one intra-op thread while it lasts (nested blocks
    too), its own count back after, even when the block's stop check says stop; threads started later still take
    one. Outside a serving process nothing changes. In a subprocess: thread counts are process-wide."""
    code = (
        "import threading, torch, embedlab.compute as c\n"
        "with c.sharing_cores():\n"
        "    assert c.on_compute_thread(torch.get_num_threads) == torch.get_num_threads()  # not serving: untouched\n"
        "c.configure_for_serving(0.25, threads=2, trim_heap_every_s=None)\n"
        "assert c.on_compute_thread(torch.get_num_threads) == 2\n"
        "with c.stop_when(lambda: True):\n"
        "    with c.sharing_cores():\n"
        "        with c.sharing_cores():\n"
        "            try:\n"
        "                c.beside(lambda: 1)\n"
        "                raise AssertionError('beside ran under a stop')\n"
        "            except c.Cancelled:\n"
        "                pass\n"
        "        assert c._sharing == 1\n"
        "        with c.stop_when(None):\n"
        "            assert c.on_compute_thread(torch.get_num_threads) == 1\n"
        "assert c.on_compute_thread(torch.get_num_threads) == 2 and torch.get_num_threads() == 1\n"
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append(torch.get_num_threads())); t.start(); t.join()\n"
        "assert out == [1], out\n"
        "print('ok')\n"
    )
    in_a_new_process(code)


def test_the_compute_thread_lets_go_of_its_last_task():
    """Once a task has run, the compute thread holds no reference to it while it waits for the next one: a live
    run's last save (a closure over its trainer) kept the run's whole model alive until another request came."""
    import gc
    import weakref

    from embedlab.compute import on_compute_thread

    class Model:  # stands for what a task's closure holds
        pass

    model = Model()
    gone = weakref.ref(model)
    assert on_compute_thread(lambda held=model: held is not None)  # the task itself holds it, as a closure would
    del model
    # the caller has its result before the thread has finished with the task: wait for it, a bounded while
    for _ in range(500):
        if gone() is None:  # no cycle holds it: freed as the last reference goes
            break
        time.sleep(0.01)
    gc.collect()
    assert gone() is None, "the compute thread still holds its last task"


def test_serving_leaves_the_cores_to_the_compute_thread():
    """configure_for_serving: the compute thread runs torch on every core; any other thread (the main one, a new
    one, one that starts later) on one, so no second OpenMP team makes libgomp throttle the compute thread's
    (docs/precision.md: 1.6x slower passes). In a subprocess: torch's thread settings are process-wide."""
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: every thread runs torch on one anyway")

    code = (
        "import threading, torch, embedlab.compute as c\n"
        "assert torch.get_num_threads() >= 2, 'this test needs 2 cores'\n"
        "cores = torch.get_num_threads()\n"
        "c.configure_for_serving(0.25)\n"
        "sizes = []\n"
        "def other():\n"
        "    torch.ones(1 << 20).add_(1)  # a parallel op: the thread's size is set by now\n"
        "    sizes.append(torch.get_num_threads())\n"
        "t = threading.Thread(target=other); t.start(); t.join()\n"
        "def on_compute():\n"
        "    torch.ones(1 << 20).add_(1)\n"
        "    return torch.get_num_threads()\n"
        "assert c.on_compute_thread(on_compute) == cores, 'compute thread'\n"
        "assert sizes == [1] and torch.get_num_threads() == 1, (sizes, torch.get_num_threads())\n"
        "print('ok')\n"
    )
    in_a_new_process(code)


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
            enc.embed(texts, batch_size=8, priority=BACKGROUND)
    assert len(batches) == 3  # 25 batches asked for; none ran after the client left
    batches.clear()
    assert enc.embed(texts[:16], batch_size=8).shape == (16, 32) and len(batches) == 2  # outside: runs as usual
    gone.set()
    with stop_when(gone.is_set), pytest.raises(Cancelled):  # already gone: nothing is queued at all
        on_compute_thread(lambda: pytest.fail("ran"))
    with stop_when(lambda: 1 / 0):  # a broken check never stops work
        assert on_compute_thread(lambda: 5) == 5


def _block_compute_thread():
    """Occupy the compute thread until the returned event is set (work submitted meanwhile queues up)."""
    gate = threading.Event()
    started = threading.Event()
    t = threading.Thread(target=on_compute_thread, args=(lambda: (started.set(), gate.wait(10)),))
    t.start()
    assert started.wait(10)
    return gate, t


def _wait_queued(n: int) -> None:
    from embedlab import compute

    for _ in range(1000):
        if compute._queue.qsize() >= n:
            return
        time.sleep(0.005)
    raise AssertionError(f"{n} tasks never queued")


def test_rows_queued_together_share_one_call_and_each_gets_its_own_slice():
    from embedlab.compute import Cancelled, run_rows, stop_when

    calls = []

    def run(rows):
        calls.append(list(rows))
        if "boom" in rows:
            raise ValueError("boom")
        return [r * 10 for r in rows]

    gate, blocker = _block_compute_thread()
    results, errors = {}, {}

    def ask(name, rows, key="k", priority=INTERACTIVE, check=None):
        try:
            with stop_when(check):
                results[name] = run_rows(key, rows, run, priority, max_rows=6)
        except Exception as e:  # noqa: BLE001  the test looks at it
            errors[name] = e

    threads = []
    for name, rows, kw in [("a", [1, 2], {}), ("b", [3], {}), ("other", [7], {"key": "k2"}),
                           ("gone", [99], {"check": lambda: gate.is_set()}), ("c", [4, 5], {}), ("d", [6, 8], {}),
                           ("bg", [9], {"priority": BACKGROUND})]:
        threads.append(threading.Thread(target=ask, args=(name, rows), kwargs=kw))
        threads[-1].start()
        _wait_queued(len(threads))  # queued in this order
    gate.set()
    for t in [blocker, *threads]:
        t.join(10)
    assert results["a"] == [10, 20] and results["b"] == [30] and results["c"] == [40, 50] and results["d"] == [60, 80]
    assert results["other"] == [70] and results["bg"] == [90]
    assert isinstance(errors["gone"], Cancelled)  # its client left while it waited: its row was dropped
    # one call for a, b, gone's place, c (6 rows at most: d waits for the next call); other keys and priorities apart
    assert calls[0] == [1, 2, 3, 4, 5] and calls[1] == [7] and calls[2] == [6, 8] and calls[3] == [9]
    assert run_rows("k", ["x"], lambda rows: [r + "!" for r in rows]) == ["x!"]  # alone, it simply runs
    with pytest.raises(ValueError, match="boom"):
        run_rows("k", ["boom"], run)


def test_concurrent_encodes_share_forward_passes_and_get_their_own_vectors(tmp_path):
    """Compares queued at the same moment run as one forward pass (rows of base and adapter mixed), and each
    request gets the vectors it would have got alone."""
    from embedlab.loading import attach_adapter

    enc = tiny_encoder("llama")
    make_adapter(tmp_path / "a", seed=1)
    name = attach_adapter(enc, tmp_path / "a").name
    pairs = [[f"a man is playing a guitar {i}", f"the dog eats food number {i}"] for i in range(5)]
    def both(p):  # base and adapter vectors of the same texts, one mixed pass (what a compare asks)
        return np.split(enc.embed(p + p, [None] * len(p) + [name] * len(p)), 2)

    alone = [both(p) for p in pairs]
    base_only = enc.embed(pairs[0], None)
    passes = []
    real = enc.model.forward

    def counting_forward(*a, **k):
        passes.append(len(k.get("adapter_names") or []))
        return real(*a, **k)

    enc.model.forward = counting_forward
    gate, blocker = _block_compute_thread()
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, both(pairs[i]))) for i in range(5)]
    threads.append(threading.Thread(target=lambda: got.__setitem__("base", enc.embed(pairs[0], None))))
    for n, t in enumerate(threads, 1):
        t.start()
        _wait_queued(n)
    gate.set()
    for t in [blocker, *threads]:
        t.join(30)
    assert passes == [22]  # 6 requests, one pass of 5 x 4 + 2 rows
    for i in range(5):
        assert np.allclose(got[i][0], alone[i][0], atol=1e-5) and np.allclose(got[i][1], alone[i][1], atol=1e-5)
    assert np.allclose(got["base"], base_only, atol=1e-5)


def test_urgent_work_runs_before_other_interactive_work_but_not_before_its_own_kind():
    from embedlab.compute import urgent

    order = []
    gate, blocker = _block_compute_thread()

    def ask(name, is_urgent):
        if is_urgent:
            with urgent():
                on_compute_thread(lambda: order.append(name))
        else:
            on_compute_thread(lambda: order.append(name))

    threads = []
    for name, is_urgent in [("search1", False), ("compare1", True), ("search2", False), ("compare2", True)]:
        threads.append(threading.Thread(target=ask, args=(name, is_urgent)))
        threads[-1].start()
        _wait_queued(len(threads))
    gate.set()
    for t in [blocker, *threads]:
        t.join(10)
    assert order == ["compare1", "compare2", "search1", "search2"]


class _Drained(Exception):
    """The scripted queue below is empty: the loop under test stops here."""


class _ScriptedQueue(queue.PriorityQueue):
    """A compute queue for driving ``compute._loop`` in the test's own thread: ``get`` never blocks, and raises
    :class:`_Drained` once the queue is empty."""

    def get(self, block: bool = True, timeout: float | None = None):
        try:
            return super().get(block=False)
        except queue.Empty:
            raise _Drained from None


def _drive(tasks: list[tuple[int, str, float]]) -> list[tuple[str, float]]:
    """Run ``compute._loop`` over ``tasks`` (priority, name, seconds each takes on a fake clock), all queued at
    time 0 in this order; returns (name, start time) in the order the loop ran them."""
    from concurrent.futures import Future

    from embedlab import compute

    now = [0.0]
    ran: list[tuple[str, float]] = []
    q = _ScriptedQueue()
    for priority, name, secs in tasks:
        def work(name=name, secs=secs):
            ran.append((name, now[0]))
            now[0] += secs
        q.put((priority, next(compute._order), work, Future(), None))

    def sleep(s: float) -> None:
        now[0] += s

    with pytest.raises(_Drained):
        compute._loop(q, clock=lambda: now[0], sleep=sleep)
    return ran


def test_background_work_gets_a_share_under_unbroken_interactive_traffic():
    """Issue 20: background batches ran only after GRACE_S without interactive work, so traffic that never paused
    stalled a corpus job for as long as it lasted. Now waiting background work gets one slice every
    BACKGROUND_SHARE_S, and an interactive task waits for at most one background slice. On a fake clock."""
    from embedlab.compute import BACKGROUND_SHARE_S, GRACE_S

    interactive = [(INTERACTIVE, f"i{k}", 0.3) for k in range(40)]  # 12 s of work, queued all the time
    ran = _drive([(BACKGROUND, f"bg{k}", 0.5) for k in range(3)] + interactive)
    names = [n for n, _ in ran]
    bg_at = [t for n, t in ran if n.startswith("bg")]
    assert len(names) == 43 and [n for n in names if n.startswith("bg")] == ["bg0", "bg1", "bg2"]
    assert not names[-1].startswith("bg"), "the background work waited for the interactive traffic to end"
    # one slice per share at least, measured from when it began to wait (t=0) or last ran
    gaps = [b - a for a, b in zip([0.0] + [t + 0.5 for t in bg_at], bg_at)]
    assert all(g <= BACKGROUND_SHARE_S + 0.3 for g in gaps), gaps
    # and never two background slices in a row while interactive work waits
    assert all(not (a.startswith("bg") and b.startswith("bg")) for a, b in zip(names, names[1:])), names
    assert GRACE_S < BACKGROUND_SHARE_S


def test_interactive_work_still_goes_first_when_background_work_has_had_its_share():
    """Without the share due, the old order holds: every interactive task before the background work, which then
    starts GRACE_S after the last interactive one."""
    from embedlab.compute import GRACE_S

    ran = _drive([(BACKGROUND, "bg", 0.5)] + [(INTERACTIVE, f"i{k}", 0.3) for k in range(3)])
    assert [n for n, _ in ran] == ["i0", "i1", "i2", "bg"]
    assert ran[-1][1] >= 0.9 + GRACE_S - 1e-9


def test_idle_work_gets_no_share_and_runs_in_the_first_pause():
    """IDLE work (a live run's frames) waits for as long as the interactive traffic lasts, without the background share,
    and runs once it pauses for GRACE_S; background work still gets its share meanwhile. On a fake clock."""
    from embedlab.compute import GRACE_S, IDLE

    interactive = [(INTERACTIVE, f"i{k}", 0.3) for k in range(40)]  # 12 s of work, queued all the time
    ran = _drive([(IDLE, "idle", 0.5), (BACKGROUND, "bg", 0.5)] + interactive)
    names = [n for n, _ in ran]
    assert names[-1] == "idle" and names.index("bg") < len(names) - 2  # the background share came; idle waited
    assert ran[-1][1] >= 12.5 + GRACE_S - 1e-9


def test_a_task_longer_than_the_slow_unit_threshold_is_logged_with_its_name(monkeypatch, caplog):
    from embedlab import compute

    monkeypatch.setattr(compute, "SLOW_UNIT_S", 0.05)

    def a_long_backward() -> int:
        time.sleep(0.1)
        return 3

    with caplog.at_level("WARNING", logger="embedlab.compute"):
        assert on_compute_thread(a_long_backward, BACKGROUND) == 3
        on_compute_thread(lambda: 1)  # a short one is not logged
    slow = [r.getMessage() for r in caplog.records if r.name == "embedlab.compute"]
    assert len(slow) == 1 and "a_long_backward" in slow[0] and f"priority {BACKGROUND}" in slow[0], slow


def test_the_trace_has_a_line_per_task_with_each_request_s_queue_wait_and_its_run(monkeypatch, tmp_path):
    """EMBEDLAB_TRACE_COMPUTE: what each task was, its priority, the rows it computed, each request's wait, its run;
    a trace that cannot be written turns itself off and the work goes on."""
    import json

    from embedlab import compute

    path = tmp_path / "trace.jsonl"
    monkeypatch.setattr(compute, "TRACE_PATH", str(path))
    monkeypatch.setattr(compute, "_trace_file", None)

    def a_long_backward() -> int:
        time.sleep(0.05)
        return 3

    def doubled(rows):
        return [r * 2 for r in rows]

    assert on_compute_thread(a_long_backward, BACKGROUND) == 3
    gate, blocker = _block_compute_thread()  # two requests' rows queue up and share one pass
    q0 = compute._queue.qsize()
    outs: list = []
    sharers = [threading.Thread(target=lambda r=r: outs.append(compute.run_rows(("k",), r, doubled)))
               for r in ([1, 2, 3], [4])]
    for t in sharers:
        t.start()
    _wait_queued(q0 + 2)
    gate.set()
    for t in [blocker, *sharers]:
        t.join(10)
    assert sorted(outs) == [[2, 4, 6], [8]]

    def barrier() -> None:  # a task queued after theirs: their lines are written (after their results) once it ran
        on_compute_thread(lambda: None)

    barrier()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    (long,) = [x for x in lines if x["what"].endswith("a_long_backward")]
    (shared,) = [x for x in lines if x["what"].endswith("doubled")]
    assert long["priority"] == BACKGROUND and long["run_s"] >= 0.05 and long["rows"] == 1 and len(long["waits"]) == 1
    assert shared["priority"] == INTERACTIVE and shared["rows"] == 4 and len(shared["waits"]) == 2
    assert all(w >= 0 for w in shared["waits"]) and shared["t"] >= long["t"] > time.time() - 600
    monkeypatch.setattr(compute, "TRACE_PATH", None)
    barrier()
    n = len(path.read_text().splitlines())
    on_compute_thread(lambda: 1)  # not traced once it is off
    barrier()
    assert len(path.read_text().splitlines()) == n
    monkeypatch.setattr(compute, "TRACE_PATH", str(tmp_path / "no-such-folder" / "trace.jsonl"))
    assert on_compute_thread(lambda: 5) == 5  # unwritable: the work done, the trace off
    barrier()
    assert compute.TRACE_PATH is None
    compute._trace_file.close()


def test_the_compute_thread_says_how_recently_it_served_interactive_work(monkeypatch):
    """seconds_since_interactive: what a live run reads to space its frames while visitors use the app."""
    from embedlab import compute

    monkeypatch.setattr(compute, "_last_interactive", -float("inf"))
    compute.on_compute_thread(lambda: 1, priority=compute.BACKGROUND)
    assert compute.seconds_since_interactive() == float("inf")  # background work is not a visitor's
    compute.on_compute_thread(lambda: 1)  # interactive
    assert compute.seconds_since_interactive() < 60.0
