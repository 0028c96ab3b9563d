"""The one thread that runs this process's numeric kernels (model forward passes, FAISS search).

Two reasons for one thread. (1) torch and FAISS parallelise with OpenMP, which gives
every calling thread its own team of workers whose idle members spin; a web server
calls handlers from rotating threads, and on 2 cores the spinning teams stole the CPU
(a forward pass took ~250 ms instead of ~110 ms, a 10K FAISS search ~45 ms more).
(2) Work is queued by priority, one batch at a time, so a long background job (embedding
a corpus, an evaluation) lets an interactive request in after its current batch instead
of after the whole job, and pauses while interactive requests keep coming, except for one batch every
BACKGROUND_SHARE_S, so that unbroken traffic cannot stall it for good; and the
model's adapter state is only touched from here. (3) Small interactive encodes that queue up
at the same time (16 users' compares, searches, embeds) are *coalesced* into one forward pass
(:func:`run_rows`): bench/share_passes.py, 16 users on 2 cores: 1.13x the requests/s when idle
(more beside a busy neighbour, where each pass's fixed cost grows: 16 pairs in one pass 2.2-2.5x faster).
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import heapq
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
URGENT, INTERACTIVE, BACKGROUND = -10, 0, 10
# Work that only runs in pauses of the interactive traffic, with no share under unbroken traffic (see _loop): a live
# run's frames, which nobody waits for as a compare is waited for
IDLE = 20
_NAME = "embedlab-compute"
_queue: queue.PriorityQueue = queue.PriorityQueue()
_order = itertools.count()  # FIFO within one priority
_started = threading.Lock()
_thread: threading.Thread | None = None
_background_batch_s: float | None = None  # configure_for_serving's budget per background batch (None: no cap)
BACKGROUND_BATCH_TOKENS = (32, 256)  # the least and most padded tokens of a capped background batch
# What the app asks a background batch to take (configure_for_serving): about one compare's pass under load, so that
# a compare arriving during one waits at most about as long again (docs/load.md, 2026-12-07 AMD fp32)
BACKGROUND_BATCH_S = 0.25
# The calling request's "has my client gone?" test (see stop_when); checked before each task runs.
_stop_check: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("embedlab_stop_check", default=None)
# What INTERACTIVE means for the calling request (see urgent).
_interactive: contextvars.ContextVar[int] = contextvars.ContextVar("embedlab_interactive", default=INTERACTIVE)


class Cancelled(RuntimeError):
    """The request that queued this work has gone (its client disconnected or cancelled it)."""


@contextlib.contextmanager
def stop_when(check: Callable[[], bool] | None) -> Iterator[None]:
    """Within this block, work this thread queues on the compute thread is dropped, raising
    :class:`Cancelled`, once ``check()`` is true: a long job stops between two batches when its
    client leaves. ``check`` runs on the compute thread and must be cheap and thread-safe."""
    token = _stop_check.set(check)
    try:
        yield
    finally:
        _stop_check.reset(token)


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Within this block, INTERACTIVE work this thread queues runs before other interactive work.

    For the one request every visitor waits on and that costs least (a pair compare, one short
    forward pass): with 16 users sending requests back to back on 2 cores, first-come order made a
    compare wait behind everyone's searches and maps. Shortest-first keeps it short; the others
    wait at most for the compares queued with them (those share one pass, see run_rows).
    """
    token = _interactive.set(URGENT)
    try:
        yield
    finally:
        _interactive.reset(token)


def _gone(check: Callable[[], bool] | None) -> bool:
    try:
        return bool(check and check())
    except Exception:  # a failing check never stops work
        return False


class _Rows:
    """Rows of coalescable work queued on the compute thread: ``run(rows) -> results`` (one per row)
    computes any list of rows with the same ``key`` at once, so rows from several requests share one call."""

    __slots__ = ("key", "rows", "run", "max_rows")

    def __init__(self, key: Hashable, rows: list, run: Callable[[list], Sequence], max_rows: int) -> None:
        self.key, self.rows, self.run, self.max_rows = key, rows, run, max_rows


SHARE_PASSES = True  # False: every run_rows entry runs alone (bench/share_passes.py compares both in one run)


