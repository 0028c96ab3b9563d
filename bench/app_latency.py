"""Latency of the running app through gradio_client (what a user or API client waits for).

Starts `python app.py` on a free loopback port, measures start-up to a served page, waits for the
background warm-up (default model, first shipped adapter, built-in corpora cached), then times:
pair compare, search over the 10K-sentence STSBenchmark corpus (query encoding included),
the map view from cache, /compare of one pair under two sides on one backbone (base vs adapter:
one mixed-adapter pass) and across two models (minilm-l6 vs the tuned default model: two passes on
two backbones, both held in memory), and the training replay's step change (the slider moved to
another snapshot). Prints p50/p95, the goals and the cross-model / same-model ratio.

Each request is timed twice: through gradio_client (the goal's yardstick) and over Gradio's
plain REST API (POST /gradio_api/call/<api>, then read the event stream: what a browser or
curl waits). gradio_client polls its message queue every 50 ms, so it adds a floor, printed
as the round trip of the trivial /status endpoint. The app remembers recent sentences, so
every timed text is new unless the case says otherwise. The client is made with download_files=False:
by default it would also fetch each view's CSV + JSON downloads after every search.

    python -m bench.app_latency [--n 30] [--only replay] [--warm topics]

Besides the default pair, /compare is timed on every other model's base vs its adapter (side.model_pairs: the
page's pair buttons) in the same run, on the same app.
(run it from the repository root: `-m` puts the root on the import path, for tests/app_server.py)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.app_server import AppServer

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


def rest_call(http, api: str, data: list) -> list[str]:
    """One call over Gradio's REST API; returns the event-stream lines (raises on an error event)."""
    r = http.post(f"gradio_api/call/{api}", json={"data": data})
    r.raise_for_status()
    with http.stream("GET", f"gradio_api/call/{api}/{r.json()['event_id']}") as resp:
        lines = list(resp.iter_lines())
    if any(line.startswith("event: error") for line in lines):
        raise RuntimeError(f"{api}: {lines}")
    return lines


def step_change_cases(side_a: str, side_b: str, n: int) -> list[tuple]:
    """The training replay's slider: call i moves to snapshot (i + 1) mod S, so every call is a step change
    (the replay itself is precomputed: assets/cache/replay). Cases in main()'s format."""
    from embedlab.adapters import snapshots
    from embedlab.side import parse_side

    folder = parse_side(side_b).folder
    s = len(snapshots(folder)) if folder is not None else 0
    if s < 2:
        print(f"(no replay cases: {side_b} has {s} training snapshots)")
        return []
    # the Pairs tab's default sentences ride along: the note gives their cosine at the step (memory after a round)
    x, y = "A man is playing a guitar.", "A person plays an instrument."
    return [(f"replay step change ({corpus}, {s} steps)", "replay",
             lambda i, t, corpus=corpus: [side_a, side_b, corpus, x, y, (i + 1) % s], 300, n) for corpus in ("topics", "snli")]


