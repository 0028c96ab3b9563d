"""Start `python app.py` on a free loopback port for the API and browser tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from embedlab import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    def __init__(self, log_path: Path, warm: str = "topics", env: dict[str, str] | None = None,
                 python_args: list[str] | None = None) -> None:
        """``python_args``: arguments before app.py (e.g. ``["-c", code]`` that sets things up and runs it)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        # Gradio's own variables, as a Space sets them; GRADIO_NUM_PORTS=1: fail rather than move to another port
        env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_NUM_PORTS": "1",
               "EMBEDLAB_WARM_CORPORA": warm, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, *(python_args or []), str(ROOT / "app.py")], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}; see {log_path}")
            try:
                if urllib.request.urlopen(self.url, timeout=2).status == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("app did not serve its page within 180 s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
