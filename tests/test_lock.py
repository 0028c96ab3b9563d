"""requirements.lock (what `make` installs) must agree with requirements.txt (what a Space installs)."""
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from embedlab import ROOT


def reqs(name: str) -> list[Requirement]:
    lines = [ln.strip() for ln in (ROOT / name).read_text().splitlines()]
    return [Requirement(re.sub(r"\s+#.*", "", ln)) for ln in lines if ln.strip() and not ln.startswith(("#", "-"))]


def test_lock_pins_everything_the_requirements_name():
    lock = {canonicalize_name(r.name): r for r in reqs("requirements.lock")}
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in lock.values())
    for r in reqs("requirements.txt") + reqs("requirements-dev.txt"):
        pinned = lock.get(canonicalize_name(r.name))
        assert pinned is not None, f"{r.name} is missing from requirements.lock: run `make lock`"
        version = next(iter(pinned.specifier)).version
        assert r.specifier.contains(version, prereleases=True), f"{r.name}: lock has {version}, wants {r.specifier}"


def test_lock_is_portable_and_cpu_torch():
    text = (ROOT / "requirements.lock").read_text()
    assert "file://" not in text and "/opt/" not in text  # machine-specific wheel locations
    assert re.search(r"^torch==2\.13\.0\+cpu$", text, re.M)
    assert not re.search(r"^nvidia-", text, re.M)
