"""The one thread that runs this process's numeric kernels (model forward passes, FAISS search).

Two reasons for one thread. (1) torch and FAISS parallelise with OpenMP, which gives
every calling thread its own team of workers whose idle members spin; a web server
calls handlers from rotating threads, and on 2 cores the spinning teams stole the CPU
(a forward pass took ~250 ms instead of ~110 ms, a 10K FAISS search ~45 ms more).
(2) Work is queued by priority, one batch at a time, so a long background job (embedding
a corpus, an evaluation) lets an interactive request in after its current batch instead
of after the whole job; and the model's adapter state is only touched from here.
"""
from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

T = TypeVar("T")
INTERACTIVE, BACKGROUND = 0, 10
_NAME = "embedlab-compute"
_queue: queue.PriorityQueue = queue.PriorityQueue()
_order = itertools.count()  # FIFO within one priority
_started = threading.Lock()
_thread: threading.Thread | None = None


def _loop() -> None:
    while True:
        _, _, fn, fut = _queue.get()
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn())
        except BaseException as e:  # handed to the caller, which re-raises it
            fut.set_exception(e)


def on_compute_thread(fn: Callable[[], T], priority: int = INTERACTIVE) -> T:
    """Run ``fn()`` on the compute thread and return its result (its exception propagates).

    Lower ``priority`` runs first. Re-entrant: from the compute thread itself, runs ``fn`` directly.
    """
    global _thread
    if threading.current_thread().name == _NAME:
        return fn()
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_loop, name=_NAME, daemon=True)
            _thread.start()
    fut: Future = Future()
    _queue.put((priority, next(_order), fn, fut))
    return fut.result()