def _take_companions(q: queue.PriorityQueue, first: _Rows, priority: int) -> list[tuple]:
    """Remove from ``q``, and return, the waiting entries that can share ``first``'s call:
    the same key and priority, oldest first, up to ``first.max_rows`` rows in all."""
    if not SHARE_PASSES:
        return []
    taken, n = [], len(first.rows)
    with q.mutex:  # PriorityQueue's own lock: the heap is a plain list under it
        heap = q.queue
        for entry in sorted(e for e in heap if e[0] == priority and isinstance(e[2], _Rows) and e[2].key == first.key):
            if n + len(entry[2].rows) > first.max_rows:
                break
            taken.append(entry)
            n += len(entry[2].rows)
        if taken:
            ids = {id(e) for e in taken}
            heap[:] = [e for e in heap if id(e) not in ids]
            heapq.heapify(heap)
    return taken


def _run_coalesced(entries: list[tuple]) -> None:
    """One call of the first entry's ``run`` for the rows of every entry still wanted; each gets its slice."""
    live = []
    for entry in entries:
        fut, check = entry[3], entry[4]
        if not fut.set_running_or_notify_cancel():
            continue
        if _gone(check):
            fut.set_exception(Cancelled("stopped: the request's client has gone"))
            continue
        live.append(entry)
    if not live:
        return
    rows = [r for e in live for r in e[2].rows]
    start = time.perf_counter()
    try:
        results = live[0][2].run(rows)
    except BaseException as e:  # every request in the call sees the error
        end = time.perf_counter()
        for entry in live:
            entry[3].set_exception(e)
    else:
        end = time.perf_counter()
        i = 0
        for entry in live:
            n = len(entry[2].rows)
            entry[3].set_result(results[i : i + n])
            i += n
    _observed(live[0][2].run, live[0][0], [e[3] for e in live], start, end, len(rows))  # after: nobody waits for it


SWITCH_INTERVAL_S = float(os.environ.get("EMBEDLAB_SWITCH_INTERVAL", "0.0002"))  # seconds
GRACE_S = 0.25  # background work starts only after this long without interactive work...
# ...or, under interactive traffic that never pauses that long, once it has waited this long since its last slice:
# a corpus job otherwise stalled for as long as the traffic lasted. An interactive task then waits for one
# background slice at most (a batch sized to configure_for_serving's budget, ~0.25 s).
BACKGROUND_SHARE_S = 2.0


_last_interactive = -float("inf")  # time.monotonic() when the compute thread last finished interactive work


def seconds_since_interactive() -> float:
    """Seconds since the compute thread last finished an interactive task (a compare, a search...): how recently
    visitors used the app (inf: never)."""
    return time.monotonic() - _last_interactive


def _oldest_background(q: queue.PriorityQueue) -> tuple | None:
    """Remove from ``q`` and return its first background entry (lowest priority value, then oldest), or None."""
    with q.mutex:  # PriorityQueue's own lock: the heap is a plain list under it
        heap = q.queue
        waiting = [e for e in heap if BACKGROUND <= e[0] < IDLE]
        if not waiting:
            return None
        first = min(waiting, key=lambda e: e[:2])
        heap.remove(first)
        heapq.heapify(heap)
        return first


def _has_background(q: queue.PriorityQueue) -> bool:
    with q.mutex:
        return any(BACKGROUND <= e[0] < IDLE for e in q.queue)


def _loop(q: queue.PriorityQueue | None = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """The compute thread's loop over ``q`` (default: the module's queue); ``clock`` and ``sleep`` are
    parameters so that a test can drive the schedule with a fake clock."""
    global _last_interactive
    q = _queue if q is None else q
    last_interactive = -float("inf")
    starved_since: float | None = None  # when waiting background work last ran or began to wait; None: none waits
    while True:
        entry = q.get()
        now = clock()
        if entry[0] < BACKGROUND:
            if not _has_background(q):
                starved_since = None
            elif starved_since is None:
                starved_since = now
            elif now - starved_since >= BACKGROUND_SHARE_S and (bg := _oldest_background(q)) is not None:
                q.put(entry)  # its background share is due: one slice first, then this task
                entry = bg
        elif (wait := last_interactive + GRACE_S - now) > 0:
            if entry[0] >= IDLE:  # never a share: it waits for a pause in the traffic, however long
                q.put(entry)
                sleep(min(wait, 0.02))
                continue
            starved_since = now if starved_since is None else starved_since
            if now - starved_since < BACKGROUND_SHARE_S:
                # Users send requests in bursts (a click, then the next while they read). A background
                # batch started in a gap makes the next click wait for it, so hold background work
                # back until interactive traffic pauses; an interactive task arriving meanwhile goes first.
                q.put(entry)
                sleep(min(wait, 0.02))
                continue
        _run(q, entry)
        if entry[0] < BACKGROUND:
            last_interactive = clock()
            if q is _queue:
                _last_interactive = time.monotonic()
        else:  # the next slice of a job is usually queued just after this one returns: it starts a new wait then
            starved_since = clock() if _has_background(q) else None
        # not held while this thread waits for the next task: the last task's closure may hold a whole model
        # (a live run's last save held its trainer, ~1.4 GB, until the next request came)
        entry = bg = None


def _run(q: queue.PriorityQueue, entry: tuple) -> None:
    """Run one queued entry (with the rows that can share its call) and settle its future."""
    priority, order, fn, fut, check = entry
    if isinstance(fn, _Rows):
        _run_coalesced([entry] + _take_companions(q, fn, priority))
        return
    if not fut.set_running_or_notify_cancel():
        return
    if _gone(check):  # nobody waits for this result any more: skip the work
        fut.set_exception(Cancelled("stopped: the request's client has gone"))
        return
    start = time.perf_counter()
    try:
        out = fn()
    except BaseException as e:  # handed to the caller, which re-raises it
        end = time.perf_counter()
        fut.set_exception(e)
    else:
        end = time.perf_counter()
        fut.set_result(out)
    _observed(fn, priority, [fut], start, end, 1)


# Every task runs to its end once started, so the longest background task is what an interactive request may wait
# for. EMBEDLAB_SLOW_UNIT_S=1 logs each task that ran longer than 1 s (what it was, its priority): how the long
# units of a live run or a corpus job were found.
def _slow_unit_s() -> float:
    text = os.environ.get("EMBEDLAB_SLOW_UNIT_S") or "inf"
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"EMBEDLAB_SLOW_UNIT_S must be a number of seconds, not {text[:40]!r}") from None


