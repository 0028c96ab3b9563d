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