def main() -> None:
    from gradio_client import Client

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--only", default="", help="time only the cases whose name contains this text (the floor always)")
    ap.add_argument("--warm", default="topics,snli,stsb",
                    help="built-in corpora the app warms before timing starts (the search and stsb map cases need stsb)")
    args = ap.parse_args()
    log = Path(tempfile.mkdtemp()) / "app.log"
    server = AppServer(log, warm=args.warm)
    try:
        print(f"start-up to a served page: {server.ready_s:.1f} s (goal <= 20 s)")
        c = Client(server.url, verbose=False, download_files=False)
        t0 = time.perf_counter()
        while "Ready" not in (status := c.predict(api_name="/status")):
            if time.perf_counter() - t0 > 3600:
                raise SystemExit(f"warm-up did not finish: {status}")
            time.sleep(5)
        print(f"warm-up (model + built-in corpora) finished {time.perf_counter() - t0 + server.ready_s:.0f} s after start")
        from embedlab.side import default_sides, model_pairs

        m, adapter = (s.spec for s in default_sides())  # side A: the base model, side B: its shipped adapter
        others = [(a.spec, b.spec) for a, b in model_pairs()[1:]]  # every other model's pair
        other = "minilm-l6"  # the cross-model case's side A
        print(f"sides: {m} vs {adapter}; cross-model: {other} vs {adapter}")
        c.predict(m, adapter, "warm", "up", api_name="/pairs")
        t1 = time.perf_counter()
        c.predict(other, adapter, "warm", "up", api_name="/compare")  # loads the second backbone
        print(f"first cross-model compare (loads {other}): {time.perf_counter() - t1:.1f} s")
        import httpx

        http = httpx.Client(base_url=server.url, timeout=120)
        # Every text a timed request sends is new to the server (the tag makes each run's texts
        # distinct from every other run's), except where a case says otherwise: the app remembers
        # recent sentences.
        cases = [  # name, api, arguments for call i of the run tagged t, goal (ms), repeats
            ("status (floor: trivial endpoint)", "status", lambda i, t: [], None, args.n),
            ("pair compare, both sentences new", "pairs",
             lambda i, t: [m, adapter, QUERIES[i % 6] + f" {t}{i}", QUERIES[(i + 1) % 6] + f" {t}{i}"], 200, args.n),
            ("pair compare, one sentence edited", "pairs",
             lambda i, t: [m, adapter, QUERIES[0] + f" {t}", QUERIES[(i + 1) % 6] + f" {t}{i}"], 200, args.n),
            ("search 10K (incl. query encoding)", "search", lambda i, t: [m, adapter, "stsb", QUERIES[i % 6] + f" {t}{i}", 10],
             300, args.n),
            ("map view from cache (topics)", "map", lambda i, t: [m, adapter, "topics", ""], 1500, max(5, args.n // 3)),
            ("map view from cache (stsb 2K sample)", "map", lambda i, t: [m, adapter, "stsb", ""], 1500, max(5, args.n // 3)),
            ("/compare, same model (base vs adapter)", "compare",
             lambda i, t: [m, adapter, QUERIES[i % 6] + f" {t}{i}", QUERIES[(i + 1) % 6] + f" {t}{i}"], 200, args.n),
            ("/compare, cross-model (minilm vs tuned)", "compare",
             lambda i, t: [other, adapter, QUERIES[i % 6] + f" {t}{i}", QUERIES[(i + 1) % 6] + f" {t}{i}"], None, args.n),
        ]
        cases += [(f"/compare, {oa} vs +{ob.partition('+')[2]}"[:38], "compare",
                   lambda i, t, oa=oa, ob=ob: [oa, ob, QUERIES[i % 6] + f" {t}{i}", QUERIES[(i + 1) % 6] + f" {t}{i}"],
                   200, args.n) for oa, ob in others]
        cases += step_change_cases(m, adapter, args.n)
        cases = [c_ for j, c_ in enumerate(cases) if j == 0 or args.only in c_[0]]
        p50 = {}
        print(f"{'':<38}{'gradio_client':>26}{'REST API':>26}")
        print(f"{'endpoint':<38}{'p50 ms':>13}{'p95 ms':>13}{'p50 ms':>13}{'p95 ms':>13}   goal p50")
        for j, (name, api, make, goal, n) in enumerate(cases):
            tc, tr = f"c{j}.", f"r{j}."
            c.predict(*make(-1, tc), api_name=f"/{api}")  # the "edited" case's fixed sentence is seen first
            rest_call(http, api, make(-1, tr))
            via_client = timed(lambda i, api=api, make=make, t=tc: c.predict(*make(i, t), api_name=f"/{api}"), n)
            via_rest = timed(lambda i, api=api, make=make, t=tr: rest_call(http, api, make(i, t)), n)
            print(f"{name:<38}{statistics.median(via_client):>13.0f}{pct(via_client, 0.95):>13.0f}"
                  f"{statistics.median(via_rest):>13.0f}{pct(via_rest, 0.95):>13.0f}   {f'<= {goal} ms' if goal else ''}")
            p50[name] = (statistics.median(via_client), statistics.median(via_rest))
        same, cross = p50.get("/compare, same model (base vs adapter)"), p50.get("/compare, cross-model (minilm vs tuned)")
        if same and cross:  # both timed (--only may leave them out)
            print(f"cross-model / same-model compare, p50: {cross[0] / same[0]:.2f}x (gradio_client), "
                  f"{cross[1] / same[1]:.2f}x (REST)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
