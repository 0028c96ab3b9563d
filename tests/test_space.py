"""A Space's start, in this venv: Gradio's variables decide the address, the default pair comes from the
packages requirements.txt names, and each model with a Hub twin (SmolLM2, whose package requirements.txt
leaves out) from a pre-seeded Hugging Face cache with its package hidden (HF_HUB_OFFLINE=1).

`make space-check` does the rest (a second venv from requirements.txt alone, the Space's variables, a
browser); it is not run by `make test`.
"""
from __future__ import annotations

import re
import time

import psutil
import pytest
from app_server import AppServer

from embedlab.registry import DEFAULT_PAIR
from tools.space_check import seed_hub_cache, twin_models

pytestmark = pytest.mark.integration
TWINS = twin_models()

# Runs app.py with the twin models' packages looking uninstalled, as in a Space's venv.
WITHOUT_PACKAGE = f"""
import importlib.metadata as m, runpy, sys
real = m.distribution
def distribution(name):
    if name in {sorted(t.source.dist for t in TWINS)!r}:
        raise m.PackageNotFoundError(name)
    return real(name)
m.distribution = distribution
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def listening_addresses(pid: int, port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_gradio_variables_decide_and_the_hub_twins_serve_their_models(tmp_path):
    from gradio_client import Client

    seed_hub_cache(tmp_path / "hf")
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "EMBEDLAB_CACHE": str(tmp_path / "cache"),  # empty: the GGUFs must be found and converted
           "EMBEDLAB_GGUF_DIR": ""}
    server = AppServer(tmp_path / "app.log", env=env, python_args=["-c", WITHOUT_PACKAGE])
    try:
        assert listening_addresses(server.proc.pid, server.port) == {"0.0.0.0"}
        client = Client(server.url, verbose=False)
        deadline, status = time.time() + 600, ""
        while time.time() < deadline and not status.startswith("Ready"):
            status = client.predict(api_name="/status")
            assert not re.search(r"fail|error", status, re.I), status
            time.sleep(2)
        assert status.startswith("Ready"), status
        for base, tuned in [DEFAULT_PAIR] + [(t.key, f"{t.key}+nli-cft") for t in TWINS]:
            out = client.predict(base, tuned, "A man is playing a guitar.", "A person plays an instrument.",
                                 api_name="/pairs")
            cosines = re.findall(r"\*\*(-?\d\.\d{3})\*\*", out)
            assert f"A · `{base}`" in out and f"B · `{tuned}`" in out and len(cosines) == 2, out
        log = (tmp_path / "app.log").read_text()
        for t in TWINS:
            assert f"{t.key}: GGUF from Hub {t.source.hub_twin.repo}" in log
        assert "Traceback" not in log
    finally:
        server.stop()
