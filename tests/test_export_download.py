"""The app's "Use this side outside the lab" section (embedlab/features/export.py) on tiny random models: the command
and usage lines, the download off by default, and where it is on a zip holding a sentence-transformers folder that
embeds as the lab does, within the size and disk bounds, with no build folder left behind."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

import embedlab.export as X
from embedlab.features import common
from embedlab.features import export as FX
from embedlab.lab import Lab
from embedlab.side import parse_side
from tiny import A, make_adapter, tiny_load_side, tiny_models

TEXTS = ["a man is playing a guitar", "the dog", "a woman is eating food in the park .", "cat", "5 dogs ? !"]


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A lab serving the tiny models, a tiny adapter for A, exports built from the same tiny weights, and the
    download and build folders under tmp_path."""
    encs = tiny_models(monkeypatch)
    make_adapter(tmp_path / "adapters" / "tiny-nli")
    monkeypatch.setenv("EMBEDLAB_ADAPTER_DIRS", str(tmp_path / "adapters"))
    monkeypatch.setattr(X, "load_side", tiny_load_side)
    monkeypatch.setattr(common, "DOWNLOADS", tmp_path / "downloads")
    (tmp_path / "build").mkdir()
    monkeypatch.setattr(FX, "BUILD_ROOT", tmp_path / "build")
    for var in ("EMBEDLAB_EXPORT_DOWNLOAD", "EMBEDLAB_EXPORT_MAX_MB", "EMBEDLAB_EXPORT_DISK_MB"):
        monkeypatch.delenv(var, raising=False)
    lab = Lab(cache_dir=tmp_path / "cache", seed_dir=None)
    monkeypatch.setattr(lab, "encoder", lambda key: encs[key])
    return lab


SIDE = f"{A}+tiny-nli"


def unzip(path, to):
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        zf.extractall(to)
    (top,) = list(to.iterdir())
    return top


def test_off_by_default_shows_the_command_and_builds_nothing(lab, tmp_path):
    text = FX.describe(A, SIDE, "B", "bf16")
    assert f"python -m embedlab export {SIDE} {A}-tiny-nli --dtype bf16" in text
    assert f'SentenceTransformer("{A}-tiny-nli")' in text and "model.encode(" in text
    assert "off on this host" in text and "EMBEDLAB_EXPORT_DOWNLOAD=on" in text
    assert f"python -m embedlab export {A} {A}\n" in FX.describe(A, SIDE, "A", "float32") + "\n"
    with pytest.raises(common.UserError, match="off on this host.*python -m embedlab export"):
        FX.export_download(A, SIDE, "B", "bf16")
    assert not (tmp_path / "downloads").exists() and not any((tmp_path / "build").iterdir())


