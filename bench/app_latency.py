"""Latency of the running app through gradio_client (what a user or API client waits for).

Starts `python app.py` on a free loopback port, measures start-up to a served page, waits for the
background warm-up (default model, first shipped adapter, built-in corpora cached), then times:
pair compare, search over the 10K-sentence STSBenchmark corpus (query encoding included) and
the map view from cache. Prints p50/p95 and the goals.

    python bench/app_latency.py [--n 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from app_server import AppServer  # noqa: E402

QUERIES = ["A dog runs through the snow.", "The stock market fell sharply.", "A woman is slicing an onion.",
           "Two men are playing football.", "The president gave a speech.", "A cat sits on a mat."]


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    from gradio_client import Client

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    log = Path(tempfile.mkdtemp()) / "app.log"
    server = AppServer(log, warm="topics,snli,stsb")
    try:
        print(f"start-up to a served page: {server.ready_s:.1f} s (goal <= 20 s)")
        c = Client(server.url, verbose=False)
        t0 = time.perf_counter()
        while "Ready" not in (status := c.predict(api_name="/status")):
            if time.perf_counter() - t0 > 3600:
                raise SystemExit(f"warm-up did not finish: {status}")
            time.sleep(5)
        print(f"warm-up (model + built-in corpora) finished {time.perf_counter() - t0 + server.ready_s:.0f} s after start")
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from embedlab.lab import Lab

        adapter = Lab().adapter_choices("smollm2-135m")[0][1]
        print(f"adapter: {adapter}")
        c.predict("smollm2-135m", adapter, "warm", "up", api_name="/pairs")
        results = {
            "pair compare": (timed(lambda i: c.predict("smollm2-135m", adapter, QUERIES[i % 6], QUERIES[(i + 1) % 6],
                                                         api_name="/pairs"), args.n), 200),
            "search 10K (incl. query encoding)": (timed(lambda i: c.predict("smollm2-135m", adapter, "stsb",
                                                                         QUERIES[i % 6] + f" {i}", 10, api_name="/search"), args.n), 300),
            "map view from cache (topics)": (timed(lambda i: c.predict("smollm2-135m", adapter, "topics", "",
                                                                    api_name="/map"), max(5, args.n // 3)), 1500),
            "map view from cache (stsb 2K sample)": (timed(lambda i: c.predict("smollm2-135m", adapter, "stsb", "",
                                                                            api_name="/map"), max(5, args.n // 3)), 1500),
        }
        for name, (ms, goal) in results.items():
            print(f"{name:<40} p50 {statistics.median(ms):7.0f} ms   p95 {pct(ms, 0.95):7.0f} ms   goal p50 <= {goal} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
