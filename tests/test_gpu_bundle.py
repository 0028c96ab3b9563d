"""make gpu-bundle and the GPU job script, run here on the CPU: pieces -> GGUF -> wheel -> commands -> results."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from embedlab import ROOT
from tools import gpu_bundle

MiB = 2**20


def fake_wheel(folder: Path) -> Path:
    """A minimal valid pure-Python wheel holding module ``xferprobe``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "xferprobe-1.0-py3-none-any.whl"
    files = {"xferprobe.py": "VALUE = 42\n",
             "xferprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: xferprobe\nVersion: 1.0\n",
             "xferprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + "xferprobe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
        z.writestr("xferprobe-1.0.dist-info/RECORD", record)
    return path


def calls_from(bundle_dir: Path, tree: Path, stash: Path, out: Path, commands: Path | None = None, pieces=None):
    """Play the device calls: each a fresh tree holding .xfer/job + one piece; /tmp (the stash) shared."""
    bundle = json.loads((bundle_dir / "job" / "bundle.json").read_text())
    results = []
    for i, p in enumerate(pieces if pieces is not None else bundle["pieces"]):
        call = tree / f"call{i}"
        shutil.rmtree(call, ignore_errors=True)
        (call / ".xfer").mkdir(parents=True)
        shutil.copytree(bundle_dir / "job", call / ".xfer" / "job")
        shutil.copytree(bundle_dir / p["folder"], call / ".xfer" / p["folder"])
        last = i == len(bundle["pieces"]) - 1
        args = [sys.executable, str(call / ".xfer" / "job" / "job.py"), "--stash", str(stash), "--out", str(out / f"o{i}")]
        if last and commands is not None:
            args += ["--commands", str(commands)]
        results.append(subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=call))
    return results


def test_piece_size_comes_from_the_tree_and_the_limit():
    assert gpu_bundle.piece_bytes(64 * MiB, int(44.6 * MiB), 200_000, 3 * MiB) == 16 * MiB
    assert gpu_bundle.piece_bytes(64 * MiB, 50 * MiB, 200_000, 3 * MiB) == 10 * MiB
    with pytest.raises(SystemExit, match="no room"):
        gpu_bundle.piece_bytes(64 * MiB, 61 * MiB, 200_000, 3 * MiB)
    assert gpu_bundle.travelling_bytes(ROOT) > 10 * MiB  # the tracked tree (assets) is most of a call


def test_pieces_reassemble_install_the_wheel_run_and_come_back_within_out_limits(tmp_path):
    gguf = tmp_path / "m" / "model.gguf"
    gguf.parent.mkdir()
    data = os.urandom(int(2.5 * MiB))
    gguf.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    wheel = fake_wheel(tmp_path / "wh")
    limit = 60 * MiB
    bundle = gpu_bundle.build(tmp_path / ".xfer", gguf, sha, [wheel], tree_bytes=limit - 4 * MiB - 64 * 1024 - 8192,
                              limit=limit, margin=2 * MiB)
    assert bundle["piece_bytes"] == MiB and len(bundle["pieces"]) == 3  # 2.5 MiB in 3 pieces of <= 1 MiB
    assert max(p["bytes"] for p in bundle["pieces"]) - min(p["bytes"] for p in bundle["pieces"]) < 3  # equal
    calls = gpu_bundle.device_calls(bundle)
    assert [c["carry"] for c in calls] == [[".xfer/job", ".xfer/01"], [".xfer/job", ".xfer/02"], [".xfer/job", ".xfer/03"]]
    assert "--commands" in calls[-1]["command"] and "--commands" not in calls[0]["command"]

    commands = tmp_path / "cmds.txt"
    commands.write_text(
        "# a comment\n"
        '$PYTHON -c "import hashlib,os,xferprobe; p=os.environ[\'EMBEDLAB_GGUF_DIR\']+\'/model.gguf\'; '
        "print('sha', hashlib.sha256(open(p,'rb').read()).hexdigest(), 'probe', xferprobe.VALUE)\"\n"
        "for r in a b c; do mkdir -p $EMBEDLAB_RUNS/run-$r && echo $r > $EMBEDLAB_RUNS/run-$r/x.txt "
        "&& echo {} > $EMBEDLAB_RUNS/run-$r/training.json; done\n"
        "exit 3\n")
    stash = tmp_path / "tmp-on-gpu"
    res = calls_from(tmp_path / ".xfer", tmp_path / "tree", stash, tmp_path / "out", commands)
    assert all(r.returncode in (0, 1) for r in res), [r.stderr for r in res]
    assert "have 1 of 3 pieces" in res[0].stdout and "next, carry .xfer/02" in res[0].stdout
    assert "have 2 of 3 pieces" in res[1].stdout
    last = res[-1]
    assert "sha256 ok" in last.stdout and f"sha {sha} probe 42" in last.stdout
    assert last.returncode == 1  # a command failed (exit 3): said, the others ran
    out = tmp_path / "out" / "o2"
    job = json.loads((out / "job.json").read_text())
    assert [c["returncode"] for c in job["commands"]] == [0, 0, 3]
    # 3 runs x 2 files + job.json + log.txt = 8 files: fits as plain folders
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(files) == 8 and "run-b/x.txt" in files and (out / "run-c" / "x.txt").read_text() == "c\n"
    assert (stash / "gguf" / "model.gguf").read_bytes() == data and (stash / "site" / "xferprobe.py").is_file()


