"""The GPU machine's side of ``make gpu-bundle`` (copied to ``.xfer/job/job.py``; standard library only).

The GPU machine has torch, transformers, peft and accelerate, but no network, no ``gguf``
package and no model weights, and each call may carry only 64 MiB beside the tree. So the
GGUF travels in numbered pieces, one per call (``.xfer/01``, ``.xfer/02`` ...), made back to
back while the machine stays warm (its /tmp survives only that long). Every call runs

    python3 .xfer/job/job.py [--commands FILE] [--out DIR]

which (1) stashes the pieces it finds under /tmp (sha256 of each checked), and once all are
there (2) reassembles the GGUF and checks its sha256, (3) installs the carried wheels into a
private folder (``pip install --no-index --no-deps --target``; on PYTHONPATH for the
commands), (4) runs the commands (one shell line each; ``$PYTHON`` is this Python,
``$EMBEDLAB_RUNS`` the folder to write run folders into, ``$EMBEDLAB_GGUF_DIR`` the folder
holding the GGUF), and (5) writes every result into ``--out`` (the device's ``$OUT``) laid out
for what comes back from there: at most 8 files of at most 16 MiB, no deeper than
``out/a/file``. ``job.json`` there says what happened.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent  # .xfer/job
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20  # what comes back from the device's $OUT
SAFE = re.compile(r"[^A-Za-z0-9._-]")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**22):
            h.update(block)
    return h.hexdigest()


def stash_pieces(bundle: dict, xfer: Path, stash: Path) -> list[str]:
    """Copy the pieces present under ``xfer`` into ``stash/parts``; returns the names still missing."""
    parts = stash / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    missing = []
    for piece in bundle["pieces"]:
        dst = parts / piece["name"]
        if dst.is_file() and dst.stat().st_size == piece["bytes"] and sha256(dst) == piece["sha256"]:
            continue
        src = xfer / piece["folder"] / piece["name"]
        if not src.is_file():
            missing.append(piece["folder"])
            continue
        if sha256(src) != piece["sha256"]:
            raise SystemExit(f"error: {src} is damaged (sha256 differs from bundle.json); rebuild with make gpu-bundle")
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        print(f"stashed {piece['folder']}/{piece['name']} ({piece['bytes'] / 2**20:.1f} MiB)", flush=True)
    return missing


def reassemble(bundle: dict, stash: Path) -> Path:
    """Join the stashed pieces into ``stash/gguf/<name>`` and check the whole file's sha256."""
    out = stash / "gguf" / bundle["gguf_name"]
    if out.is_file() and out.stat().st_size == bundle["gguf_bytes"] and sha256(out) == bundle["gguf_sha256"]:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for piece in bundle["pieces"]:
            with open(stash / "parts" / piece["name"], "rb") as p:
                shutil.copyfileobj(p, f, 2**22)
    got = sha256(tmp)
    if got != bundle["gguf_sha256"]:
        tmp.unlink()
        raise SystemExit(f"error: the reassembled {bundle['gguf_name']} has sha256 {got}, expected {bundle['gguf_sha256']}")
    os.replace(tmp, out)
    print(f"reassembled {out} ({bundle['gguf_bytes'] / 2**20:.1f} MiB, sha256 ok)", flush=True)
    return out


def install_wheels(wheels: list[Path], site: Path) -> None:
    """The carried wheels into a private folder (nothing of the machine's Python is changed)."""
    if not wheels or (site / ".installed").is_file():
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, wheels)], check=True)
    (site / ".installed").write_text("\n".join(w.name for w in wheels))


def run_commands(commands: list[str], env: dict, cwd: Path, log: Path) -> list[dict]:
    """Each line through bash, in order, output to our stdout and to ``log``; a failure does not stop the rest."""
    results = []
    with open(log, "a", encoding="utf-8") as lf:
        for cmd in commands:
            lf.write(f"\n$ {cmd}\n")
            lf.flush()
            print(f"\n$ {cmd}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
            for line in proc.stdout:
                sys.stdout.write(line)
                lf.write(line)
            rc = proc.wait()
            results.append({"command": cmd, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1)})
            lf.write(f"[exit {rc} after {results[-1]['seconds']} s]\n")
            print(f"[exit {rc} after {results[-1]['seconds']} s]", flush=True)
    return results


