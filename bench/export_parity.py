"""An exported side against the lab, on every distinct sentence of STSBenchmark test.

For each side: `python -m embedlab export`'s function writes the folder, the lab embeds the sentences
(its encoder, batch 64), `SentenceTransformer(OUT).encode` embeds them at batch sizes 1 and 64, and the
per-sentence cosines are summarised (tests/test_export.py checks a 300-sentence sample of the same).

    python bench/export_parity.py                                  # both shipped adapters and Gemma's base
    python bench/export_parity.py smollm2-135m --json bench/out/export_parity.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    from sentence_transformers import SentenceTransformer

    import embedlab.export as X
    from embedlab.side import parse_side
    from test_export import SIDES, stsb_sentences

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sides", nargs="*", default=SIDES)
    p.add_argument("--n", type=int, help="a sample of N sentences (default: all)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    texts = stsb_sentences(args.n)
    rows = []
    for spec in args.sides:
        side = parse_side(spec)
        with tempfile.TemporaryDirectory(prefix="export-parity-") as tmp:
            t0 = time.perf_counter()
            r = X.export_side(side, Path(tmp) / "out", dtype=args.dtype)
            row = {"side": spec, "dtype": r.dtype, "sentences": len(texts), "export_s": round(time.perf_counter() - t0, 1),
                   "folder_mib": round(r.bytes / 2**20, 1)}
            print(f"{spec}: exported in {row['export_s']} s", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            want = X.lab_vectors(side, texts)
            row["lab_s"] = round(time.perf_counter() - t0, 1)
            print(f"{spec}: lab vectors in {row['lab_s']} s", file=sys.stderr, flush=True)
            st = SentenceTransformer(str(r.path), device="cpu")
            for bs in (64, 1):
                t0 = time.perf_counter()
                got = st.encode(texts, batch_size=bs, convert_to_numpy=True)
                row[f"st_bs{bs}_s"] = round(time.perf_counter() - t0, 1)
                c = np.sum(got.astype(np.float64) * want, axis=1)
                row[f"bs{bs}_min_cosine"] = round(float(c.min()), 8)
                row[f"bs{bs}_mean_cosine"] = round(float(c.mean()), 8)
                row[f"bs{bs}_worst_text"] = texts[int(c.argmin())][:80]
                print(f"{spec}: batch size {bs}: {row[f'st_bs{bs}_s']} s, min cosine {c.min():.8f}", file=sys.stderr,
                      flush=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(min(r["bs1_min_cosine"], r["bs64_min_cosine"]) >= 0.9999 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
