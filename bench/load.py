"""Load test: 16 concurrent gradio_client users x 25 mixed requests, 3 rounds, against a running app.

Starts `python app.py` on a free loopback port (built-in corpora warmed from the shipped
cache), then per round: 16 threads, each a user with its own gradio_client (the same 16
users every round), each 25 requests drawn from pairs / search (10K corpus) / embed / map,
with fresh sentences every time (nothing is answered from a result cache). One extra user
runs a quick evaluation each round: an expensive request in the 'heavy' concurrency group
whose batches run at background priority, to show it does not starve the cheap ones.
Reports errors (goal: 0), p50/p95 per endpoint, and the app's resident memory after each
round (goal: no growth after the first).

--churn makes every round 16 *new* users (new Gradio sessions). Gradio keeps each
session's page config and last outputs (~0.8 MB here) until the app's session cap
(EMBEDLAB_MAX_SESSIONS, default 200) evicts the least recently used; --max-sessions 16
lowers the cap so the plateau shows within a few rounds.

--expensive: one round of the 16 users plus, at the same time, one maximal request of each
expensive kind (the largest batch of pairs the app accepts, a map of a maximal upload, an
evaluation of all 9 tasks with quick off, anisotropy). Goals: interactive pair p95 <= 2 s, 0 errors.
--think S gives each user a mean pause of S seconds before each request (a person reading the
answer; exponential, seeded); without it the 16 users send back to back, a stress test whose wait
is bound by Little's law (16 users / the requests per second the 2 cores serve).

--worst: the "worst single request" scenario (issue 20). 8 users each compare a fresh pair, pause 5 s, and
again, while each maximal request runs in turn: an uncached search on a non-default pair (minilm-l6 vs
gemma3-270m on the 10K stsb corpus), a maximal /embed, a maximal /batch_pairs, an uncached map (the same pair
on snli), a full quick evaluation (every task). A search or map whose corpus is being embedded answers at
once with the job's progress; the client asks again every 10 s, as a person would, until it has its answer.
The app runs with an embedding cache of its own (models shared), so "uncached" is true on every run. Prints,
per case: the maximal request's time, compare p50/p95, errors, and the app's RSS before and after; then the
RSS --settle seconds after the last case. Goals: compare p95 <= 2 s in every case, 0 errors, RSS back
within 200 MiB of its start. --trace adds, per case, what the compute thread did: the compares' queue wait
and pass, and the background batches' runs (EMBEDLAB_TRACE_COMPUTE). --passes 2 runs the cases twice: the
first pass loads what its requests need once (the non-default pair's model, its corpus vectors and index, a
live run's first map layout), the second shows whether memory then stays flat (its growth; goal <= 200 MiB).
The end prints each process's RSS.

--disk N: N requests that upload files (batch pairs from an uploaded file; every 25th a new corpus
upload + a search in it), C at a time, against an app whose temporary folders are its own; reports
the bytes on disk (temp: Gradio's cache + the app's downloads; the embedding cache of uploads)
before, at the peak, after, and once the last files are past the cleaning age (age + period). Goal: flat (bounded by the cleaning
age and EMBEDLAB_UPLOAD_CACHE_MB, not by N).

    python -m bench.load [--users 16] [--requests 25] [--rounds 3] [--churn [--max-sessions 16]]
    python -m bench.load --expensive [--users 16] [--requests 10] [--think 5]
    python -m bench.load --disk 1000 [--clients 4] [--pairs-per-file 5]
    python -m bench.load --worst [--users 8] [--cases search,embed,batch_pairs,map,evaluate] [--settle 120] [--trace]
(run it from the repository root: `-m` puts the root on the import path, for tests/app_server.py)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

from tests.app_server import AppServer

M = "gemma3-270m"  # side A of every request: the default pair's base (main() sets it from default_sides())
SUBJECTS = ["A man", "A woman", "Two children", "The chef", "A dog", "The old pilot", "A student", "The team"]
VERBS = ["is playing", "is cooking", "is reading", "is running through", "is painting", "is watching", "is fixing"]
OBJECTS = ["a guitar", "the soup", "a long novel", "the park", "a red fence", "the football match", "an old car"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ({rng.randrange(10**6)})."


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def rss_by_process(pid: int, anonymous: bool = False) -> list[tuple[str, float]]:
    """(what, RSS MiB) of the app's process and each of its children (the layout process, ...). ``anonymous``: the
    RSS less its file-backed pages (psutil's ``shared``: the libraries, and the model weights that safetensors
    maps from the converted files, which the kernel reads in as texts touch them and drops again under pressure)."""
    def mib(proc: psutil.Process) -> float:
        m = proc.memory_info()
        return (m.rss - m.shared * anonymous) / 2**20

    p = psutil.Process(pid)
    out = [("app", mib(p))]
    for c in p.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out.append((" ".join(c.cmdline()[1:3])[:60] or c.name(), mib(c)))
    return out


def app_rss_mib(pid: int, anonymous: bool = False) -> float:
    """RSS of the app's process and its children together, MiB (``anonymous``: less file-backed pages)."""
    return sum(mib for _, mib in rss_by_process(pid, anonymous))