SLOW_UNIT_S = _slow_unit_s()
# EMBEDLAB_TRACE_COMPUTE=FILE appends a JSON line per task to FILE: when it ended (unix s), its priority, what it
# was, the rows it computed, each request's wait in the queue (one per request that shared the pass), and its run.
# What split a compare's time beside long work into queueing and its own pass (docs/load.md); bench/load.py
# --worst --trace summarises it per case. Off by default: the file grows with the traffic.
TRACE_PATH = os.environ.get("EMBEDLAB_TRACE_COMPUTE") or None
# Opened at the first traced task. Its only writer is the compute thread (a task queued from the compute thread
# itself runs inline, untraced); a test driving _loop on a queue of its own runs with the trace off.
_trace_file = None


def _observed(fn: Callable, priority: int, futures: list[Future], start: float, end: float, rows: int) -> None:
    """After a task that ran from ``start`` to ``end`` (perf_counter s) for the requests of ``futures``, their
    results handed out: the slow-unit log and the trace. Never raises: it runs on the compute thread's loop."""
    global _trace_file, TRACE_PATH
    path = TRACE_PATH  # once: a test may turn the trace off meanwhile
    if end - start <= SLOW_UNIT_S and path is None:
        return
    try:
        fn = getattr(fn, "func", fn)  # a functools.partial: what it calls
        name = getattr(fn, "__qualname__", type(fn).__name__)
        if end - start > SLOW_UNIT_S:
            log.warning("compute: %s (priority %d) ran %.2f s", name, priority, end - start)
        if path is not None:
            waits = [round(start - getattr(f, "queued_at", start), 4) for f in futures]
            line = {"t": round(time.time(), 3), "priority": priority, "what": name, "rows": rows, "waits": waits,
                    "run_s": round(end - start, 4)}
            if _trace_file is None or _trace_file.name != path:
                _trace_file = open(path, "a", buffering=1)  # noqa: SIM115 (kept open: one line per task)
            _trace_file.write(json.dumps(line) + "\n")
    except Exception:  # a trace never fails the work it traces: off after the first failure, said once
        log.exception("the compute trace failed; tracing is off")
        TRACE_PATH = None


def on_compute_thread(fn: Callable[[], T], priority: int = INTERACTIVE) -> T:
    """Run ``fn()`` on the compute thread and return its result (its exception propagates).

    Lower ``priority`` runs first. Re-entrant: from the compute thread itself, runs ``fn`` directly.
    Raises :class:`Cancelled` instead when the caller's :func:`stop_when` check is true.
    """
    if threading.current_thread().name == _NAME:
        return fn()
    return _submit(fn, priority)


def beside(fn: Callable[[], T]) -> T:
    """Run ``fn()`` on the calling thread, beside the compute thread rather than queued on it; raises
    :class:`Cancelled` instead when the caller's :func:`stop_when` check is true, as :func:`on_compute_thread` does.

    For work on a private copy of a model (a live run's): it needs no serialising with the lab's models, and queued
    as background slices it made every compare wait for the slice in progress (1.0-1.5 s, docs/load.md). In a
    serving process the calling thread runs its torch ops on one intra-op thread (:func:`configure_for_serving`),
    so it adds no OpenMP team and leaves the compute thread its cores' share.
    """
    if _gone(_stop_check.get()):
        raise Cancelled("stopped: the request's client has gone")
    return fn()


