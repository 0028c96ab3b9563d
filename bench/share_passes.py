"""The compute thread's scheduling under 16 concurrent users, in-process (no web server): shared passes and urgency.

16 threads, each a user sending requests back to back with new sentences every time: half send
pair compares (2 texts under both default sides), half send "search-like" requests (1 query + 3
texts under both sides, as a search, an embed or a map query costs). Four modes, interleaved
in rounds so a busy neighbour hurts them alike:

- ``alone``: every request's forward pass runs on its own, first come first served (the app before);
- ``shared``: requests queued at the same moment share one pass (``compute.run_rows``);
- ``shared+urgent``: and compares go first (``compute.urgent``), as the app runs them now.

Prints per mode the requests/s and the compare p50/p95, and each as a ratio of ``alone``.

    python bench/share_passes.py [--users 16] [--seconds 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import threading
import time
from collections import defaultdict

from embedlab import compute
from embedlab.lab import Lab
from embedlab.side import default_sides

WORDS = "man woman dog child chef pilot plays cooks reads runs paints fixes guitar soup novel park fence car".split()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_mode(lab: Lab, a, b, users: int, seconds: float, share: bool, urgent: bool, seed: int) -> dict:
    compute.SHARE_PASSES = share
    stop = time.perf_counter() + seconds
    times: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def user(u: int) -> None:
        rng = random.Random(seed * 1000 + u)
        sent = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))) + f" {rng.randrange(10**9)}."  # noqa: E731
        kind = "compare" if u % 2 == 0 else "search-like"
        while time.perf_counter() < stop:
            texts = [sent(), sent()] if kind == "compare" else [sent() for _ in range(4)]
            t0 = time.perf_counter()
            with compute.urgent() if (urgent and kind == "compare") else contextlib.nullcontext():
                lab.embed(a, b, texts)
            with lock:
                times[kind].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = sum(len(v) for v in times.values())
    return {"rps": n / wall, "p50": statistics.median(times["compare"]), "p95": pct(times["compare"], 0.95),
            "other_p95": pct(times["search-like"], 0.95), "n": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    compute.configure_for_serving(background_batch_s=compute.BACKGROUND_BATCH_S)  # the app's process settings
    lab = Lab()
    a, b = default_sides()
    lab.embed(a, b, ["warm up", "the model"])
    modes = {"alone": (False, False), "shared": (True, False), "shared+urgent": (True, True)}
    results: dict[str, list[dict]] = defaultdict(list)
    for r in range(args.rounds):
        for m, (name, (share, urgent)) in enumerate(modes.items()):
            # a seed per round and mode: no sentence repeats, so none comes from the app's memory of recent texts
            results[name].append(run_mode(lab, a, b, args.users, args.seconds, share, urgent, seed=10 * r + m + 1))
            x = results[name][-1]
            print(f"round {r + 1} {name:<14} {x['n']:4d} requests, {x['rps']:5.1f}/s, compare p50 {x['p50'] * 1000:6.0f} ms "
                  f"p95 {x['p95'] * 1000:6.0f} ms, search-like p95 {x['other_p95'] * 1000:6.0f} ms", flush=True)
    med = {name: {k: statistics.median(x[k] for x in xs) for k in ("rps", "p50", "p95", "other_p95")}
           for name, xs in results.items()}
    base = med["alone"]
    print(f"\n{args.users} users ({args.users // 2} comparing, {args.users - args.users // 2} search-like), "
          f"{args.seconds:.0f} s per mode, median of {args.rounds} rounds; ratios against 'alone' in the same run:")
    for name, m in med.items():
        print(f"  {name:<14} {m['rps']:5.1f} requests/s ({m['rps'] / base['rps']:.2f}x)   compare p50 {m['p50'] * 1000:6.0f} ms "
              f"({m['p50'] / base['p50']:.2f}x)   p95 {m['p95'] * 1000:6.0f} ms ({m['p95'] / base['p95']:.2f}x)   "
              f"search-like p95 {m['other_p95'] * 1000:6.0f} ms ({m['other_p95'] / base['other_p95']:.2f}x)")


if __name__ == "__main__":
    main()