def user(c, adapter: str, n: int, seed: int, times: dict, errors: list, lock: threading.Lock,
         think_s: float = 0.0) -> None:
    """``n`` mixed requests from one user (``c``: that user's gradio_client.Client).

    ``think_s``: the mean pause before each request (exponentially distributed, seeded), a person
    reading the last answer; 0 sends them back to back.
    """
    rng = random.Random(seed)
    pause = random.Random(seed + 1)  # its own stream: the requests drawn do not depend on think_s
    calls = {
        "pairs": lambda: c.predict(M, adapter, sentence(rng), sentence(rng), api_name="/pairs"),
        "search": lambda: c.predict(M, adapter, "stsb", sentence(rng), 10, api_name="/search"),
        "embed": lambda: c.predict(M, adapter, [sentence(rng) for _ in range(rng.randint(1, 8))], True, api_name="/embed"),
        "map": lambda: c.predict(M, adapter, rng.choice(["topics", "snli"]), sentence(rng), api_name="/map"),
    }
    names = rng.choices(list(calls), weights=[4, 3, 2, 1], k=n)
    for name in names:
        if think_s:
            time.sleep(pause.expovariate(1 / think_s))
        t0 = time.perf_counter()
        try:
            calls[name]()
            with lock:
                times[name].append((time.perf_counter() - t0) * 1000)
        except Exception as e:  # counted and reported: the goal is none
            with lock:
                errors.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")


def heavy_user(url: str, adapter: str, times: dict, errors: list, lock: threading.Lock) -> None:
    from gradio_client import Client

    c = Client(url, verbose=False, download_files=False)
    t0 = time.perf_counter()
    try:
        c.predict(M, adapter, ["STSBenchmark"], True, api_name="/evaluate")
        with lock:
            times["evaluate (quick, heavy)"].append((time.perf_counter() - t0) * 1000)
    except Exception as e:
        with lock:
            errors.append(f"evaluate: {type(e).__name__}: {str(e)[:200]}")


def max_pairs_text(rng: random.Random) -> str:
    """The largest batch of pairs the app accepts: MAX_PAIRS pairs, just under MAX_PAIR_CHARS characters."""
    from embedlab.corpora import MAX_PAIR_CHARS, MAX_PAIRS

    per = MAX_PAIR_CHARS // (2 * MAX_PAIRS) - 1  # characters per sentence (all distinct)
    pad = lambda s: (s + " " + "and then it rains on the old town square" * 3)[:per - 8] + f" {rng.randrange(10**7):07d}"  # noqa: E731
    return "\n".join(f"{pad(sentence(rng))}\t{pad(sentence(rng))}\t{rng.uniform(0, 5):.1f}" for _ in range(MAX_PAIRS))


def max_upload(folder: Path, rng: random.Random) -> Path:
    """A corpus upload at the app's limits: MAX_TEXTS distinct lines, under MAX_UPLOAD_BYTES."""
    from embedlab.corpora import MAX_TEXTS, MAX_UPLOAD_BYTES

    per = MAX_UPLOAD_BYTES // MAX_TEXTS - 2
    lines = [(sentence(rng) + " in the old town square, said the man" * 4)[:per - 8] + f" {i:07d}" for i in range(MAX_TEXTS)]
    path = folder / "max_upload.txt"
    path.write_text("\n".join(lines))
    return path