def run_rows(key: Hashable, rows: list, run: Callable[[list], Sequence[T]], priority: int = INTERACTIVE,
             max_rows: int = 64) -> list[T]:
    """``run(rows)`` on the compute thread, sharing the call with other requests' rows queued meanwhile.

    Every waiting :func:`run_rows` entry with the same ``key`` and ``priority`` joins the call (oldest
    first, up to ``max_rows`` rows in all): ``run`` gets the concatenated rows and must return one result
    per row, in order; each caller gets its own slice. ``key`` must say everything that makes two rows'
    work differ beyond the rows themselves (the encoder, its settings). Same priority rules, cancellation
    and re-entrancy as :func:`on_compute_thread`.
    """
    if threading.current_thread().name == _NAME:
        return list(run(rows))
    return list(_submit(_Rows(key, list(rows), run, max_rows), priority))


def _submit(fn: Callable[[], T] | _Rows, priority: int):
    global _thread
    if priority == INTERACTIVE:
        priority = _interactive.get()
    check = _stop_check.get()
    if _gone(check):
        raise Cancelled("stopped: the request's client has gone")
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_loop, name=_NAME, daemon=True)
            _thread.start()
    fut: Future = Future()
    fut.queued_at = time.perf_counter()  # type: ignore[attr-defined]  # the trace's wait (_observed)
    _queue.put((priority, next(_order), fn, fut, check))
    return fut.result()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt, malloc_trim), else None (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere)."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)  # ~0.04 ms measured here


def _trim_heap_forever(every_s: float) -> None:
    while True:
        time.sleep(every_s)
        trim_heap()


def configure_for_serving(background_batch_s: float | None, threads: int | None = None,
                          heap_arenas: int | None = 2, trim_heap_every_s: float | None = 60.0) -> None:
    """Settings for a process that serves interactive users (the web app); the command line keeps the defaults.

    ``background_batch_s``: the seconds one batch of background work should take, since an interactive
    request may wait for the batch in progress. Each encoder sizes its background batches from what its
    own batches cost (:func:`background_batch_tokens`), between ``BACKGROUND_BATCH_TOKENS`` padded tokens:
    a 4096-token batch took ~5 s on 2 cores, 256 tokens ~0.5 s (the fixed cap this replaces), and 0.4-1.9 s in
    float32 on an AVX2-only CPU beside a live run (docs/load.md). None: no cap.
    ``threads``: intra-op threads of the compute thread (torch, and FAISS through the same
    OpenMP setting); None keeps torch's default (all cores). Measured on 2 cores: one
    thread is robust to a busy neighbour process (122 ms per compare either way, against
    102 ms alone / 372 ms beside it with two), but through the app it made a compare
    276 ms instead of 156 ms and did not raise throughput under load, so it is not the default.
    ``heap_arenas``, ``trim_heap_every_s``: glibc heap settings (ignored elsewhere; None: leave
    as is). Requests of varying shapes on a dozen server threads fragment glibc's per-thread
    arenas (up to 8 per core): under bench/load.py's load the heap in use stayed flat (~238 MiB)
    while the arenas' free part grew from 46 to 61 MiB in 4 rounds, and the resident size
    with it. Two arenas plus a periodic ``malloc_trim`` kept the free part at 23-27 MiB.
    Call before the server starts its threads.
    """
    global _background_batch_s
    from .precision import requested

    requested()  # a bad $EMBEDLAB_PRECISION stops the server here, naming the valid values, not at a first request
    # A forward pass is ~3,000 torch ops; each releases the GIL and must take it back. While another
    # thread runs Python (the web server), CPython hands the GIL back only after its switch interval
    # (5 ms by default): measured here, a 98 ms compare took 8.5 s beside one busy Python thread,
    # 0.35 s with a 0.2 ms interval. Process-wide, so only a serving process sets it (not the CLI, not training).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    libc = _glibc()
    if libc is not None and heap_arenas:  # first: arenas are made as new threads first allocate
        libc.mallopt(-8, heap_arenas)  # M_ARENA_MAX
    _background_batch_s = background_batch_s
    import torch

    # Only the compute thread runs torch's kernels on every core; any other thread that runs a torch op (a model
    # loading, a live run's bookkeeping) runs it on one. libgomp (torch's OpenMP) gives each thread that starts a
    # parallel op a team of its own, and once a process holds more OpenMP threads than cores it cuts every
    # team's spin-wait to ~100 spins: measured here (2 cores, docs/precision.md), one other thread's team made
    # every later pass of the compute thread 1.6x slower, a live training step 5.5 -> 8.4 s.
    # torch.set_num_threads is per thread, and also the size a thread takes at its first parallel op; so the
    # compute thread takes its size (get_num_threads starts it) and then the default every other thread takes is 1.
    global _threads
    _threads = n = max(1, threads or torch.get_num_threads())

    def own_size() -> None:
        torch.get_num_threads()
        torch.set_num_threads(n)

    on_compute_thread(own_size)
    torch.set_num_threads(1)
    if libc is not None and trim_heap_every_s:
        threading.Thread(target=_trim_heap_forever, args=(trim_heap_every_s,), daemon=True,
                         name="heap-trim").start()


