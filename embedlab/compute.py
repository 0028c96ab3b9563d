"""The one thread that runs this process's numeric kernels (torch inference, FAISS search).

torch and FAISS parallelise with OpenMP, and OpenMP gives every calling thread its
own team of worker threads, whose idle members spin. A web server calls handlers
from rotating worker threads, so on 2 cores the spinning teams stole the CPU: a
forward pass took ~250 ms instead of ~110 ms and a 10K FAISS search added ~45 ms.
Funnelling the kernels through one fixed thread keeps one team.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
_NAME = "embedlab-compute"
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_NAME)


def on_compute_thread(fn: Callable[[], T]) -> T:
    """Run ``fn()`` on the compute thread and return its result (exceptions propagate).

    Re-entrant: called from the compute thread itself, it runs ``fn`` directly.
    """
    if threading.current_thread().name.startswith(_NAME):
        return fn()
    return _EXECUTOR.submit(fn).result()
