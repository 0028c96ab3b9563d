"""Use a side outside the lab: for the side in picker A or B, the ``python -m embedlab export`` command and three
lines of sentence-transformers, and, where the host allows it, the exported folder as a zip download.

A merged model is large (SmolLM2-135M about 0.5 GB in float32, Gemma 3 270M about 1 GB; bf16 halves both), too
much to build and hand out to anonymous visitors of a public Space, so the download is off unless the host sets
``EMBEDLAB_EXPORT_DOWNLOAD=on``. Where it is on, an export is a long request (the "heavy" slot: one at a time, a
bounded fair wait) and is bounded:

- size: a side whose weights would exceed ``EMBEDLAB_EXPORT_MAX_MB`` (default 1200) is refused before any work
  (estimated from the registry's parameter count), and the built folder is measured again before zipping;
- disk: one build at a time, in a temporary folder deleted right after zipping (or on failure); the zip
  (``ZIP_STORED``: safetensors do not compress) goes to a download folder (:func:`common.download_folder`) and is
  removed after the app's download age like every other download; while the zips still held would exceed
  ``EMBEDLAB_EXPORT_DISK_MB`` (default 2400) with this one, a new export is refused and the message says when
  to come back. Gradio serves its own copy of each zip for the same age, so the export zips take at most twice
  that on disk, plus one build.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from .. import env_switch
from .. import export as X
from ..registry import MODELS
from ..side import Side, parse_side
from . import common
from .common import Choice, Ctx, UserError, gradio_errors, md, user_facing

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bf16 (half the size)", "float32": "float32 (full precision)"}
BYTES_PER_PARAM = {"bf16": 2, "float32": 4}
DEFAULT_MAX_MB = 1200.0
DEFAULT_DISK_MB = 2400.0
STEM = "export"  # download folders of exports: DOWNLOADS/export-XXXX/<name>.zip
BUILD_ROOT: Path | None = None  # where the temporary build folders go (None: the system's temp folder)
_one_build = threading.Lock()  # one export on disk at a time, whatever the app's concurrency settings


def download_enabled() -> bool:
    """Whether the host allows building and downloading exports (``EMBEDLAB_EXPORT_DOWNLOAD=on``; default off)."""
    return env_switch("EMBEDLAB_EXPORT_DOWNLOAD", "off")


def _mb_setting(name: str, default: float) -> float:
    """A size in MB from the environment; a value that is not a positive number falls back to ``default``."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("%s=%r is not a positive number of MB; using %g", name, raw, default)
        return default
    return value


def max_mb() -> float:
    """The largest export (its weights, MB = 2**20 bytes) the app builds."""
    return _mb_setting("EMBEDLAB_EXPORT_MAX_MB", DEFAULT_MAX_MB)


def disk_mb() -> float:
    """The most the export zips held for download may take together (MB)."""
    return _mb_setting("EMBEDLAB_EXPORT_DISK_MB", DEFAULT_DISK_MB)


# --- what the section shows -------------------------------------------------------------------------------
def folder_name(side: Side) -> str:
    """The export's folder (and zip) name: the spec with ``+``, ``@`` and ``/`` as ``-`` (``gemma3-270m-nli-cft``)."""
    return re.sub(r"[^\w.-]+", "-", side.spec.replace("@", "-step")).strip("-.") or "model"


def cli_command(side: Side, dtype: str = "bf16") -> str:
    """The command that writes the same folder on one's own machine."""
    return (f"python -m embedlab export {shlex.quote(side.spec)} {folder_name(side)}"
            + (" --dtype bf16" if dtype == "bf16" else ""))


def usage(side: Side) -> str:
    """Three lines of Python that embed with the exported folder."""
    return ("from sentence_transformers import SentenceTransformer\n"
            f"model = SentenceTransformer(\"{folder_name(side)}\")\n"
            "vectors = model.encode([\"A man is playing a guitar.\", \"Someone plays an instrument.\"])")


def estimate_mb(side: Side, dtype: str) -> float:
    """The exported weights' size (MB) from the registry's parameter count (the tokenizer adds a few MB)."""
    return MODELS[side.model].params_m * 1e6 * BYTES_PER_PARAM[dtype] / 2**20


