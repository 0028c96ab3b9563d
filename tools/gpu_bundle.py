"""``make gpu-bundle``: everything a GPU machine without network needs, in ``.xfer/`` (git-ignored).

    python tools/gpu_bundle.py [--model smollm2-135m] [--limit-mib 64] [--margin-mib 3] [--wheels DIR]

Writes
  .xfer/job/       job.py (tools/gpu_job.py), bundle.json (pieces and sha256s), wheels/ (gguf)
  .xfer/01 ...     the model's GGUF in pieces, each small enough to travel beside the tree
and prints the device calls to make, back to back. A call carries the working tree (tracked
and untracked-not-ignored files, ``shared/``) plus its ``carry`` paths, 64 MiB in all, so a
piece gets what is left after the tree, ``.xfer/job`` and a margin for the tree's growth.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from embedlab import ROOT

MiB = 2**20


def travelling_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides its carry: tracked + untracked-not-ignored files, shared/."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    files = {root / f for f in out.decode().split("\0") if f}
    if (root / "shared").is_dir():
        files |= {p for p in (root / "shared").rglob("*")}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def piece_bytes(limit: int, tree: int, job: int, margin: int) -> int:
    """Largest piece (whole MiB) that fits beside the tree, the job folder and the margin; error if none does."""
    free = (limit - tree - job - margin) // MiB * MiB
    if free < MiB:
        raise SystemExit(f"error: the tree ({tree / MiB:.1f} MiB) + .xfer/job ({job / MiB:.1f} MiB) + margin "
                         f"({margin / MiB:.0f} MiB) leave no room under {limit / MiB:.0f} MiB for a GGUF piece")
    return free


def download_wheels(dest: Path, packages: list[str]) -> list[Path]:
    """Wheels for the GPU machine's Python 3.12 (pure-Python ones fit any platform), through pip's own client.

    Only ``gguf`` is needed: its dependencies (numpy, pyyaml, requests, tqdm) are in the GPU image
    (/work/.library/device/KINDS.md's package list).
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
           "-d", str(dest), *packages]
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def build(out: Path, gguf: Path, gguf_sha: str, wheels: list[Path], tree_bytes: int, limit: int, margin: int) -> dict:
    """Write ``out/job`` and ``out/NN`` pieces; returns bundle.json's content."""
    shutil.rmtree(out, ignore_errors=True)
    job = out / "job"
    (job / "wheels").mkdir(parents=True)
    shutil.copyfile(ROOT / "tools" / "gpu_job.py", job / "job.py")
    for w in wheels:
        shutil.copyfile(w, job / "wheels" / w.name)
    job_bytes = sum(p.stat().st_size for p in job.rglob("*") if p.is_file()) + 64 * 1024  # + bundle.json
    size = gguf.stat().st_size
    most = piece_bytes(limit, tree_bytes, job_bytes, margin)
    n = math.ceil(size / most)
    piece = math.ceil(size / n)  # equal pieces: each call keeps the same slack
    pieces = []
    with open(gguf, "rb") as f:
        for i in range(1, n + 1):
            folder = f"{i:02d}"
            name = f"{gguf.name}.part{i:02d}"
            (out / folder).mkdir()
            data = f.read(piece)
            (out / folder / name).write_bytes(data)
            pieces.append({"folder": folder, "name": name, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
    bundle = {"gguf_name": gguf.name, "gguf_sha256": gguf_sha, "gguf_bytes": size, "pieces": pieces,
              "wheels": [w.name for w in wheels], "piece_bytes": most, "tree_bytes": tree_bytes,
              "limit_bytes": limit, "margin_bytes": margin}
    (job / "bundle.json").write_text(json.dumps(bundle, indent=1) + "\n")
    return bundle


def device_calls(bundle: dict, commands: str = "tools/gpu_commands.txt") -> list[dict]:
    """The device ``run`` calls, in order: one per piece, the last also runs the commands."""
    calls = []
    for i, p in enumerate(bundle["pieces"]):
        last = i == len(bundle["pieces"]) - 1
        cmd = "python3 .xfer/job/job.py" + (f" --commands {commands} --out $OUT" if last else " --out $OUT")
        calls.append({"command": cmd, "carry": [".xfer/job", f".xfer/{p['folder']}"]})
    return calls


def main(argv: list[str] | None = None) -> int:
    from embedlab.sources import locate_gguf
    from embedlab.registry import get_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=ROOT / ".xfer")
    ap.add_argument("--limit-mib", type=float, default=64.0, help="what one device call may carry in all")
    ap.add_argument("--margin-mib", type=float, default=3.0, help="room left for the tree to grow before the calls")
    ap.add_argument("--wheels", type=Path, help="use the wheels in this folder instead of downloading")
    ap.add_argument("--commands", default="tools/gpu_commands.txt", help="the commands file the last call runs")
    args = ap.parse_args(argv)

    spec = get_spec(args.model)
    found = locate_gguf(spec)
    if found.path is None:
        raise SystemExit(f"error: {spec.key}: {found.reason}")
    if args.wheels:
        wheels = sorted(args.wheels.glob("*.whl"))
    else:
        args.wheels = Path(tempfile.mkdtemp(prefix="embedlab-wheels-"))
        wheels = download_wheels(args.wheels, [f"gguf=={importlib.metadata.version('gguf')}"])
    tree = travelling_bytes(ROOT)
    bundle = build(args.out, found.path, spec.source.sha256, wheels, tree, int(args.limit_mib * MiB),
                   int(args.margin_mib * MiB))
    print(f"{args.out}: {spec.source.gguf_name} ({bundle['gguf_bytes'] / MiB:.1f} MiB) in {len(bundle['pieces'])} "
          f"pieces of {max(p['bytes'] for p in bundle['pieces']) / MiB:.1f} MiB (at most {bundle['piece_bytes'] / MiB:.0f}) (tree {tree / MiB:.1f} MiB, limit {args.limit_mib:g}, "
          f"margin {args.margin_mib:g}); wheels: {', '.join(bundle['wheels']) or 'none'}")
    print("device calls, back to back (the machine keeps /tmp only while warm):")
    for i, call in enumerate(device_calls(bundle, args.commands), 1):
        print(f"  {i}. run(command={call['command']!r}, carry={json.dumps(call['carry'])}, timeout_s=600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
