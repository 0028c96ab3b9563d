"""What a running app's memory holds, for bench/load.py --probe (issue 20: "memory back within 200 MiB").

Loaded into the app's own process (``python -c "import bench.memory_probe as p; p.install(); <run app.py>"``):
SIGUSR1 writes a breakdown to $EMBEDLAB_MEMORY_PROBE (JSON, appended as one line): the process's RSS split
into anonymous and file-backed memory, glibc's heap (in use / free / mmapped), the model pool (models and
their weight bytes), the Lab's caches (corpus vectors, text vectors, FAISS indexes, maps, adapters), and every
torch tensor and numpy array reachable from Python, by total bytes, split into the pool's weights and the rest;
the most numerous kinds of Python object and the modules imported (code a first request imports stays).
SIGUSR2 first lets go of what the app may drop when idle (models that are not resident, the caches), collects
and trims the heap, then writes the same breakdown: what the app's memory would be without them.
Diagnostic only: never part of the served app.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import threading
import time
import warnings
from pathlib import Path


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _rollup() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        if k in ("Rss", "Anonymous", "Private_Clean", "Private_Dirty", "Shared_Clean"):
            out[k] = _mib(int(v.split()[0]) * 1024)
    return out


def _files(top: int = 4) -> dict[str, float]:
    """Resident MiB of the largest file-backed mappings, by file name."""
    by: dict[str, int] = {}
    path = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:  # a mapping's first line
            path = head[5] if len(head) > 5 and head[5].startswith("/") else None
        elif path and line.startswith("Rss:"):
            by[path] = by.get(path, 0) + int(head[1]) * 1024
    big = sorted(by.items(), key=lambda kv: -kv[1])[:top]
    return {"/".join(Path(p).parts[-2:]): _mib(n) for p, n in big}


def _heap() -> dict[str, float]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    m = libc.mallinfo2()
    return {"arena (sbrk+arenas)": _mib(m.arena), "mmapped": _mib(m.hblkhd), "in use": _mib(m.uordblks),
            "free in arenas": _mib(m.fordblks)}


def _lab():
    from embedlab.lab import Lab

    return next((o for o in gc.get_objects() if isinstance(o, Lab)), None)


def _arrays() -> dict[str, float]:
    """Bytes of torch storages and owning numpy arrays reachable from gc-tracked objects (each counted once)."""
    import numpy as np
    import torch

    lab = _lab()
    pool_ptrs = set()
    if lab is not None:
        for enc in list(lab._models.values()):
            for t in list(enc.model.parameters()) + list(enc.model.buffers()):
                pool_ptrs.add(t.untyped_storage().data_ptr())
    storages: dict[int, tuple[int, str]] = {}
    arrays: dict[int, int] = {}
    for o in gc.get_objects():
        objs = [o] + (gc.get_referents(o) if not isinstance(o, (torch.Tensor, np.ndarray)) else [])
        for x in objs:
            if isinstance(x, torch.Tensor):
                try:
                    s = x.untyped_storage()
                    storages[s.data_ptr()] = (s.nbytes(), str(x.dtype))
                except Exception:  # noqa: BLE001  (meta / sparse tensors)
                    pass
            elif isinstance(x, np.ndarray):
                base = x
                while isinstance(base.base, np.ndarray):
                    base = base.base
                if base.flags.owndata:
                    arrays[id(base)] = base.nbytes
    pool = sum(n for p, (n, _) in storages.items() if p in pool_ptrs)
    rest: dict[str, int] = {}
    for p, (n, dt) in storages.items():
        if p not in pool_ptrs:
            rest[dt] = rest.get(dt, 0) + n
    return {"torch, the pool's weights": _mib(pool), **{f"torch, other {k}": _mib(v) for k, v in rest.items()},
            "numpy arrays": _mib(sum(arrays.values())), "numpy arrays (count)": len(arrays)}


def _caches() -> dict:
    lab = _lab()
    if lab is None:
        return {}
    e = lab.embeddings
    return {"models": {k: _mib(lab._bytes.get(k, 0)) for k in lab._models},
            "resident": sorted(lab.resident),
            "corpus vectors in memory": _mib(sum(a.nbytes for a in (e._memory.get(k) for k in list(e._memory)) if a is not None)),
            "text vectors": len(e._texts), "indexes": len(lab._indexes), "maps": len(lab._maps),
            "adapters": {f"{m}:{n}": _mib(b) for (m, n), b in lab._adapters.items()}}


def breakdown(label: str) -> dict:
    with warnings.catch_warnings():  # isinstance on every object touches deprecated module attributes
        warnings.simplefilter("ignore")
        return _breakdown(label)


def _breakdown(label: str) -> dict:
    return {"label": label, "t": time.strftime("%H:%M:%S"), "rss": _rollup(), "files": _files(), "heap": _heap(), "lab": _caches(),
            "arrays": _arrays(), "threads": threading.active_count(), "objects": _objects(),
            "modules": sorted(sys.modules)}


def _objects(top: int = 12) -> dict[str, int]:
    """The most numerous kinds of object the garbage collector tracks (what holds heap no array accounts for)."""
    from collections import Counter

    n = Counter(type(o).__name__ for o in gc.get_objects())
    return {"all": sum(n.values()), **dict(n.most_common(top))}


def release() -> None:
    """Drop what the app lets go of when idle (Lab.release_idle with no idle time: models that are not resident,
    other adapters, text vectors; it collects and trims the heap), and the default sides' caches too."""
    from embedlab.compute import trim_heap

    lab = _lab()
    if lab is not None:
        lab.release_idle(idle_s=0)
        lab.embeddings._memory.clear()
        lab._indexes.clear()
        lab._maps.clear()
    gc.collect()
    trim_heap()


def _write(label: str) -> None:
    with open(os.environ["EMBEDLAB_MEMORY_PROBE"], "a") as f:
        f.write(json.dumps(breakdown(label)) + "\n")


def install() -> None:
    # The handlers only set a flag: the dump runs on a thread of its own (a handler runs between the main thread's
    # bytecodes, which may be inside the allocator's callers)
    todo: list[str] = []
    wake = threading.Event()

    def worker() -> None:
        while True:
            wake.wait()
            wake.clear()
            while todo:
                what = todo.pop(0)
                if what == "release":
                    release()
                _write(what)

    threading.Thread(target=worker, daemon=True, name="memory-probe").start()
    signal.signal(signal.SIGUSR1, lambda *_: (todo.append("as is"), wake.set()))
    signal.signal(signal.SIGUSR2, lambda *_: (todo.append("release"), wake.set()))


def run_app(app_py: str) -> None:
    install()
    sys.argv = [app_py]
    runpy.run_path(app_py, run_name="__main__")
