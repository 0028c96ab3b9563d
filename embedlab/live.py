"""Live training runs: contrastive LoRA fine-tuning started from the app, watched frame by frame (no Gradio here).

    manager = Manager()                                   # one per app: one run trains at a time, the rest wait (FIFO)
    run = manager.submit(session, settings("A few minutes"), data=None, pair=("a", "b"))
    while not run.finished:                               # what the tab's stream does
        manager.heartbeat(session, run.id)                # a watcher that stops calling this stops the run
        show(run.frame, manager.position(run))            # loss every step; dev, histogram, map, pair a frame every ~20 s
    spec = run.spec                                       # e.g. "gemma3-270m+live-3f9c...": a side like any other

A run is :class:`embedlab.training.Trainer` (the loop train.py runs) on its own copy of the backbone (the Trainer
loads one), so what other visitors embed with the lab's models never sees a train-mode flag, dropout or an
active adapter. So its work (passes, backwards, optimiser steps) runs on the manager's own thread, beside the
compute thread (:func:`embedlab.compute.beside`; the stop check before each unit), each on a core of its own while
the run lasts (:func:`embedlab.compute.sharing_cores`): a compare never waits for the run's unit in progress. A frame
is the run's snapshot of a step measured as the side it is, ``<spec>@<step>``, by the app's own model on the compute
thread in the pauses of the interactive traffic (``frame_vectors``, compute.IDLE): compares go first, and the
training never pauses for a frame.

Its folder ``<live_root>/<model>/live-<id>`` (:func:`embedlab.side.live_root`) is an adapter folder with
``snapshots/step-N`` for each frame, so ``<model>+live-<id>`` and ``<model>+live-<id>@<step>`` parse as sides for
whoever holds the id (secrets.token_hex: unguessable); no listing shows it. ``data.csv`` is the run's data, so
``python train.py --config <folder>/training.json`` reproduces it. A folder is deleted TTL_S after it was last
used (its mtime: training, the tab and every parse of its spec touch it).
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import ROOT, env_switch, precision
from .files import folder_bytes
from .compute import (URGENT, Cancelled, beside, lower_priority, on_compute_thread, seconds_since_interactive, sharing_cores, stop_when,
                      trim_heap)
from .registry import DEFAULT_MODEL, MODELS
from .nli import BUILT_IN
from .side import LIVE_PREFIX, kind, live_root, loadable_models, parse_side

log = logging.getLogger(__name__)

NLI_DATA = ROOT / BUILT_IN  # the built-in triplets
MAX_WALL_S = 600.0  # a run stops (and saves) after 10 minutes of training
TTL_S = 3600.0  # a run's files go an hour after their last use
# and the least recently used finished runs go sooner once all of them hold more than this: one run is ~5 MB with
# the default preset, but up to ~150 MB at the caps (rank 64, a float16 snapshot per frame for 10 minutes)
MAX_DISK_MB = 1024.0
# a frame (dev, histogram, map, pair) begins this long after the one before began, once that one is measured, at the
# next boundary between two units of the training (its snapshot is the last whole step's weights), and after the last
# step. It is measured beside the training (the lab's model, on the compute thread's core): ~15 s of one core on 2
# here (docs/live.md). The goal is a frame every 30 s; the loss comes after every step (~5-7 s)
FRAME_EVERY_S = 20.0
# while other visitors use the app (interactive work on the compute thread in the last FRAME_EVERY_S), the next frame
# begins only this long after the one before was measured: in their pauses a frame takes 20-45 s of the compute
# thread's core, and back to back (or every 40 s from their starts) frames took all of it: compares beside a run
# waited for a frame's batch (~1 s) at p50 0.6-1.1 s, p95 1.8-2.1 s, against 0.45 / 1.04 s without frames
# (docs/load.md)
BUSY_FRAME_REST_S = 30.0
# a run nobody watches for this long stops. Generous: a watcher on a busy host may be late (it draws figures in the
# same worker); a closed tab is caught at once by the watcher's client_gone_check
HEARTBEAT_S = 30.0
DEV_PAIRS = 200  # STSBenchmark dev pairs of a frame (a seeded fixed subset)
HIST_PAIRS = 2000

# Padded tokens per forward pass of a live run on a CPU (train.py's own default is 512): a pass's forward or backward
# is the longest unit of a step, what a compare waits behind. bench.load --worst --cases train (docs/load.md): compare
# p95 2.39 s at 512 (units up to 2.1 s), 2.28 s at 256, 2.01 s at 128 but 52% more training time
CPU_TOKENS_PER_PASS = 256
# The training thread's niceness over the server's (Linux; per thread): on a shared core, the compute thread (a
# compare) and the web server's threads go first and a run takes what they leave; alone on its core it runs as fast
TRAIN_NICE = 5
# (lowest, highest) of each setting a visitor chooses ("Advanced"); the preset's values lie inside
CAPS: dict[str, tuple[float, float]] = {"steps": (1, 200), "batch_size": (4, 128), "lr": (1e-5, 1e-3),
                                        "lora_r": (1, 64), "temperature": (0.01, 1.0)}
# "A few minutes": one model-independent preset, the shipped adapters' recipe (lr 3e-4, warmup 6, chunks of 96, 64
# tokens) at batch 24 for 54 steps (1,296 triplets). Measured on gemma3-270m, bf16, 2 cores (docs/live.md): 25 x 64
# gave dev 78 in ~300 s with a loss every ~11 s; 40 x 32 dev 81 with a loss every 7-10 s on the run's one core (up to
# 12 s on a slow evening), so 24 a step, for a loss well within the 10 s the tab promises
PRESETS: dict[str, dict[str, Any]] = {
    "A few minutes": dict(steps=54, batch_size=24, lr=3e-4, lora_r=8, temperature=0.05),
    "Advanced": {},
}
DEFAULT_PRESET = "A few minutes"
FIXED = dict(warmup_steps=6, chunk_size=96, max_length=64, lora_dropout=0.1, weight_decay=1e-4, seed=0)


class LiveError(ValueError):
    """A setting, a data file or a request the live training refuses; the message is for the user."""


def enabled() -> bool:
    """EMBEDLAB_LIVE_TRAINING: ``on`` (default) or ``off`` (the tab says training is disabled on this host)."""
    try:
        return env_switch("EMBEDLAB_LIVE_TRAINING", "on")
    except ValueError as e:
        raise LiveError(str(e)) from None


def trainable_models() -> list[str]:
    """Registry models that load here and are causal LMs (the method's EOS-pooled LoRA), the default first."""
    keys = [k for k in loadable_models() if MODELS[k].causal]
    return sorted(keys, key=lambda k: k != DEFAULT_MODEL)


@dataclass(frozen=True)
class Settings:
    """What a visitor chose: the model and the five bounded settings (the rest: FIXED)."""

    model: str
    steps: int
    batch_size: int
    lr: float
    lora_r: int
    temperature: float


def settings(preset: str = DEFAULT_PRESET, model: str | None = None, **advanced: Any) -> Settings:
    """A preset's settings, or "Advanced" with ``advanced`` (steps, batch_size, lr, lora_r, temperature) checked
    against CAPS; LiveError naming the first bad one. The preset's own values ignore ``advanced``."""
    if preset not in PRESETS:
        raise LiveError(f"preset must be one of {', '.join(PRESETS)}, not {str(preset)[:40]!r}")
    models = trainable_models()
    model = model or (models[0] if models else DEFAULT_MODEL)
    if model not in models:
        raise LiveError(f"model {str(model)[:40]!r} cannot be trained here; choose one of {', '.join(models) or 'none'}")
    values = {**PRESETS[DEFAULT_PRESET], **({k: v for k, v in advanced.items() if v is not None}
                                            if preset == "Advanced" else {})}
    if unknown := set(values) - set(CAPS):
        raise LiveError(f"unknown setting(s) {', '.join(sorted(unknown))}; the settings are {', '.join(CAPS)}")
    out = {}
    for name, (lo, hi) in CAPS.items():
        v = values[name]
        whole = name in ("steps", "batch_size", "lora_r")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (whole and v != int(v)) or not lo <= v <= hi:
            wanted = "a whole number" if whole else "a number"
            # a number echoed as a number (1e30, not its integer digits); any other value by its kind ("text")
            got = (f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool)
                   else "text" if isinstance(v, str) else kind(v))
            raise LiveError(f"{name.replace('_', ' ')} must be {wanted} from {lo:g} to {hi:g}, not {got}")
        out[name] = int(v) if whole else float(v)
    return Settings(model=model, **out)


