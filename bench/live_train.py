"""A live training run through the real endpoint, as a visitor starts it: ``/train`` on the started app.

Starts ``python app.py`` on a free loopback port (its own live-runs folder), waits for its warm-up (``--at-start``:
does not), submits the default preset ("A few
minutes": gemma3-270m, embedlab.live.PRESETS) or the settings given, follows the streamed progress, and prints:
time to the first frame (the first progress with a measurement, after Train), the seconds between loss updates
and between measured frames (dev, histogram, map, pair), the time to STSBenchmark dev 70 and 75 (dev on the
frames' fixed 200-pair subset), the final dev, and the full STSBenchmark test score of the saved side
(python -m embedlab eval on the run's adapter).

    python -m bench.live_train                      # the default preset
    python -m bench.live_train --model smollm2-135m --steps 3 --batch-size 8      # a quick look
(run it from the repository root: `-m` puts the root on the import path, for tests/app_server.py)
Measure on a quiet machine: the times are the app's own, with nothing else running.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.app_server import AppServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--steps", type=int, default=None, help="Advanced preset with these steps (default: the preset)")
    ap.add_argument("--batch-size", type=int, default=32, help="with --steps (Advanced)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--no-test", action="store_true", help="skip the STSBenchmark test score at the end")
    ap.add_argument("--at-start", action="store_true",
                    help="press Train as soon as the page is served (default: once the status line says Ready, "
                         "as a visitor of a running app does)")
    args = ap.parse_args()
    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp())
    server = AppServer(tmp / "app.log", env={"EMBEDLAB_LIVE_DIR": str(tmp / "live")})
    try:
        client = Client(server.url, verbose=False, download_files=False)
        if not args.at_start:
            while not (status := client.predict(api_name="/status")).startswith("Ready"):
                if "fail" in status.lower() or time.perf_counter() - server.started > 1800:
                    raise SystemExit(f"the app's warm-up did not get ready: {status[:300]} (see {server.log.name})")
                time.sleep(1)
            print(f"the app was ready {time.perf_counter() - server.started:.0f} s after it started")
        preset = "Advanced" if args.steps else "A few minutes"
        t0 = time.perf_counter()
        job = client.submit(args.model, preset, args.steps, args.batch_size, args.lr, 8, 0.05,
                            "A man is playing a guitar.", "A person plays an instrument.", api_name="/train")
        seen, events = 0, []
        while not job.done():
            outs = job.outputs()
            for o in outs[seen:]:
                events.append((time.perf_counter() - t0, o))
            seen = len(outs)
            time.sleep(0.2)
        last = job.result()
        for o in job.outputs()[seen:]:
            events.append((time.perf_counter() - t0, o))
    finally:
        server.stop()
    first = next((t for t, o in events if o["dev"] is not None or o["loss"] is not None), None)
    losses: dict[int, float] = {}  # step -> when its loss was first shown
    for t, o in events:
        if o["loss"] is not None:
            losses.setdefault(o["step"], t)
    losses = sorted(losses.items())
    devs: dict[float, float] = {}  # when each frame was first shown -> its dev
    shown = None
    for t, o in events:  # a new frame: a new (dev, pair cosine), as two frames may share a dev to the digits shown
        if o["dev"] is not None and (o["dev"], o["pair_cosine"]) != shown:
            shown, devs[t] = (o["dev"], o["pair_cosine"]), o["dev"]
    gaps = [b - a for (_, a), (_, b) in zip(losses, losses[1:])]
    dev_times = sorted(devs)
    frame_gaps = [b - a for a, b in zip(dev_times, dev_times[1:])]

    def time_to(x: float) -> str:
        t = next((t for t in dev_times if devs[t] >= x), None)
        return "never" if t is None else f"{t:.0f} s"

    print(f"{last['state']}: {last['step']}/{last['steps']} steps of {args.model} in {last['seconds']:.0f} s "
          f"of training ({events[-1][0]:.0f} s from Train)")
    print(f"first frame {first:.1f} s after Train" if first is not None else "no frame")
    if gaps:
        print(f"between loss updates: median {statistics.median(gaps):.1f} s, max {max(gaps):.1f} s")
    if frame_gaps:
        print(f"between measured frames: median {statistics.median(frame_gaps):.1f} s, max {max(frame_gaps):.1f} s")
    print("losses (s after Train: step): " + ", ".join(f"{t:.0f}: {s}" for s, t in losses))
    print("frames (s after Train: step, dev): " + ", ".join(
        f"{t:.0f}: {next(o['step'] for u, o in events if u == t)}, {devs[t]}" for t in dev_times))
    print(f"dev (200 pairs): base {last['dev_base']}, final {last['dev']}; time to dev 70: {time_to(70)}, "
          f"to dev 75: {time_to(75)}")
    run = next((tmp / "live").glob(f"*/{last['spec'].split('+')[1]}"), None)
    if run is not None and not args.no_test:
        from embedlab.evaluation import run_eval
        from embedlab.loading import load_encoder

        enc = load_encoder(args.model, adapter=run)
        name = next(iter(enc.adapters))
        r = run_eval(enc, ["STSBenchmark-dev", "STSBenchmark"], adapter=name)
        print("full STSBenchmark dev / test:", json.dumps(r["tasks"]))


if __name__ == "__main__":
    main()
