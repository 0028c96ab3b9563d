import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_minilm_eval_matches_mteb(tmp_path):
    """all-MiniLM-L6-v2 scores 82.03 on STSBenchmark test in MTEB."""
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "embedlab", "eval", "--model", "minilm-l6", "--tasks", "STSBenchmark",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert abs(json.loads(out.read_text())["tasks"]["STSBenchmark"] - 82.03) < 0.5


def test_embed_cli_resumes_and_shards_across_processes(tmp_path):
    """`python -m embedlab embed` alone, then killed-and-rerun (cache chunks reused), then under torchrun
    with 2 processes (each embeds a shard): the same vectors every way."""
    import os
    from pathlib import Path

    import numpy as np

    from embedlab.loading import cache_root
    from embedlab.sts import load_task

    t = load_task("STSBenchmark")
    texts = list(dict.fromkeys(t.s1[:60] + t.s2[:60]))
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(texts) + "\n")
    models = cache_root() / "models"
    env = {**os.environ, "EMBEDLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "cache").mkdir()
    if models.is_dir():
        (tmp_path / "cache" / "models").symlink_to(models)
    args = ["-m", "embedlab", "embed", str(corpus), "--model", "minilm-l6", "--device", "cpu"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.npy")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "100%" in one.stderr and "sentences/s" in one.stdout  # progress and rate
    again = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "again.npy")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert f"{len(texts):,} already in the cache" in again.stdout and "computed 0 texts" in again.stdout
    two = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", *args,
                          "--out", str(tmp_path / "two.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "process 1:" in two.stdout
    a, b, c = (np.load(tmp_path / f"{n}.npy") for n in ("one", "again", "two"))
    assert a.shape == (len(texts), 384) and np.array_equal(a, b)
    assert np.einsum("ij,ij->i", a, c).min() > 0.9999
    assert (tmp_path / "one.txt").read_text().splitlines() == texts