_threads: int | None = None  # the compute thread's intra-op threads in a serving process (None: not serving)
_sharing = 0  # how many sharing_cores blocks are open
_sharing_lock = threading.Lock()


def _compute_threads(n: int) -> None:
    import torch

    with stop_when(None):  # never skipped: a stopping run's restore must run
        on_compute_thread(lambda: torch.set_num_threads(n), priority=URGENT)
    # torch.set_num_threads also sets the size a thread takes at its first parallel op: back to one for every
    # other thread (configure_for_serving), this one included (a live run's: it runs on one)
    torch.set_num_threads(1)


@contextlib.contextmanager
def sharing_cores() -> Iterator[None]:
    """While this block runs work :func:`beside` the compute thread (a live run: its own thread, one intra-op
    thread), the compute thread runs on one intra-op thread too, so each has cores of its own; back after.

    Why: an OpenMP op of the compute thread's two threads waits at its barrier for the slower one, and with a
    third busy thread on 2 cores every op ran at the pace of a shared core: beside a live run, compares under
    bench.load's 8 users took p50 3.41 s / p95 5.53 s (docs/load.md) against 0.35 / 0.50 s idle. Nothing
    outside a serving process (configure_for_serving) is changed, nor with one compute thread already.
    """
    global _sharing
    if _threads is None or _threads == 1:
        yield
        return
    with _sharing_lock:
        _sharing += 1
        if _sharing == 1:
            _compute_threads(max(1, _threads - 1))
    try:
        yield
    finally:
        with _sharing_lock:
            _sharing -= 1
            if _sharing == 0:
                _compute_threads(_threads)


def lower_priority(by: int, than: int | None = None) -> bool:
    """Make the calling thread ``by`` steps nicer to the scheduler than thread or process ``than`` (its id; None: the
    calling thread itself), never less nice than it is (an unprivileged process cannot lower niceness back). Linux:
    niceness is per thread, set through its thread id; elsewhere, or where refused, nothing changes (False)."""
    try:
        me = threading.get_native_id()
        base = os.getpriority(os.PRIO_PROCESS, me if than is None else than)
        os.setpriority(os.PRIO_PROCESS, me, min(19, max(os.getpriority(os.PRIO_PROCESS, me), base + by)))
        return True
    except (AttributeError, OSError):  # no setpriority (Windows), the process ``than`` has gone, or refused
        return False


def background_batches_timed() -> bool:
    """Whether background batches are sized by time (:func:`background_batch_tokens`): in a serving process that
    set a budget (:func:`configure_for_serving`); not on the command line."""
    return _background_batch_s is not None


def background_batch_tokens(s_per_token: float | None) -> int | None:
    """Padded tokens for the next background batch of an encoder whose background batches have cost
    ``s_per_token`` seconds per padded token (None: none measured yet, the least): as many as fit in
    :func:`configure_for_serving`'s ``background_batch_s``, within ``BACKGROUND_BATCH_TOKENS`` (a single text
    longer than that is a batch of its own, up to the model's ``max_length``). None: no cap (not a serving
    process, or one that set none).

    Measured on the cap's own batches, the cost per token includes each pass's fixed part, so the cap settles
    where a batch takes the budget (a pass of ``t = a + b * tokens`` s: ``tokens = (budget - a) / b``) and
    follows the machine: a slower precision, the compute thread on one core beside a live run."""
    if not background_batches_timed():
        return None
    lo, hi = BACKGROUND_BATCH_TOKENS
    if not s_per_token or s_per_token <= 0:  # nothing measured yet (a model just loaded): the least, then as measured
        return lo
    return int(min(hi, max(lo, _background_batch_s / s_per_token)))
