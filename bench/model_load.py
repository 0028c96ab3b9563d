"""First (GGUF -> safetensors conversion) and second (cached) load time of a packaged model.

    python bench/model_load.py [--model smollm2-135m]

Uses a fresh temporary cache for the first load so the conversion is really measured.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CODE = "import time; t=time.perf_counter(); from embedlab.loading import load_encoder; e=load_encoder('{m}', device='cpu'); e.embed(['warm']); print(time.perf_counter()-t)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EMBEDLAB_CACHE": cache}
        times = []
        for _ in range(2):  # fresh process each time: what a user waits for at start-up
            t0 = time.perf_counter()
            inner = subprocess.run([sys.executable, "-c", CODE.format(m=args.model)], env=env, capture_output=True, text=True, check=True)
            times.append((time.perf_counter() - t0, float(inner.stdout.strip().splitlines()[-1])))
    for label, (wall, load) in zip(("first (converts GGUF)", "second (cached)"), times):
        print(f"{args.model} {label:<22}: load+first encode {load:6.2f} s; whole process incl. imports {wall:6.2f} s")


if __name__ == "__main__":
    main()