def config(s: Settings, folder: Path, device: str = "") -> "Config":  # noqa: F821 (training imports torch: lazily)
    """The :class:`embedlab.training.Config` of a run in ``folder`` (its data: ``folder/data.csv``)."""
    from .loading import default_device
    from .training import Config

    on_cpu = (device or default_device().type) == "cpu"
    return Config(model=s.model, data=str(folder / "data.csv"), out=str(folder), lora_r=s.lora_r,
                  lora_alpha=4 * s.lora_r, temperature=s.temperature, lr=s.lr, steps=s.steps,
                  batch_size=s.batch_size, chunk_size=min(FIXED["chunk_size"], 3 * s.batch_size),
                  warmup_steps=min(FIXED["warmup_steps"], s.steps // 2), max_length=FIXED["max_length"],
                  lora_dropout=FIXED["lora_dropout"], weight_decay=FIXED["weight_decay"], seed=FIXED["seed"],
                  max_tokens=CPU_TOKENS_PER_PASS if on_cpu else 0,
                  log_every=10**6, ckpt_every=0, eval_tasks=["STSBenchmark-dev"], device=device,
                  precision=precision.requested())  # the process's setting: frames agree with /compare


# --- frames ------------------------------------------------------------------------------------------
@dataclass
class Frame:
    """What the tab shows of a run now. Lists grow as the run goes; arrays are float32."""

    step: int = 0
    steps: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, InfoNCE loss) of every step
    dev: list[tuple[int, float]] = field(default_factory=list)  # (step, STSBenchmark dev Spearman x100, DEV_PAIRS pairs)
    pair: list[tuple[int, float]] = field(default_factory=list)  # (step, cosine of the Pairs tab's pair)
    measured: list[int] = field(default_factory=list)  # steps of the frames below (0 = the base model)
    saved: list[int] = field(default_factory=list)  # steps whose snapshot is on disk (their ``@step`` parses)
    cosines: list[np.ndarray] = field(default_factory=list)  # (HIST_PAIRS',) random-pair cosines per measured step
    maps: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (N, 2) topics map, aligned to the one before
    seconds: float = 0.0  # since the run started training
    eta_s: float | None = None  # seconds left, from the steps so far
    version: int = 0  # bumped at every change (a watcher redraws when it moves)
    # held while the worker or the layout thread changes the frame, and while a reader copies it (replay_of)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass
class Run:
    """One live run. ``state``: queued, loading, training, saving, done, stopped, failed."""

    id: str
    session: str
    settings: Settings
    folder: Path
    pair: tuple[str, str]
    data_note: str = ""
    client: str | None = None  # the submitter's address (one unfinished run per address too)
    state: str = "queued"
    message: str = ""
    frame: Frame = field(default_factory=Frame)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    finished_event: threading.Event = field(default_factory=threading.Event)
    last_seen: float = field(default_factory=time.monotonic)
    watched: bool = False  # a watcher (the tab's stream, /train) has called heartbeat: stop when it goes quiet
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    saved: bool = False  # an adapter was saved: the run is a usable side (not when stopped before a step)

    @property
    def name(self) -> str:
        return LIVE_PREFIX + self.id

    @property
    def spec(self) -> str:
        """The run's side spec, ``<model>+live-<id>`` (usable once a first frame is saved)."""
        return f"{self.settings.model}+{self.name}"

    @property
    def finished(self) -> bool:
        return self.finished_event.is_set()

    def zip_path(self) -> Path:
        return self.folder / "download" / f"{self.settings.model}-{self.name}.zip"


class Manager:
    """The app's live runs: one trains at a time (a worker thread), the others wait in FIFO order; one
    unfinished run per session. ``load``: the Trainer's model loader (tests pass a tiny model's);
    ``executor``: where every unit of work runs (:func:`embedlab.compute.beside`: on the manager's thread);
    ``base_vectors``: where step 0's vectors may come from in a second, from caches (None, or None returned: measured
    as every frame is); ``lab``: what measures the frames (:meth:`frame_vectors`; the app's Lab, None: a Lab of the
    manager's own, which loads the model once more)."""

    def __init__(self, root: Path | None = None, *, load: Callable | None = None,
                 executor: Callable[[Callable[[], Any]], Any] = beside, max_wall_s: float = MAX_WALL_S,
                 ttl_s: float = TTL_S, frame_every_s: float = FRAME_EVERY_S,
                 busy_frame_rest_s: float = BUSY_FRAME_REST_S, heartbeat_s: float = HEARTBEAT_S,
                 max_waiting: int = 8, device: str = "", maps: bool = True,
                 max_disk_mb: float = MAX_DISK_MB,
                 base_vectors: Callable[[str, list[str]], np.ndarray | None] | None = None,
                 lab: "Lab | None" = None) -> None:  # noqa: F821 (lab imports torch: lazily)
        self._root = root
        self.load, self.executor = load, executor
        self.max_wall_s, self.ttl_s, self.frame_every_s, self.heartbeat_s = max_wall_s, ttl_s, frame_every_s, heartbeat_s
        self.busy_frame_rest_s = busy_frame_rest_s
        self.max_waiting, self.device, self.maps = max_waiting, device, maps
        self.max_disk_bytes = int(max_disk_mb * 2**20)
        # (model, texts) -> the base model's (N, d) vectors from the lab's caches, or None: step 0's frame then
        # comes in about a second, before the run's own copy of the model has loaded (see Probe)
        self.base_vectors = base_vectors
        self.lab = lab
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Run] = deque()
        self._runs: dict[str, Run] = {}  # id -> run (finished ones too, until swept)
        self._current: Run | None = None
        self._worker: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return Path(self._root) if self._root is not None else live_root()

    # --- the visitor's side ------------------------------------------------------------------------
    def submit(self, session: str, s: Settings, data: Path | None = None,
               pair: tuple[str, str] = ("", ""), client: str | None = None) -> Run:
        """Queue a run for ``session`` on ``data`` (None: the built-in NLI triplets; else an uploaded CSV/TSV/JSONL
        checked by embedlab.userdata). ``client``: the caller's address (None: unknown or local). LiveError when
        training is off, the session or the address has a run going, the queue is full, or the file has fewer
        rows than a batch."""
        if not enabled():
            raise LiveError("Live training is disabled on this host (EMBEDLAB_LIVE_TRAINING=off).")
        if not session:
            raise LiveError("a run needs a session (open the page, or call /train through gradio_client)")
        with self._lock:
            self._admissible(session, client)  # refuse early, before reading the file
        run_id = secrets.token_hex(16)
        folder = self.root / s.model / (LIVE_PREFIX + run_id)
        folder.mkdir(parents=True)
        try:
            rows, note = self._write_data(data, folder / "data.csv")
            if rows < s.batch_size:  # the Trainer would refuse it only after the wait in line
                raise LiveError(f"the file has {rows:,} usable rows, fewer than one batch ({s.batch_size}); choose "
                                f"Advanced and a batch size of at most {rows}, or upload more rows")
            run = Run(run_id, session, s, folder, (str(pair[0] or ""), str(pair[1] or "")), data_note=note,
                      client=client)
            run.frame.steps = s.steps
            # the limits again, in the same locked section that adds the run: submits racing through the file
            # parse above cannot all pass
            with self._lock:
                self._admissible(session, client)
                self._runs[run_id] = run
                self._queue.append(run)
                if self._worker is None or not self._worker.is_alive():
                    self._worker = threading.Thread(target=self._work, daemon=True, name="live-training")
                    self._worker.start()
                self._wake.notify_all()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return run

    def _admissible(self, session: str, client: str | None) -> None:
        """LiveError unless ``session`` (and ``client``, when known) has no unfinished run and the line has room
        (under the lock)."""
        for r in self._runs.values():
            if not r.finished and r.session == session:
                raise LiveError("This session already has a run going; stop it or wait for it to end.")
            if not r.finished and client is not None and r.client == client:
                raise LiveError("A run from your address is going already; stop it or wait for it to end.")
        if len(self._queue) >= self.max_waiting:
            raise LiveError(f"{len(self._queue)} runs are waiting already; try again in a few minutes.")

    @staticmethod
    def _write_data(data: Path | None, dst: Path) -> tuple[int, str]:
        """The run's data.csv (sent0,sent1[,hard_neg]); returns (rows, a note on it for the user)."""
        if data is None:
            shutil.copyfile(NLI_DATA, dst)
            rows = json.loads(NLI_DATA.with_suffix(".json").read_text())["rows"]  # its sidecar (build-data writes both)
            return rows, f"built-in NLI triplets (SNLI, {rows:,} rows)"
        from . import userdata

        try:
            ud = userdata.load_triplets_file(Path(data))
        except userdata.DataFileError as e:
            raise LiveError(str(e)) from None
        ud.write_csv(dst)
        note = f"your file: {ud.rows:,} rows" + ("" if ud.has_negatives else ", no negatives (in-batch only)")
        if ud.dropped_duplicates:
            note += f", {ud.dropped_duplicates:,} duplicates dropped"
        return ud.rows, "; ".join([note, *ud.warnings])

    def get(self, session: str, run_id: str) -> Run:
        """The run ``run_id`` of ``session`` (another session's id is no run: LiveError, the same message)."""
        with self._lock:
            run = self._runs.get(run_id) if isinstance(run_id, str) else None
        if run is None or run.session != session:
            raise LiveError("no such run in this session")
        return run

    def latest(self, session: str) -> Run | None:
        """This session's newest run (None if it has none)."""
        with self._lock:
            mine = [r for r in self._runs.values() if r.session == session]
        return max(mine, key=lambda r: r.queued_at) if mine else None

    def runs(self, session: str) -> list[Run]:
        """This session's runs, oldest first (no other session's)."""
        with self._lock:
            return sorted((r for r in self._runs.values() if r.session == session), key=lambda r: r.queued_at)

    def position(self, run: Run) -> int:
        """0 while it trains or has finished; k > 0: k-th in line (1 = next)."""
        with self._lock:
            try:
                return self._queue.index(run) + 1
            except ValueError:
                return 0

    def heartbeat(self, session: str, run_id: str) -> Run:
        """A watcher is still there (the tab's stream, /train). Once called, a run left unwatched for
        ``heartbeat_s`` stops as Stop would."""
        run = self.get(session, run_id)
        run.last_seen, run.watched = time.monotonic(), True
        return run

    def stop(self, session: str, run_id: str | None = None) -> Run | None:
        """Stop the session's run (``run_id``, else its unfinished one): a queued one is dropped, a training one
        ends within one unit of work and saves its steps. Returns the run (None when there is none)."""
        run = self.get(session, run_id) if run_id else next(
            (r for r in self.runs(session) if not r.finished), None)
        if run is None:
            return None
        run.stop_requested.set()
        with self._lock:
            if run in self._queue:
                self._queue.remove(run)
                run.state, run.message = "stopped", "Stopped before it started."
                run.finished_event.set()
                shutil.rmtree(run.folder, ignore_errors=True)
        return run

    def wait(self, run: Run, timeout: float | None = None) -> bool:
        return run.finished_event.wait(timeout)

    # --- housekeeping -------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> int:
        """Delete the folders of finished runs whose mtime is over ``ttl_s`` old (also those a previous
        process left), then, while the rest hold more than ``max_disk_bytes``, the least recently used finished
        ones; returns how many. A spec's parse touches its folder (embedlab.side), so use keeps it."""
        now = time.time() if now is None else now
        with self._lock:  # the worker and submits change the runs meanwhile
            active = {r.folder for r in self._runs.values() if not r.finished}
        kept: list[tuple[float, int, Path]] = []  # (mtime, bytes, folder) of finished runs within their time
        n = 0
        for folder in self.root.glob(f"*/{LIVE_PREFIX}*"):
            try:
                if folder in active:
                    continue
                mtime = folder.stat().st_mtime
                if now - mtime <= self.ttl_s:
                    kept.append((mtime, folder_bytes(folder), folder))
                    continue
            except OSError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            n += 1
        total = sum(b for _, b, _ in kept) + sum(folder_bytes(f) for f in active if f.exists())
        for _, size, folder in sorted(kept, key=lambda k: k[0]):  # the least recently used first
            if total <= self.max_disk_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            n += 1
        with self._lock:  # forget finished runs whose folder is gone (swept now, or a stop deleted it)
            for k in [k for k, r in self._runs.items() if r.finished and not r.folder.exists()]:
                del self._runs[k]
        return n

    def sweep_forever(self, every_s: float = 300.0) -> threading.Thread:
        """A daemon thread running :meth:`sweep` every ``every_s`` seconds."""

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    if n := self.sweep():
                        log.info("deleted %d live runs (unused for %g s, or over the disk cap)", n, self.ttl_s)
                except Exception:  # housekeeping never takes the server down
                    log.exception("sweeping live runs failed")

        t = threading.Thread(target=loop, daemon=True, name="live-sweep")
        t.start()
        return t

    # --- the worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        # the compute thread, if this thread were the first to queue work, would inherit this thread's niceness
        # (the app starts it at once; a test or the command line may not): started before this thread lowers its own
        on_compute_thread(lambda: None, priority=URGENT)
        if not lower_priority(TRAIN_NICE):
            log.info("could not lower the live training thread's priority")
        while True:
            with self._lock:
                while not self._queue:
                    self._wake.wait(timeout=60)
                run = self._queue.popleft()
                self._current = run
            try:
                with sharing_cores():  # the run on one core, the lab's compute thread on the other(s)
                    self._train(run)
            except LiveError as e:
                run.state, run.message = "failed", str(e)
            except Exception as e:  # the server log has the trace; the user a line
                log.exception("live run %s failed", run.id[:6])
                run.state, run.message = "failed", f"Training failed on the server ({type(e).__name__})."
            finally:
                with self._lock:
                    self._current = None
                with run.frame.lock:
                    run.frame.version += 1
                self._after_run()  # before the event: whoever waits for the run sees its housekeeping done
                run.finished_event.set()

    def _after_run(self) -> None:
        """Between runs: the disk cap kept (sweep), and the run's memory (its backbone copy, optimiser state,
        activations) handed back to the system rather than kept in the allocator's free lists."""
        try:
            self.sweep()
        except Exception:  # housekeeping never fails a run
            log.exception("sweeping live runs failed")
        gc.collect()
        trim_heap()

    def frame_vectors(self, spec: str, texts: list[str]) -> np.ndarray:
        """(N, d) vectors of ``texts`` under the side ``spec`` (a frame's snapshot, or the base model at step 0),
        measured beside the training by the lab's model, in the traffic's pauses (Lab.side_vectors)."""
        if self.lab is None:
            from .lab import Lab

            self.lab = Lab(seed_dir=None)  # loads the run's model once more (the app passes its own)
        return self.lab.side_vectors(parse_side(spec), texts)

    def _should_stop(self, run: Run) -> bool:
        t = time.monotonic()
        return (run.stop_requested.is_set() or (run.started_at is not None and t - run.started_at > self.max_wall_s)
                or (run.watched and t - run.last_seen > self.heartbeat_s))

    def _train(self, run: Run) -> None:
        from .loading import load_encoder
        from .training import LossNotFinite, Trainer

        # stopped after the worker took it off the queue (stop() found it gone), or its page closed while it waited
        if self._should_stop(run):
            run.state, run.message = "stopped", "Stopped before it started."
            shutil.rmtree(run.folder, ignore_errors=True)
            return
        run.state, run.message = "loading", "Loading the model…"
        with run.frame.lock:
            run.frame.version += 1
        run.started_at = t0 = time.monotonic()
        probe = Probe(run.pair)
        if self.base_vectors is not None:  # step 0 is the base model: from the lab's caches while the copy loads
            try:
                v = self.base_vectors(run.settings.model, probe.texts)
            except Exception:  # only a shortcut: measured on the run's model below instead
                log.exception("live run %s: step 0 from the lab's caches failed", run.id[:6])
                v = None
            if v is not None:
                self._publish(run, probe, 0, probe.measure(v))
        trainer = None  # set once the run's model has loaded
        # when the last frame began: the first step's frame is due at once (the model's loading took ~10 s since
        # step 0's frame, which came from the lab's caches)
        last_frame_t = -math.inf
        last_frame_end = -math.inf  # when the last frame was measured
        pending: Future | None = None  # the frame being measured (on the frame worker)
        begun: set[int] = set()  # steps whose frame has begun
        training = True  # frames begin only while the steps go on (not in finish's saves)

        def frame(step: int) -> None:
            """Measure the snapshot of ``step`` as a side (``frame_vectors``: the lab's copy of the model, on the
            compute thread in the traffic's pauses, beside the training) and show it. Dropped, its snapshot
            removed, once the run stops early (at the next batch)."""
            nonlocal last_frame_end
            t = time.monotonic()
            try:
                with stop_when(lambda: self._should_stop(run) and trainer.done < trainer.total):
                    v = self.frame_vectors(run.settings.model if step == 0 else f"{run.spec}@{step}", probe.texts)
            except Cancelled:
                if step:
                    shutil.rmtree(run.folder / "snapshots" / f"step-{step}", ignore_errors=True)
                return
            last_frame_end = time.monotonic()
            self._publish(run, probe, step, probe.measure(v))
            log.info("live run %s: frame of step %d measured in %.1f s (%.0f s into the run)", run.id[:6], step,
                     time.monotonic() - t, time.monotonic() - t0)
            self._write_record(run, trainer.record())

        def begin_frame(step: int) -> None:
            nonlocal pending, last_frame_t
            last_frame_t = time.monotonic()  # the cadence counts from a frame's start
            begun.add(step)
            probe.save_snapshot(run, step)
            self._write_record(run, trainer.record())  # lists the step: its spec parses
            pending = probe.frames.submit(frame, step)

        def frame_due(step: int) -> bool:
            """One frame at a time: the next begins once the one before is measured, FRAME_EVERY_S after its
            start, and while other visitors use the app BUSY_FRAME_REST_S after its end; on a step not shown yet."""
            if not training or step in begun or (pending is not None and not pending.done()):
                return False
            now = time.monotonic()
            if now - last_frame_t < self.frame_every_s:
                return False
            return seconds_since_interactive() >= self.frame_every_s or now - last_frame_end >= self.busy_frame_rest_s

        def unit(fn: Callable[[], Any]) -> Any:
            """A unit of the run (a pass, a backward, an optimiser step; beside the compute thread); after it,
            where the weights are still the last whole step's (mid-step), the next frame if it is due: a frame
            then waits for one unit (~1-2 s), not for the step's end (up to a step, ~10 s on one core)."""
            out = self.executor(fn)
            step = run.frame.step
            if trainer is not None and trainer.weights_step == step and step > 0 and frame_due(step):
                begin_frame(step)
            return out

        cfg = config(run.settings, run.folder, self.device)
        try:
            # named by the id's first characters: the log must not hold the whole secret id or the folder
            trainer = Trainer(cfg, load=self.load or load_encoder, executor=unit,
                              name=f"live run {run.id[:6]}")
        except (ValueError, OSError) as e:  # DataError, ConfigError, SetupError: the user's settings or file
            probe.shutdown(ended=False)
            raise LiveError(str(e)) from None
        probe.trainer = trainer
        run.state, run.message = "training", ""
        try:
            with stop_when(lambda: self._should_stop(run)):  # mid-step work is dropped once a stop is asked
                if not run.frame.measured and not self._should_stop(run):  # not from the lab's caches
                    begin_frame(0)  # the base model: measured while the first step trains
                for info in trainer.steps(should_stop=lambda: self._should_stop(run), report_every=1):
                    f = run.frame
                    per_step = info.seconds / max(1, info.step)
                    with f.lock:
                        f.loss_curve.append((info.step, float(info.loss)))
                        f.step, f.seconds = info.step, time.monotonic() - t0
                        f.eta_s = per_step * (info.steps - info.step)
                        f.version += 1
                    # the last step's frame whatever is pending; the others when due (here or between two units)
                    if (info.step == info.steps and info.step not in begun) or frame_due(info.step):
                        begin_frame(info.step)
        except Cancelled:
            pass  # a stop during a step: the steps before it are kept
        except LossNotFinite:
            raise LiveError(f"The loss became NaN or infinite after step {trainer.done}; try a lower learning "
                            "rate.") from None
        finally:
            training = False
            # a finished run waits for its last frame and map (seconds); a stopped one does not: a frame being
            # measured stops at its next batch, a layout in progress must not hold the stop (the next run's first
            # map then waits for it in the layout process, seconds)
            probe.shutdown(ended=trainer.done >= trainer.total)
        stopped = trainer.done < trainer.total
        run.state, run.message = "saving", "Saving the adapter…"
        with run.frame.lock:
            run.frame.version += 1
        if trainer.done == 0:  # nothing to save: no side
            run.state, run.message = "stopped", "Stopped before the first step: nothing was saved."
            shutil.rmtree(run.folder, ignore_errors=True)
            return
        if trainer.done not in run.frame.measured:  # the final weights are a snapshot too (the adapter itself)
            probe.save_snapshot(run, trainer.done)
        record = trainer.finish(evaluate=False)
        self._write_record(run, record)
        self._write_zip(run, record)
        run.saved = True
        run.state = "stopped" if stopped else "done"
        why = "" if not stopped else (" (stopped: " + ("10-minute cap" if time.monotonic() - run.started_at > self.max_wall_s
                                                       else "Stop or the page closed") + ")")
        run.message = f"Saved after {trainer.done} of {trainer.total} steps{why}."
        os.utime(run.folder)

    def _publish(self, run: Run, probe: "Probe", step: int, measured: tuple) -> None:
        """Show a frame's measurements (:meth:`Probe.measure`); then lay out its map (seconds of UMAP, off the
        compute thread) and show that."""
        dev, cos, topics, pair = measured
        f = run.frame
        with f.lock:
            f.dev.append((step, dev))
            f.cosines.append(cos)
            f.measured.append(step)
            if pair is not None:
                f.pair.append((step, pair))
            f.version += 1
        if self.maps:  # laid out beside the training (one at a time, in order): the steps go on meanwhile
            def lay_out() -> None:
                one_numba_thread()  # where layouts run in this process (tests): not on every core
                with f.lock:
                    prev = f.maps[max(f.maps)] if f.maps else None
                t = time.monotonic()
                try:
                    xy = probe.layout(topics, prev)
                except Exception:  # nobody reads this future: a frame without its map, said in the log
                    log.exception("live run %s: the map of step %d failed", run.id[:6], step)
                    return
                with f.lock:
                    f.maps[step] = xy
                    f.version += 1
                log.info("live run %s: map of step %d laid out in %.1f s", run.id[:6], step, time.monotonic() - t)

            probe.layouts.submit(lay_out)

    def _write_record(self, run: Run, record: dict) -> None:
        """training.json: the Trainer's record plus the snapshots taken (so ``@step`` parses) and the frames."""
        from .adapters import write_training_record

        f = run.frame
        losses = dict(f.loss_curve)
        dev = dict(f.dev)
        saved = set(f.measured) | set(f.saved)
        snaps = []
        for step in sorted(saved):
            path = None if step == 0 else f"snapshots/step-{step}"
            if step and not (run.folder / path / "adapter_model.safetensors").is_file():
                continue
            snaps.append({"step": step, "path": path, "loss": losses.get(step), "dev": dev.get(step),
                          "random_pair_cosine": (float(f.cosines[f.measured.index(step)].mean())
                                                 if step in f.measured else None)})
        record = {**record, "snapshots": snaps,
                  "live": {"dev_pairs": DEV_PAIRS, "note": "dev: STSBenchmark dev on a fixed subset of "
                           f"{DEV_PAIRS} pairs (Spearman x100)", "data": run.data_note}}
        write_training_record(run.folder, record)

    @staticmethod
    def _write_zip(run: Run, record: dict) -> None:
        """The download: the adapter (standard PEFT), README.md (model card), training.json and data.csv,
        with the record's data path and command made relative to the unzipped folder."""
        from .training import Config, command_line

        cfg = {**record["config"], "data": "data.csv", "out": "reproduced"}
        rec = {**record, "config": cfg, "command": command_line(Config(**cfg)),
               "data": {**record["data"], "path": "data.csv"},
               "reproduce": "python train.py --config training.json  (from the unzipped folder; --out to choose "
                            "where the adapter goes)"}
        rec.pop("snapshots", None)  # the zip holds the final adapter only
        from .modelcard import CARD_FILE, render_card

        # the card from the rewritten record (the folder's own card names server paths and the folder's command)
        card = render_card(MODELS[run.settings.model], rec, run.name)
        dst = run.zip_path()
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name in ("adapter_model.safetensors", "adapter_config.json", "data.csv"):
                z.write(run.folder / name, name)
            z.writestr(CARD_FILE, card)
            z.writestr("training.json", json.dumps(rec, indent=2) + "\n")
        os.replace(tmp, dst)


