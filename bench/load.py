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

    python bench/load.py [--users 16] [--requests 25] [--rounds 3] [--churn [--max-sessions 16]]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from app_server import AppServer  # noqa: E402

M = "smollm2-135m"
SUBJECTS = ["A man", "A woman", "Two children", "The chef", "A dog", "The old pilot", "A student", "The team"]
VERBS = ["is playing", "is cooking", "is reading", "is running through", "is painting", "is watching", "is fixing"]
OBJECTS = ["a guitar", "the soup", "a long novel", "the park", "a red fence", "the football match", "an old car"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ({rng.randrange(10**6)})."


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def app_rss_mib(pid: int) -> float:
    p = psutil.Process(pid)
    return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20


def user(c, adapter: str, n: int, seed: int, times: dict, errors: list, lock: threading.Lock) -> None:
    """``n`` mixed requests from one user (``c``: that user's gradio_client.Client)."""
    rng = random.Random(seed)
    calls = {
        "pairs": lambda: c.predict(M, adapter, sentence(rng), sentence(rng), api_name="/pairs"),
        "search": lambda: c.predict(M, adapter, "stsb", sentence(rng), 10, api_name="/search"),
        "embed": lambda: c.predict(M, adapter, [sentence(rng) for _ in range(rng.randint(1, 8))], True, api_name="/embed"),
        "map": lambda: c.predict(M, adapter, rng.choice(["topics", "snli"]), sentence(rng), api_name="/map"),
    }
    names = rng.choices(list(calls), weights=[4, 3, 2, 1], k=n)
    for name in names:
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


def main() -> None:
    from gradio_client import Client

    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--churn", action="store_true", help="new users (sessions) every round")
    ap.add_argument("--max-sessions", type=int, default=0, help="the app's session cap (0: its default)")
    args = ap.parse_args()
    env = {"EMBEDLAB_MAX_SESSIONS": str(args.max_sessions)} if args.max_sessions else {}
    server = AppServer(Path(tempfile.mkdtemp()) / "app.log", warm="topics,snli,stsb", env=env)
    try:
        c = Client(server.url, verbose=False)
        t0 = time.perf_counter()
        while "Ready" not in c.predict(api_name="/status"):
            if time.perf_counter() - t0 > 1800:
                raise SystemExit("warm-up did not finish in 30 min")
            time.sleep(2)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from embedlab.lab import Lab

        adapter = Lab().adapter_choices(M)[0][1]
        print(f"app ready {server.ready_s:.1f} s after start; adapter {adapter}; RSS {app_rss_mib(server.proc.pid):.0f} MiB")
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