STOPPING = threading.Event()  # set when the run is over: the server stops under requests still running


def expensive(url: str, adapter: str, times: dict, errors: list, lock: threading.Lock, kind: str) -> None:
    """One maximal request of ``kind`` (its own client and session), timed."""
    from gradio_client import Client, handle_file

    c = Client(url, verbose=False, download_files=False)
    rng = random.Random(7)
    t0 = time.perf_counter()
    try:
        if kind == "batch_pairs":
            c.predict(M, adapter, max_pairs_text(rng), None, api_name="/batch_pairs")
        elif kind == "map_upload":
            c.predict(handle_file(str(max_upload(Path(tempfile.mkdtemp()), rng))), api_name="/upload_corpus")
            c.predict(M, adapter, "upload", "", api_name="/map")
        elif kind == "evaluate":
            from embedlab.sts import TASKS

            c.predict(M, adapter, list(TASKS), False, api_name="/evaluate")
        else:
            c.predict(M, adapter, api_name="/anisotropy")
        with lock:
            times[f"{kind} (max)"].append((time.perf_counter() - t0) * 1000)
        print(f"  {kind} (max) answered after {time.perf_counter() - t0:.0f} s", flush=True)
    except Exception as e:
        if STOPPING.is_set():  # cut off by the end of the run, not an error of the app
            return
        with lock:
            errors.append(f"{kind}: {type(e).__name__}: {str(e)[:200]}")
        print(f"  {kind} (max) failed after {time.perf_counter() - t0:.0f} s: {str(e)[:200]}", flush=True)