class Probe:
    """A frame's measurements: STSBenchmark dev on DEV_PAIRS fixed pairs, HIST_PAIRS random-pair cosines among
    those pairs' sentences, the topics map aligned to the frame before (embedlab.replay's AlignedUMAP), the Pairs tab's
    pair. Measured on the frame's snapshot as a side, by the lab's copy of the model (Manager.frame_vectors), so the
    training never pauses for a frame and a frame is what ``<spec>@<step>`` shows in every view; step 0, the base
    model, may come from vectors the lab has cached."""

    def __init__(self, pair: tuple[str, str], trainer=None) -> None:
        from .replay import replay_corpus
        from .sts import load_task

        self.trainer = trainer  # set once the run's model has loaded
        self.task = load_task("STSBenchmark-dev").subsample(DEV_PAIRS)
        # unrelated pairs from the dev pairs' own sentences: a sample of STSBenchmark's sentences as the anisotropy
        # texts (the Pairs tab's random pairs) are, and no extra texts to embed (150 more were 23% of a frame)
        self.hist = list(dict.fromkeys([*self.task.s1, *self.task.s2]))
        self.corpus = replay_corpus("topics")
        self.pair = pair if all(p.strip() for p in pair) else None
        # every text a frame embeds, once each
        self.texts = list(dict.fromkeys([*self.hist, *self.corpus.texts, *(self.pair or ())]))
        self.prev_vecs: np.ndarray | None = None
        # a frame's vectors are waited for here, then its map is laid out there: one of each at a time, in order
        self.frames = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-frame")
        self.layouts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-map")

    def shutdown(self, ended: bool) -> None:
        """After the run's last step: a finished run waits for its last frame and map (seconds); a stopped one for
        the frame being measured (it stops at its next batch) but not for a map: a layout in progress must not
        hold the stop (the next run's first map then waits for it in the layout process, seconds)."""
        self.frames.shutdown(wait=True, cancel_futures=not ended)
        self.layouts.shutdown(wait=ended, cancel_futures=not ended)

    def measure(self, v: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float | None]:
        """(dev Spearman x100, random-pair cosines, (N, d) topics vectors, pair cosine or None) from ``v``, the
        (N, d) vectors of :attr:`texts` (a frame's, :meth:`advance`; or the lab's cached base vectors)."""
        from .evaluation import random_pair_cosines
        from .sts import spearman100

        pos = {x: i for i, x in enumerate(self.texts)}
        # cached vectors: an int8 seed's rows come back within ~1e-4 of unit length
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

        def rows(xs) -> np.ndarray:
            return v[[pos[x] for x in xs]]

        a, b = rows(self.task.s1), rows(self.task.s2)
        dev = spearman100(np.einsum("ij,ij->i", a, b), np.asarray(self.task.gold))
        cos = random_pair_cosines(rows(self.hist), HIST_PAIRS, 0)
        pair = float(rows(self.pair[:1])[0] @ rows(self.pair[1:])[0]) if self.pair else None
        return round(float(dev), 2), cos, rows(self.corpus.texts), pair

    def layout(self, topics: np.ndarray, prev_xy: np.ndarray | None) -> np.ndarray:
        """(N, 2) map of the topics vectors, aligned to the frame before (:func:`align_next`). Not on the compute
        thread, and served in the layout process (embedlab.projection.laid_out): a compare never waits for it."""
        xy = align_next(self.prev_vecs, prev_xy, topics)
        self.prev_vecs = topics
        return xy

    def save_snapshot(self, run: Run, step: int) -> None:
        """The adapter as it is now into ``snapshots/step-<step>`` (float16) and the run folder (the latest), as
        Trainer.take_snapshot saves them; step 0 needs no weights (LoRA's B is zero)."""
        import torch

        from .adapters import save_adapter

        t = self.trainer
        model = t.acc.unwrap_model(t.model)
        if step > 0:
            t.executor(lambda: save_adapter(model, run.folder / "snapshots" / f"step-{step}", t.spec, dtype=torch.float16))
        t.executor(lambda: save_adapter(model, run.folder, t.spec))
        with run.frame.lock:
            run.frame.saved.append(step)
        os.utime(run.folder)