def pick(side_a: Any, side_b: Any, which: Any) -> Side:
    """The side in picker ``which`` ("A" or "B"), parsed and validated."""
    if which not in ("A", "B"):
        raise UserError(f"side must be A or B, not {common.short(which)}")
    return parse_side(side_a if which == "A" else side_b, f"side {which}")


def dtype_of(value: Any) -> str:
    if value not in DTYPES:
        raise UserError(f"precision must be one of {', '.join(DTYPES)}, not {common.short(value)}")
    return value


@user_facing
def describe(side_a: Any, side_b: Any, which: Any, dtype: Any) -> str:
    """The section's text for the chosen side: the command, the Python lines, and whether and how big a download is."""
    side, dtype = pick(side_a, side_b, which), dtype_of(dtype)
    size = estimate_mb(side, dtype)
    lines = [f"On your machine, in a clone of this repository (`pip install -r requirements.txt`), write side {which} "
             f"`{md(side.spec)}` as a sentence-transformers folder:", "", "```bash", cli_command(side, dtype), "```", "",
             "then use it anywhere sentence-transformers runs (no embedlab needed):", "", "```python", usage(side),
             "```", "",
             "The adapter is merged into the weights; the tokenizer appends the EOS itself; last-token pooling, "
             "normalised; its vectors are the lab's to a cosine of ≥ 0.9999 in float32, ≥ 0.99 in bf16. "
             "Details: `docs/export.md`."]
    if not download_enabled():
        lines += ["", f"**Download: off on this host.** The exported weights are about {size:,.0f} MB ({dtype}): too "
                  "much to build and send from a shared public app, so run the command above instead. A host that "
                  "can afford it turns the download on with `EMBEDLAB_EXPORT_DOWNLOAD=on`."]
    elif size > max_mb():
        lines += ["", f"**Download: too large here.** The {dtype} weights are about {size:,.0f} MB; this host builds "
                  f"exports up to {max_mb():,.0f} MB" + (" (bf16 halves the size)." if dtype == "float32" else ".")]
    else:
        lines += ["", f"**Download:** about {size:,.0f} MB ({dtype}), built in a minute or a few; the link is kept "
                  f"for {common.DOWNLOAD_TTL_S // 60} minutes."]
    return "\n".join(lines)


def describe_or_problem(side_a: Any, side_b: Any, which: Any, dtype: Any) -> str:
    """:func:`describe`, or the side's problem as a line (the side's card says it too)."""
    try:
        return describe(side_a, side_b, which, dtype)
    except UserError as e:
        return f"Side problem: {md(e)}"


# --- the download --------------------------------------------------------------------------------------------
def _held_zips(now: float) -> tuple[int, float, float]:
    """(how many, MB, seconds until the oldest goes) of the export zips still held for download."""
    common.prune_downloads(now)
    zips = list(common.DOWNLOADS.glob(f"{STEM}-*/*.zip")) if common.DOWNLOADS.is_dir() else []
    stats = []
    for z in zips:
        try:
            stats.append((z.stat().st_size, z.parent.stat().st_mtime))
        except OSError:  # removed meanwhile
            continue
    if not stats:
        return 0, 0.0, 0.0
    oldest = min(m for _, m in stats)
    return len(stats), sum(s for s, _ in stats) / 2**20, max(0.0, common.DOWNLOAD_TTL_S - (now - oldest))