def collect(runs: Path, out: Path, reserved: int) -> list[str]:
    """Run folders -> ``out``, within $OUT's limits, leaving ``reserved`` files for the job's own.

    As they are when that fits (out/<run>/<file>); else one .tar per run; else all runs in one runs.tar.
    """
    folders = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    files = [f for d in folders for f in d.rglob("*") if f.is_file()]
    flat = all(f.parent.parent == runs for f in files) and all(f.stat().st_size <= MAX_FILE_BYTES for f in files)
    if flat and len(files) + reserved <= MAX_FILES:
        for f in files:
            dst = out / SAFE.sub("_", f.parent.name) / SAFE.sub("_", f.name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
        return [str(p.relative_to(out)) for p in sorted(out.rglob("*")) if p.is_file() and p.parent != out]
    groups = [[d] for d in folders] if len(folders) + reserved <= MAX_FILES else [folders]
    written = []
    for group in groups:
        name = SAFE.sub("_", group[0].name) + ".tar" if len(group) == 1 else "runs.tar"
        with tarfile.open(out / name, "w") as tar:
            for d in group:
                tar.add(d, arcname=d.name)
        if (out / name).stat().st_size > MAX_FILE_BYTES:
            raise SystemExit(f"error: {name} is {(out / name).stat().st_size / 2**20:.1f} MiB, over the "
                             f"{MAX_FILE_BYTES // 2**20} MiB a file may have to come back; write less per run")
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=Path, help="file of shell commands, one a line ('#' comments); "
                                                  "without it the pieces are only stashed and the GGUF checked")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-out"),
                    help="where the results go (default: $OUT)")
    ap.add_argument("--stash", type=Path, default=Path("/tmp/embedlab-xfer"),
                    help="survives between calls while the machine is warm")
    args = ap.parse_args(argv)
    bundle = json.loads((HERE / "bundle.json").read_text())
    xfer, root = HERE.parent, HERE.parent.parent
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"gguf": bundle["gguf_name"], "pieces": len(bundle["pieces"])}

    missing = stash_pieces(bundle, xfer, args.stash)
    summary["missing_pieces"] = missing
    if missing:
        print(f"have {len(bundle['pieces']) - len(missing)} of {len(bundle['pieces'])} pieces under {args.stash}; "
              f"next, carry .xfer/{missing[0]} (and .xfer/job) in a call made while this machine is still warm",
              flush=True)
        (args.out / "job.json").write_text(json.dumps(summary, indent=1) + "\n")
        return 0
    gguf = reassemble(bundle, args.stash)
    summary["gguf_sha256_ok"] = True
    site = args.stash / "site"
    install_wheels(sorted((HERE / "wheels").glob("*.whl")), site)

    if args.commands is not None:
        commands = [c.strip() for c in args.commands.read_text().splitlines() if c.strip() and not c.lstrip().startswith("#")]
        runs = args.stash / "runs"
        shutil.rmtree(runs, ignore_errors=True)  # only this call's results come back
        runs.mkdir(parents=True)
        env = {**os.environ, "EMBEDLAB_GGUF_DIR": str(gguf.parent), "EMBEDLAB_RUNS": str(runs),
               "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))}
        log = args.out / "log.txt"
        summary["commands"] = run_commands(commands, env, root, log)
        if log.stat().st_size > MAX_FILE_BYTES:  # keep the end: that is where the results are printed
            with open(log, "rb") as f:
                f.seek(-(MAX_FILE_BYTES - 2**20), os.SEEK_END)
                tail = f.read()
            log.write_bytes(b"[... earlier output cut to fit 16 MiB ...]\n" + tail)
        summary["results"] = collect(runs, args.out, reserved=2)  # job.json + log.txt
    (args.out / "job.json").write_text(json.dumps(summary, indent=1) + "\n")
    failed = [c for c in summary.get("commands", []) if c["returncode"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
