import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app (default model) on a free loopback port, shared by the API and browser tests."""
    from app_server import AppServer

    server = AppServer(tmp_path_factory.mktemp("app") / "app.log")
    yield server
    server.stop()