def run_expensive(server: AppServer, adapter: str, args: argparse.Namespace) -> None:
    from gradio_client import Client

    clients = [Client(server.url, verbose=False, download_files=False) for _ in range(args.users)]
    times: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()
    kinds = args.kinds.split(",")
    threads = [threading.Thread(target=expensive, args=(server.url, adapter, times, errors, lock, k), daemon=True)
               for k in kinds]
    threads += [threading.Thread(target=user, args=(clients[u], adapter, args.requests, 5000 + u, times, errors, lock,
                                                    args.think)) for u in range(args.users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads[len(kinds):]:  # the users first: their latencies are measured while the long requests run
        t.join()
    users_wall = time.perf_counter() - t0
    running = [k for k, t in zip(kinds, threads) if t.is_alive()]
    print(f"\nusers done after {users_wall:.0f} s; long requests still running then: {', '.join(running) or 'none'}",
          flush=True)
    n_req = sum(len(times[k]) for k in ("pairs", "search", "embed", "map"))
    print(f"{args.users} users, {'mean think time ' + format(args.think, 'g') + ' s' if args.think else 'back to back'}: "
          f"{n_req} requests in {users_wall:.0f} s ({n_req / users_wall:.1f}/s)")
    report(times, errors, ["pairs", "search", "embed", "map"])
    for t in threads[: len(kinds)]:
        t.join(max(0.0, args.cutoff - (time.perf_counter() - t0)))
    wall = time.perf_counter() - t0
    unfinished = [k for k, t in zip(kinds, threads) if t.is_alive()]
    print(f"\n{args.users} users x {args.requests} requests + one maximal request of each expensive kind, all at once: "
          f"{wall:.0f} s, errors {len(errors)} (goal 0), app RSS {app_rss_mib(server.proc.pid):.0f} MiB"
          + (f"; not finished at the {args.cutoff:.0f} s cut-off: {', '.join(unfinished)}" if unfinished else ""))
    report(times, errors, ["pairs", "search", "embed", "map"] + [f"{k} (max)" for k in kinds])
    STOPPING.set()


BUILDING = ("Building the index", "being computed right now")  # a job's progress: ask again later


def worst_request(url: str, adapter: str, kind: str, pair: tuple[str, str], cutoff_s: float) -> tuple[float, str]:
    """One maximal request of ``kind`` from its own client; a 'building' answer is asked again every 10 s.
    Returns (seconds until the real answer, '' or the error)."""
    from gradio_client import Client

    c = Client(url, verbose=False, download_files=False)
    rng = random.Random(11)
    t0 = time.perf_counter()
    while True:
        try:
            if kind == "search":
                c.predict(*pair, "stsb", sentence(rng), 10, api_name="/search")
            elif kind == "map":
                c.predict(*pair, "snli", sentence(rng), api_name="/map")
            elif kind == "embed":  # the most the API takes: 256 distinct texts, just under its total characters
                from embedlab.lab import MAX_EMBED_CHARS

                per = MAX_EMBED_CHARS // 256 - 8
                texts = [(sentence(rng) + " and then it rains on the old town square") * 20 for _ in range(256)]
                c.predict(M, adapter, [t[:per] + f" {i:05d}" for i, t in enumerate(texts)], True, api_name="/embed")
            elif kind == "batch_pairs":
                c.predict(M, adapter, max_pairs_text(rng), None, api_name="/batch_pairs")
            elif kind == "evaluate":
                from embedlab.sts import TASKS

                c.predict(M, adapter, list(TASKS), True, api_name="/evaluate")
            elif kind == "train":  # a live run of the Train tab's default preset, to its end
                from embedlab.live import DEFAULT_MODEL, DEFAULT_PRESET

                last = c.predict(DEFAULT_MODEL, DEFAULT_PRESET, api_name="/train")
                if last.get("state") != "done":
                    return time.perf_counter() - t0, f"train ended {last.get('state')}: {last.get('message')}"
            return time.perf_counter() - t0, ""
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if any(b in msg for b in BUILDING) and time.perf_counter() - t0 < cutoff_s:
                print(f"    {kind}: {msg[:150]}", flush=True)
                time.sleep(10)
                continue
            return time.perf_counter() - t0, f"{type(e).__name__}: {msg[:200]}"


def run_worst(server: AppServer, adapter: str, args: argparse.Namespace) -> None:
    from gradio_client import Client

    clients = [Client(server.url, verbose=False, download_files=False) for _ in range(args.users)]
    pair = tuple(args.pair.split(","))
    rss0, anon0 = app_rss_mib(server.proc.pid), app_rss_mib(server.proc.pid, anonymous=True)
    probe(server, args, signal.SIGUSR1)
    print("RSS by process at start: " + ", ".join(f"{w} {m:.0f} MiB" for w, m in rss_by_process(server.proc.pid)))
    rows = []
    cases = args.cases.split(",")
    passes: list[float] = []  # RSS after each pass
    windows: list[tuple] = []  # (case, start, end), unix s: the trace's lines per case
    for i, kind in enumerate(["idle"] + cases * args.passes):
        stop = threading.Event()
        times: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def comparer(u: int) -> None:
            rng = random.Random(9000 + u)
            time.sleep(rng.uniform(0, 5))  # users out of step
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    clients[u].predict(M, adapter, sentence(rng), sentence(rng), api_name="/compare")
                    with lock:
                        times.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"compare: {type(e).__name__}: {str(e)[:200]}")
                stop.wait(5)

        before, anon_before = app_rss_mib(server.proc.pid), app_rss_mib(server.proc.pid, anonymous=True)
        windows.append((kind, time.time()))
        users = [threading.Thread(target=comparer, args=(u,), daemon=True) for u in range(args.users)]
        for t in users:
            t.start()
        print(f"  {kind}: running (RSS {before:.0f} MiB)", flush=True)
        if kind == "idle":
            time.sleep(30)
            took, err = 30.0, ""
        else:
            took, err = worst_request(server.url, adapter, kind, pair, args.cutoff)
            if err:
                errors.append(f"{kind}: {err}")
        stop.set()
        for t in users:
            t.join()
        windows[-1] += (time.time(),)
        after, anon_after = app_rss_mib(server.proc.pid), app_rss_mib(server.proc.pid, anonymous=True)
        p50 = statistics.median(times) if times else float("nan")
        p95 = pct(times, 0.95) if times else float("nan")
        rows.append((kind, took, len(times), p50, p95, len(errors), before, after, anon_before, anon_after))
        print(f"  {kind}: {took:.0f} s; compare n {len(times)} p50 {p50:.2f} s p95 {p95:.2f} s; errors {len(errors)}; "
              f"RSS {before:.0f} -> {after:.0f} MiB", flush=True)
        for e in errors[:5]:
            print(f"    error: {e}", flush=True)
        if i and i % len(cases) == 0:
            passes.append(after)
    time.sleep(args.settle)
    settled, anon = app_rss_mib(server.proc.pid), app_rss_mib(server.proc.pid, anonymous=True)
    print(f"\nworst single request, {args.users} users comparing with 5 s pauses; non-default pair {' vs '.join(pair)}")
    print("| case | maximal request (s) | compares | p50 (s) | p95 (s) | errors | RSS before → after (MiB) | anonymous (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for kind, took, n, p50, p95, ne, before, after, anon_before, anon_after in rows:
        print(f"| {kind} | {took:.0f} | {n} | {p50:.2f} | {p95:.2f} | {ne} | {before:.0f} → {after:.0f} | "
              f"{anon_before:.0f} → {anon_after:.0f} |")
    print(f"\nRSS at start {rss0:.0f} MiB, after the last case {rows[-1][7]:.0f} MiB, {args.settle:.0f} s later "
          f"{settled:.0f} MiB ({settled - rss0:+.0f} MiB; goal within 200: {'met' if settled - rss0 <= 200 else 'NOT met'}); "
          f"anonymous (less file-backed pages) {anon0:.0f} -> {anon:.0f} MiB ({anon - anon0:+.0f}; "
          f"{'met' if anon - anon0 <= 200 else 'NOT met'}). p95 <= 2 s in every case, 0 errors: "
          f"{'met' if all(r[4] <= 2 and r[5] == 0 for r in rows) else 'NOT met'}")
    if len(passes) > 1:
        print(f"RSS after each pass: {', '.join(f'{x:.0f}' for x in passes)} MiB; the last pass grew "
              f"{passes[-1] - passes[-2]:+.0f} MiB (goal <= 200: {'met' if passes[-1] - passes[-2] <= 200 else 'NOT met'})")
    print("RSS by process: " + ", ".join(f"{what} {mib:.0f} MiB" for what, mib in rss_by_process(server.proc.pid)))
    print("anonymous by process: " + ", ".join(f"{what} {mib:.0f} MiB" for what, mib in
                                               rss_by_process(server.proc.pid, anonymous=True)))
    if args.trace:
        trace_table(args.trace, windows)
    probe(server, args, signal.SIGUSR1)
    probe(server, args, signal.SIGUSR2)
    if args.probe:
        print("\nthe app's memory (bench/memory_probe.py; MiB): at the start, at the end, at the end less what it may drop")
        first: set[str] | None = None
        for line in Path(args.probe).read_text().splitlines():
            dump = json.loads(line)
            mods = set(dump.pop("modules", []))
            print(json.dumps(dump))
            if first is None:
                first = mods
            elif new := mods - first:  # code a first request imported: it stays for the process's life
                tops = sorted({m.split(".")[0] for m in new})
                print(f"  {len(new)} modules imported since the start, from: {', '.join(tops)}")


def trace_table(path: str, windows: list[tuple]) -> None:
    """--trace: per case, what the compute thread did (EMBEDLAB_TRACE_COMPUTE, embedlab/compute.py): the compares'
    passes (urgent) and the other requests' interactive work, each request's queue wait (a pass several requests
    shared counts once per request) and each pass's run; the background and idle tasks (long work's batches, a live
    run's frames), their run, which is what a compare arriving meanwhile waits for."""
    from embedlab.compute import BACKGROUND, IDLE, INTERACTIVE

    lines = []
    for x in Path(path).read_text().splitlines():
        with contextlib.suppress(ValueError):  # the app may be writing the last line now
            lines.append(json.loads(x))

    def group(p: int) -> str:
        return ("urgent" if p < INTERACTIVE else "interactive" if p < BACKGROUND else "background" if p < IDLE
                else "idle")

    print("\nthe compute thread per case (--trace; seconds): tasks; n and p50 / p95 of the requests' queue waits, "
          "of the passes' runs (and their max)")
    print("| case | tasks | urgent wait | urgent run | interactive wait | interactive run | background run | idle run |")
    print("|---|---:|---|---|---|---|---|---|")
    for kind, start, end in windows:
        mine = [x for x in lines if start <= x["t"] <= end]
        by: dict[str, list[dict]] = defaultdict(list)
        for x in mine:
            by[group(x["priority"])].append(x)

        def cell(g: str, field: str, top: bool = False) -> str:
            xs = [w for x in by[g] for w in x["waits"]] if field == "waits" else [x[field] for x in by[g]]
            if not xs:
                return "–"
            out = f"n {len(xs)}: {pct(xs, 0.5):.2f} / {pct(xs, 0.95):.2f}"
            return out + (f" / {max(xs):.2f}" if top else "")

        print(f"| {kind} | {len(mine)} | {cell('urgent', 'waits')} | {cell('urgent', 'run_s')} | "
              f"{cell('interactive', 'waits')} | {cell('interactive', 'run_s')} | {cell('background', 'run_s', True)} | "
              f"{cell('idle', 'run_s', True)} |")


def probe(server: AppServer, args: argparse.Namespace, sig: int) -> None:
    """--probe: have the app write what its memory holds (SIGUSR1), or that after dropping its idle caches (SIGUSR2)."""
    if not args.probe:
        return
    n = len(Path(args.probe).read_text().splitlines()) if Path(args.probe).exists() else 0
    os.kill(server.proc.pid, sig)
    deadline = time.time() + 120
    while time.time() < deadline and (not Path(args.probe).exists() or len(Path(args.probe).read_text().splitlines()) == n):
        time.sleep(1)


def report(times: dict, errors: list, names: list[str]) -> None:
    for name in names:
        if times[name]:
            xs = times[name]
            print(f"  {name:<24} n {len(xs):4d}   p50 {statistics.median(xs):7.0f} ms   p95 {pct(xs, 0.95):7.0f} ms")
    if times["pairs"]:
        print(f"interactive pair p95: {pct(times['pairs'], 0.95) / 1000:.2f} s (goal <= 2 s)")
    for e in errors[:10]:
        print(f"  error: {e}")


def du(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if missing)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def entries(path: Path) -> tuple[int, int]:
    """(files, folders) under ``path``: empty ones cost no bytes, but an inode each (and a folder a 4 KiB block)."""
    n_files = n_dirs = 0
    for _, dirs, files in os.walk(path):
        n_files += len(files)
        n_dirs += len(dirs)
    return n_files, n_dirs


def run_disk(server: AppServer, adapter: str, args: argparse.Namespace, tmp: Path, uploads: Path, wait_s: int) -> None:
    from gradio_client import Client, handle_file

    def sizes() -> tuple[int, int]:
        return du(tmp), du(uploads)

    def count() -> str:
        f, d = entries(tmp)
        return f"{f} files and {d} folders"

    before, before_n = sizes(), count()
    print(f"  before: temp {before[0] / 2**20:.2f} MiB ({before_n}), upload cache {before[1] / 2**20:.2f} MiB", flush=True)
    peak = list(before)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(5):
            now = sizes()
            peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1])

    files = Path(tempfile.mkdtemp())
    counter = iter(range(args.disk))
    lock = threading.Lock()
    errors: list[str] = []
    n_ok = [0]

    def client_loop(k: int) -> None:
        c = Client(server.url, verbose=False, download_files=False)
        rng = random.Random(k)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                if i % 25 == 0:  # a new corpus: its vectors go to the (capped) upload cache
                    p = files / f"corpus-{i}.txt"
                    p.write_text("\n".join(f"{sentence(rng)} #{i}-{j}" for j in range(200)))
                    c.predict(handle_file(str(p)), api_name="/upload_corpus")
                    c.predict(M, adapter, "upload", sentence(rng), 5, api_name="/search")
                else:
                    p = files / f"pairs-{i}.tsv"
                    p.write_text("\n".join(f"{sentence(rng)}\t{sentence(rng)}\t{rng.uniform(0, 5):.1f}" for _ in range(args.pairs_per_file)))
                    c.predict(M, adapter, "", handle_file(str(p)), api_name="/batch_pairs")
                with lock:
                    n_ok[0] += 1
                    if n_ok[0] % 50 == 0:
                        print(f"  {n_ok[0]} answered, {time.perf_counter() - t0:.0f} s: temp {du(tmp) / 2**20:.2f} MiB "
                              f"({count()}), "
                              f"upload cache {du(uploads) / 2**20:.2f} MiB", flush=True)
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after, after_n = sizes(), count()
    time.sleep(wait_s)  # until the last files are past the cleaning age, and one more period
    later, later_n = sizes(), count()
    done.set()
    mib = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
    print(f"\n{args.disk} requests with uploads ({args.clients} clients) in {wall:.0f} s: {n_ok[0]} answered, "
          f"{len(errors)} errors")
    print(f"  temp (Gradio cache + downloads): before {mib(before[0])}, peak {mib(peak[0])}, after {mib(after[0])}, "
          f"{wait_s} s later {mib(later[0])}")
    print(f"  temp entries: before {before_n}, after {after_n}, {wait_s} s later {later_n}")
    print(f"  embedding cache of uploads:      before {mib(before[1])}, peak {mib(peak[1])}, after {mib(after[1])}, "
          f"{wait_s} s later {mib(later[1])}")
    for e in errors[:5]:
        print(f"  error: {e}")


