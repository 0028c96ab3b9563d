import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests compare vectors with fp32 references at tight tolerances, so they run in fp32 wherever the CPU is
# (auto would pick bf16 on some machines and not others). bf16 is tested on purpose: tests/test_precision.py.
os.environ.setdefault("EMBEDLAB_PRECISION", "fp32")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# `make test` must give the same answer on every run: property tests draw the same examples each time
# (derandomize: seeded from each test's name) and keep no example database between runs. `make fuzz`
# (profile "fuzz") draws random examples, FUZZ_SCALE times as many, to look for new failures; a failure
# it finds belongs in the test as an @example so that `make test` checks it from then on.
FUZZ_SCALE = 20
settings.register_profile("default", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def examples(n: int) -> int:
    """``n`` examples under the default profile, ``n * FUZZ_SCALE`` under "fuzz" (an explicit
    ``max_examples`` in ``@settings`` overrides the profile's, so tests scale theirs through here)."""
    return n * FUZZ_SCALE if settings.get_current_profile_name() == "fuzz" else n


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app (default model) on a free loopback port, shared by the API and browser tests."""
    from app_server import AppServer

    server = AppServer(tmp_path_factory.mktemp("app") / "app.log")
    yield server
    server.stop()


# The features' tests (tests/test_feature_*.py, test_availability.py) run on two tiny random models.
@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A lab serving two tiny random models, registered as "tiny-llama" (A) and "tiny-bert" (B)."""
    from embedlab.lab import Lab
    from tiny import tiny_models

    encs = tiny_models(monkeypatch)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: encs[key])
    return lab


@pytest.fixture
def adapter(tmp_path, monkeypatch):
    """The side spec of a tiny adapter for A, in a folder the app may load adapters from."""
    from tiny import A, make_adapter

    root = tmp_path / "adapters"
    make_adapter(root / "tiny-nli")
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(root))
    return f"{A}+tiny-nli"