def _zip_folder(folder: Path, zip_path: Path, top: str, progress: Callable[[float, str], None]) -> None:
    """``folder``'s files into ``zip_path`` under ``top/``, stored uncompressed (safetensors do not compress)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files) or 1
    done = 0
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for p in files:
            progress(done / total, f"zipping {p.name}")
            zf.write(p, f"{top}/{p.relative_to(folder).as_posix()}")
            done += p.stat().st_size


@user_facing
def export_download(side_a: Any, side_b: Any, which: Any, dtype: Any, progress: Any = None) -> tuple[str, str]:
    """(the zip's path, a note) of the chosen side exported as a sentence-transformers folder; refused with the
    reason (and the command to run instead) where the download is off, the model too large, or the disk full."""
    side, dtype = pick(side_a, side_b, which), dtype_of(dtype)
    command = cli_command(side, dtype)

    def report(fraction: float, desc: str) -> None:
        if progress is not None:
            progress(fraction, desc=desc)

    if not download_enabled():
        raise UserError("Downloading an export is off on this host (a merged model is 0.3–1 GB; the host turns it "
                        f"on with EMBEDLAB_EXPORT_DOWNLOAD=on). Run it on your machine: {command}")
    limit, size = max_mb(), estimate_mb(side, dtype)
    if size > limit:
        raise UserError(f"{side.spec} in {dtype} is about {size:,.0f} MB; this host builds exports up to {limit:,.0f} MB"
                        + (" (bf16 halves the size)" if dtype == "float32" else "") + f". Run it on your machine: {command}")
    if not _one_build.acquire(blocking=False):
        raise UserError("Another export is being built; try again in a minute or two.")
    build = None
    try:
        n, held, wait = _held_zips(time.time())
        if n and held + size > disk_mb():
            raise UserError(f"The server holds {n} exported model{'s' if n > 1 else ''} for download already "
                            f"({held:,.0f} MB); the oldest is removed in about {wait / 60:.0f} min. Try again then, "
                            f"or run it on your machine: {command}")
        report(0.02, f"loading {side.spec} and merging its adapter")
        build = Path(tempfile.mkdtemp(prefix="embedlab-export-", dir=BUILD_ROOT))
        name = folder_name(side)
        try:
            r = X.export_side(side, build / name, dtype=dtype, command=command)
        except X.ExportError as e:  # its messages name the output folder: say what failed, not where
            log.warning("export of %s failed: %s", side.spec, e)
            raise UserError(f"The export of {side.spec} failed its check ({common.scrub(str(e))}).") from None
        if r.bytes / 2**20 > limit:
            raise UserError(f"{side.spec} in {dtype} came to {r.bytes / 2**20:,.0f} MB; this host builds exports "
                            f"up to {limit:,.0f} MB. Run it on your machine: {command}")
        report(0.7, "zipping")
        zip_path = common.download_folder(STEM) / f"{name}-{r.dtype}.zip"
        try:
            _zip_folder(r.path, zip_path, name, lambda f, d: report(0.7 + 0.3 * f, d))
        except BaseException:
            shutil.rmtree(zip_path.parent, ignore_errors=True)
            raise
    finally:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)  # the folder is in the zip now (or failed): free the disk at once
        _one_build.release()
    note = (f"`{md(zip_path.name)}`: {zip_path.stat().st_size / 2**20:,.1f} MB, {r.dtype}, in {r.seconds:.0f} s; "
            f"cosine to the lab's vectors ≥ {r.min_cosine:.4f} on the probe texts. Unzip it, then "
            f"`SentenceTransformer(\"{name}\")`. The link is kept for {common.DOWNLOAD_TTL_S // 60} minutes."
            + (f" Note: {md(r.note)}" if r.note else ""))
    return str(zip_path), note


# --- layout --------------------------------------------------------------------------------------------------
def build(ctx: Ctx) -> None:
    """A folded section below the tabs: "Use this side outside the lab"."""
    on = download_enabled()
    with gr.Accordion("Use this side outside the lab", open=False, elem_id="export"):
        with gr.Row():
            which = Choice(choices=[("Side A", "A"), ("Side B", "B")], value="B", label="Side", what="side",
                           min_width=120)
            dtype = Choice(choices=[(v, k) for k, v in DTYPES.items()], value="bf16", label="Weights", what="precision",
                           min_width=200)
        text = gr.Markdown(describe_or_problem(ctx.side_a.value, ctx.side_b.value, "B", "bf16"))
        go = gr.Button("Build the download (zip)", visible=on)
        out = gr.File(label="Exported model (zip)", visible=False)  # shown with its file (an empty one is a big box)
        note = gr.Markdown()

    inputs = [*ctx.sides, which, dtype]
    for comp in inputs:
        comp.change(describe_or_problem, inputs, [text], api_visibility="private", show_progress="hidden")

    def download(a: Any, b: Any, w: Any, d: Any, progress=gr.Progress()) -> tuple[gr.File, str]:
        path, msg = export_download(a, b, w, d, progress=progress)
        return gr.File(value=path, visible=True), msg

    # named like the other downloads; where the download is off it answers with the reason and the command
    go.click(gradio_errors(download), inputs, [out, note], api_name="export", **ctx.heavy)