def main() -> None:
    from gradio_client import Client

    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--churn", action="store_true", help="new users (sessions) every round")
    ap.add_argument("--max-sessions", type=int, default=0, help="the app's session cap (0: its default)")
    ap.add_argument("--expensive", action="store_true", help="users + one maximal request of each expensive kind")
    ap.add_argument("--disk", type=int, default=0, help="N requests with uploads; disk before/after")
    ap.add_argument("--clients", type=int, default=4, help="--disk: concurrent clients")
    ap.add_argument("--pairs-per-file", type=int, default=5, help="--disk: pairs in each uploaded batch file")
    ap.add_argument("--think", type=float, default=0.0,
                    help="--expensive: each user's mean pause before a request, s (exponential; 0: back to back)")
    ap.add_argument("--kinds", default="batch_pairs,map_upload,evaluate,anisotropy",
                    help="--expensive: which maximal requests run beside the users (comma-separated)")
    ap.add_argument("--cutoff", type=float, default=3600, help="--expensive: stop waiting for the long requests after this (s)")
    ap.add_argument("--worst", action="store_true", help="each maximal request in turn beside users comparing every 5 s")
    ap.add_argument("--cases", default="search,embed,batch_pairs,map,evaluate", help="--worst: the maximal requests, in order (also: train, a live run of the default preset)")
    ap.add_argument("--pair", default="minilm-l6,gemma3-270m", help="--worst: the non-default pair of the search and map")
    ap.add_argument("--passes", type=int, default=1, help="--worst: run the cases this many times (memory: flat after the first?)")
    ap.add_argument("--settle", type=float, default=120, help="--worst: seconds after the last case before the last RSS")
    ap.add_argument("--probe", action="store_true",
                    help="--worst: at the start and the end, what the app's memory holds (bench/memory_probe.py)")
    ap.add_argument("--trace", action="store_true",
                    help="--worst: per case, the compute thread's queue waits and runs (EMBEDLAB_TRACE_COMPUTE)")
    ap.add_argument("--clean", default="60,120", help="--disk: the app's EMBEDLAB_DELETE_CACHE (freq,age seconds)")
    ap.add_argument("--upload-cache-mb", default="16", help="--disk: the app's EMBEDLAB_UPLOAD_CACHE_MB")
    args = ap.parse_args()
    env = {"EMBEDLAB_MAX_SESSIONS": str(args.max_sessions)} if args.max_sessions else {}
    tmp = Path(tempfile.mkdtemp(prefix="embedlab-bench-"))
    cache = None
    if args.worst:
        args.users = 8 if args.users == 16 else args.users
        args.cutoff = min(args.cutoff, 1800)
    if args.disk or args.worst:  # the app's temp folders (Gradio's cache, the downloads) and caches in folders of their own, to measure
        from embedlab.loading import cache_root

        cache = Path(tempfile.mkdtemp(prefix="embedlab-bench-cache-"))
        (cache_root() / "models").mkdir(parents=True, exist_ok=True)  # a new cache root has none yet
        (cache / "models").symlink_to(cache_root() / "models")  # the converted models, shared
        env.update({"TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio"), "EMBEDLAB_DELETE_CACHE": args.clean,
                    "EMBEDLAB_UPLOAD_CACHE_MB": args.upload_cache_mb, "EMBEDLAB_CACHE": str(cache)})
    python_args = None
    if args.trace:
        if not args.worst:
            ap.error("--trace goes with --worst")
        env["EMBEDLAB_TRACE_COMPUTE"] = args.trace = str(tmp / "compute-trace.jsonl")
    if args.probe:
        env["EMBEDLAB_MEMORY_PROBE"] = args.probe = str(tmp / "memory-probe.jsonl")
        python_args = ["-c", "import bench.memory_probe as p; p.run_app('app.py')"]
    server = AppServer(Path(tempfile.mkdtemp()) / "app.log", warm="topics,snli,stsb", env=env, python_args=python_args)
    try:
        c = Client(server.url, verbose=False)
        t0 = time.perf_counter()
        while "Ready" not in (status := c.predict(api_name="/status")):
            if "fail" in status.lower():
                raise SystemExit(f"the app's warm-up failed: {status[:300]} (see {server.log.name})")
            if time.perf_counter() - t0 > 1800:
                raise SystemExit("warm-up did not finish in 30 min")
            time.sleep(2)
        from embedlab.side import default_sides

        global M
        M, adapter = (s.spec for s in default_sides())  # the page's default pair: side A (a base model) and side B
        print(f"app ready {server.ready_s:.1f} s after start; adapter {adapter}; RSS {app_rss_mib(server.proc.pid):.0f} MiB")
        print(f"machine: {os.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if args.expensive:
            return run_expensive(server, adapter, args)
        if args.worst:
            return run_worst(server, adapter, args)
        if args.disk:
            return run_disk(server, adapter, args, tmp, cache / "embeddings" / "uploads", sum(int(x) for x in args.clean.split(",")[:2]) + 10)
        print(f"{args.users} users x {args.requests} requests (+1 quick evaluation) per round, {args.rounds} rounds, "
              f"{'new users every round' if args.churn else 'the same users every round'}"
              + (f", session cap {args.max_sessions}" if args.max_sessions else ""))
        rss = []
        total_errors = 0
        clients: list = []
        for r in range(1, args.rounds + 1):
            if args.churn or not clients:
                clients = [Client(server.url, verbose=False, download_files=False) for _ in range(args.users)]
            times: dict[str, list[float]] = defaultdict(list)
            errors: list[str] = []
            lock = threading.Lock()
            threads = [threading.Thread(target=heavy_user, args=(server.url, adapter, times, errors, lock))]
            threads += [threading.Thread(target=user, args=(clients[u], adapter, args.requests, 1000 * r + u, times,
                                                            errors, lock)) for u in range(args.users)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rss.append(app_rss_mib(server.proc.pid))
            total_errors += len(errors)
            n_req = sum(len(v) for v in times.values())
            print(f"\nround {r}: {n_req} requests in {wall:.0f} s ({n_req / wall:.1f}/s), errors {len(errors)}, "
                  f"app RSS {rss[-1]:.0f} MiB, app alive: {server.alive()}")
            for name in ["pairs", "search", "embed", "map", "evaluate (quick, heavy)"]:
                if times[name]:
                    xs = times[name]
                    print(f"  {name:<24} n {len(xs):4d}   p50 {statistics.median(xs):7.0f} ms   p95 {pct(xs, 0.95):7.0f} ms")
            for e in errors[:5]:
                print(f"  error: {e}")
        growth = [f"{b - a:+.0f}" for a, b in zip(rss, rss[1:])]
        print(f"\ntotal errors: {total_errors} (goal 0); RSS after each round {', '.join(f'{x:.0f}' for x in rss)} MiB; "
              f"growth after round 1: {', '.join(growth)} MiB (goal: none)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