def one_numba_thread() -> None:
    """Parallel numba code started from this thread (UMAP's) runs on one thread (numba's setting is per thread).
    Nothing where layouts run in the layout process (the app): importing numba here would only cost this process
    ~20 MiB that it never uses (bench/load.py --probe found numba and llvmlite loaded after a live run)."""
    from .projection import layouts_elsewhere

    if layouts_elsewhere():
        return
    try:
        import numba
    except ImportError:  # no numba: no UMAP threads to limit
        return
    numba.set_num_threads(1)


def align_next(prev_vecs: np.ndarray | None, prev_xy: np.ndarray | None, vecs: np.ndarray) -> np.ndarray:
    """(N, 2) map of ``vecs`` laid out together with the frame before (embedlab.replay.aligned_layouts over the
    two, as the replay lays out its steps), then moved by least-squares Procrustes (embedlab.projection) so the
    frame before lands on ``prev_xy``, what the tab drew: texts that kept their neighbours stay put."""
    from .projection import procrustes
    from .replay import aligned_layouts

    if prev_vecs is None or prev_xy is None:
        return aligned_layouts([vecs, vecs])[1]
    both = aligned_layouts([prev_vecs, vecs])
    return procrustes(both[0], prev_xy)(both[1])


def replay_of(run: Run):
    """The run's measured frames as an :class:`embedlab.replay.Replay`, so the replay's figures draw them
    (step_view), or None before the first. A frame whose map is not laid out yet shows the one before
    (``has_map`` False before any)."""
    from .replay import Replay, replay_corpus

    f = run.frame
    with f.lock:  # a consistent copy: the worker and the layout thread append meanwhile
        steps, maps, cosines = list(f.measured), dict(f.maps), list(f.cosines)
        loss_curve, dev = tuple(f.loss_curve), tuple(f.dev)
    if not steps:
        return None
    corpus = replay_corpus("topics")
    last = np.zeros((len(corpus), 2), dtype=np.float32)
    xy = []
    for s in steps:
        last = maps.get(s, last)
        xy.append(last)
    xy = np.stack(xy).astype(np.float32)
    lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
    pad = (hi - lo) * 0.04 + 1e-3
    return Replay(tuple(steps), xy, np.stack(cosines).astype(np.float32), corpus, loss_curve,
                  dev, {"live": run.id[:6], "has_map": bool(maps)},
                  (float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])))


__all__ = ["Manager", "Run", "Frame", "Settings", "LiveError", "settings", "config", "enabled", "trainable_models",
           "PRESETS", "CAPS", "DEFAULT_PRESET", "replay_of", "align_next"]