def test_on_the_zip_holds_a_folder_that_embeds_as_the_lab(lab, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", "on")
    assert "**Download:** about" in FX.describe(A, SIDE, "B", "float32")
    seen = []
    path, note = FX.export_download(A, SIDE, "B", "float32", progress=lambda f, desc: seen.append(f))
    assert path.endswith(f"{A}-tiny-nli-float32.zip") and "float32" in note and str(tmp_path) not in note
    assert seen == sorted(seen) and seen[-1] <= 1  # progress only moves forward
    assert not any((tmp_path / "build").iterdir())  # the build folder went right after zipping
    folder = unzip(path, tmp_path / "unzipped")
    assert folder.name == f"{A}-tiny-nli" and (folder / "model.safetensors").is_file()
    got = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    side = parse_side(SIDE)
    with lab.hold(side) as (r,):
        want = r.enc.embed(TEXTS, r.adapter)
    assert np.sum(got.astype(np.float64) * want, axis=1).min() >= 0.9999
    # bf16 by default in the UI: half the bytes, still the lab's vectors to 0.99
    path16, _ = FX.export_download(A, SIDE, "B", "bf16")
    folder16 = unzip(path16, tmp_path / "unzipped16")
    got16 = SentenceTransformer(str(folder16), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.sum(got16.astype(np.float64) * want, axis=1).min() >= 0.99
    assert (folder16 / "model.safetensors").stat().st_size < 0.6 * (folder / "model.safetensors").stat().st_size
    # kept like every other download: gone after the app's download age
    common.prune_downloads(now=__import__("time").time() + common.DOWNLOAD_TTL_S + 1)
    assert not list((tmp_path / "downloads").glob("*"))


def test_size_and_disk_bounds_refuse_with_the_command(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", "on")
    monkeypatch.setenv("EMBEDLAB_EXPORT_MAX_MB", "0.1")  # the tiny Llama: 0.1M parameters, 0.38 MB in float32
    with pytest.raises(common.UserError, match=r"about 0 MB; this host builds exports up to 0 MB \(bf16 halves"):
        FX.export_download(A, SIDE, "B", "float32")
    assert "too large here" in FX.describe(A, SIDE, "B", "float32")
    monkeypatch.setenv("EMBEDLAB_EXPORT_MAX_MB", "oops")  # not a number: the default bound
    assert FX.max_mb() == FX.DEFAULT_MAX_MB
    monkeypatch.delenv("EMBEDLAB_EXPORT_MAX_MB")
    FX.export_download(A, SIDE, "B", "float32")
    monkeypatch.setenv("EMBEDLAB_EXPORT_DISK_MB", "0.2")  # the zip held already + a new one would exceed it
    with pytest.raises(common.UserError, match="holds 1 exported model for download already.*removed in about 15 min"):
        FX.export_download(A, SIDE, "B", "bf16")
    assert len(list((tmp_path / "downloads").glob("export-*"))) == 1 and not any((tmp_path / "build").iterdir())


def test_a_failed_export_leaves_nothing_and_says_why_without_paths(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", "on")
    monkeypatch.setattr(X, "MIN_COSINE", {k: 2.0 for k in X.MIN_COSINE})  # every check fails
    with pytest.raises(common.UserError, match="failed its check") as e:
        FX.export_download(A, SIDE, "B", "bf16")
    assert str(tmp_path) not in str(e.value) and "/" not in str(e.value).replace("python -m", "")
    assert not any((tmp_path / "build").iterdir()) and not list((tmp_path / "downloads").glob("export-*/*"))
    assert FX._one_build.acquire(blocking=False)  # released
    FX._one_build.release()


@pytest.mark.parametrize("a,b,which,dtype,match", [
    (A, f"{A}+nope", "B", "bf16", "side B: no adapter 'nope'"),
    ("x" * 500, SIDE, "A", "bf16", "side A has 500 characters"),
    (A, SIDE, "C", "bf16", "side must be A or B"),
    (A, SIDE, "B", "int8", "precision must be one of bf16, float32"),
    (A, None, "B", "bf16", "side B must be a side spec"),
])
def test_bad_inputs_get_a_clear_message(lab, monkeypatch, a, b, which, dtype, match):
    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", "on")
    with pytest.raises(common.UserError, match=match):
        FX.export_download(a, b, which, dtype)
    assert FX.describe_or_problem(a, b, which, dtype).startswith("Side problem:")


def test_the_section_and_its_endpoint_are_in_the_app(lab):
    import app

    demo = app.build(lab)  # off: the button is hidden, the endpoint answers with the reason and the command
    fn = next(f for f in demo.fns.values() if f.api_name == "export")
    assert fn.concurrency_id == "heavy" and fn.concurrency_limit == 1 and fn.validator is not None
    props = {c["props"].get("label"): c["props"] for c in demo.config["components"]}
    assert props["Use this side outside the lab"]["open"] is False
    assert props["Exported model (zip)"]["visible"] is False


@pytest.mark.parametrize("value", ["1", "yes", "true", "onn"])
def test_the_download_switch_takes_on_or_off_only(value, monkeypatch):
    """The same on/off parser as EMBEDLAB_LIVE_TRAINING: a typo refuses, naming the variable, never guesses."""
    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", value)
    with pytest.raises(ValueError, match="EMBEDLAB_EXPORT_DOWNLOAD must be on or off"):
        FX.download_enabled()
    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", " ON ")
    assert FX.download_enabled()
    monkeypatch.setenv("EMBEDLAB_EXPORT_DOWNLOAD", "")
    assert not FX.download_enabled()