def test_many_runs_are_packed_and_a_damaged_piece_is_refused(tmp_path):
    from tools.gpu_job import collect

    runs = tmp_path / "runs"
    for r in "abcd":
        (runs / r / "checkpoint").mkdir(parents=True)
        (runs / r / "adapter_model.safetensors").write_bytes(b"w" * 100)
        (runs / r / "checkpoint" / "state").write_bytes(b"s")
    out = tmp_path / "out"
    out.mkdir()
    assert collect(runs, out, reserved=2) == ["a.tar", "b.tar", "c.tar", "d.tar"]  # nested: one tar per run
    with tarfile.open(out / "b.tar") as t:
        assert sorted(t.getnames()) == ["b", "b/adapter_model.safetensors", "b/checkpoint", "b/checkpoint/state"]
    for r in "efg":
        shutil.copytree(runs / "a", runs / r)
    out2 = tmp_path / "out2"
    out2.mkdir()
    assert collect(runs, out2, reserved=2) == ["runs.tar"]  # 7 runs + 2 > 8 files: all in one

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(3 * MiB))
    gpu_bundle.build(tmp_path / ".xfer", gguf, hashlib.sha256(gguf.read_bytes()).hexdigest(), [],
                     tree_bytes=50 * MiB, limit=64 * MiB, margin=10 * MiB)
    piece = next((tmp_path / ".xfer" / "01").iterdir())
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    res = calls_from(tmp_path / ".xfer", tmp_path / "tree", tmp_path / "stash", tmp_path / "o")
    assert res[0].returncode != 0 and "damaged" in res[0].stderr


@pytest.mark.integration
def test_real_gguf_to_a_two_step_adapter_that_loads(tmp_path):
    """SmolLM2's real GGUF in pieces -> train.py (2 steps, CPU) converting it from EMBEDLAB_GGUF_DIR
    (an empty EMBEDLAB_CACHE, so the reassembled file is what loads) -> an adapter that loads."""
    from embedlab.loading import attach_adapter, load_encoder
    from embedlab.sources import locate_gguf
    from embedlab.registry import get_spec

    spec = get_spec("smollm2-135m")
    gguf = locate_gguf(spec).path
    bundle = gpu_bundle.build(tmp_path / ".xfer", gguf, spec.source.sha256, [], tree_bytes=30 * MiB,
                              limit=64 * MiB, margin=3 * MiB)
    assert len(bundle["pieces"]) == 4  # 94 MiB in 31 MiB pieces
    # each call's tree is the real one (train.py, embedlab, assets) + .xfer/job + one piece
    tree = tmp_path / "tree"
    commands = tmp_path / "cmds.txt"
    commands.write_text(f'cd {ROOT} && EMBEDLAB_CACHE={tmp_path}/cache $PYTHON train.py --model smollm2-135m --device cpu --steps 2 --batch-size 4 --max-rows 8 '
                        f'--warmup-steps 1 --max-length 32 --eval-tasks STS17 --eval-limit 20 '
                        f'--out $EMBEDLAB_RUNS/tiny-run\n')
    res = calls_from(tmp_path / ".xfer", tree, tmp_path / "stash", tmp_path / "out", commands)
    assert res[-1].returncode == 0, res[-1].stdout[-3000:] + res[-1].stderr[-3000:]
    out = tmp_path / "out" / "o3"
    got = sorted(p.name for p in (out / "tiny-run").iterdir())
    assert got == ["README.md", "adapter_config.json", "adapter_model.safetensors", "training.json"]
    rec = json.loads((out / "tiny-run" / "training.json").read_text())
    assert rec["training"]["steps"] == 2 and rec["device"].startswith("CPU") and "STS17" in rec["test"]["tasks"]
    enc = load_encoder("smollm2-135m", device="cpu")
    info = attach_adapter(enc, out / "tiny-run")
    assert enc.embed(["a man is playing a guitar"], info.name).shape == (1, 576)
