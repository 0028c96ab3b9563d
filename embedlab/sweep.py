"""A second sweep of Gradio's upload/cache folder, for what Gradio's own ``delete_cache`` leaves behind.

Gradio stores each upload and each output file as ``<folder>/<content hash>/<name>``; its
``delete_cache`` removes the files it tracks once older than its age, but never their hash folders,
nor the ``<folder>/tmpXXXXXXXX`` file its multipart parser stages every upload in (empty once the
upload has moved). bench/load.py --disk, 900 requests with uploads from 4 clients, cleaning every
60 s for files over 120 s old: the empty folders and files piled up without end (about one folder
and two files per request; each folder takes a 4 KiB block and each entry an inode), and under that
load files with content stayed up to ten minutes, their bytes growing through the run.

So the app keeps its own Gradio folder (``app.py`` points ``GRADIO_TEMP_DIR`` at one when the host
has not) and sweeps it on the same schedule: every file older than the age, by ctime as Gradio ages
them, except those Gradio keeps for good (``keep_in_cache``), then every empty folder.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def gradio_folder() -> Path:
    """The app's Gradio upload/cache folder: ``GRADIO_TEMP_DIR`` when the host set one, else
    ``<temp>/embedlab-gradio`` (not Gradio's shared ``<temp>/gradio``: the sweep deletes what is old in it)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "embedlab-gradio")


def sweep(root: Path | str, age_s: float, keep: set[str] = frozenset(), now: float | None = None) -> tuple[int, int]:
    """Remove under ``root`` the regular files whose ctime is over ``age_s`` seconds old (except the
    paths in ``keep``), then the folders that are empty and unchanged for ``age_s``; never ``root``.
    Returns (files, folders) removed. A folder is removed only while empty (``os.rmdir``), so a file
    Gradio writes into it meanwhile keeps it; a file Gradio hands out again is touched by Gradio first."""
    root = Path(root)
    now = time.time() if now is None else now
    files = folders = 0
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if now - st.st_ctime > age_s and path not in keep:
                    os.unlink(path)
                    files += 1
            except OSError:  # gone meanwhile
                continue
        if Path(dirpath) == root:
            continue
        try:
            if now - os.stat(dirpath).st_mtime > age_s and not os.listdir(dirpath):
                os.rmdir(dirpath)
                folders += 1
        except OSError:  # refilled or removed meanwhile
            continue
    return files, folders


def sweep_forever(root: Path | str, every_s: float, age_s: float,
                  keep: Callable[[], set[str]] = frozenset) -> threading.Thread:
    """Start a daemon thread that runs :func:`sweep` every ``every_s`` seconds (``keep()``: the paths to spare)."""

    def loop() -> None:
        while True:
            time.sleep(every_s)
            try:
                n_files, n_folders = sweep(root, age_s, keep())
                if n_files or n_folders:
                    log.info("swept %d files and %d empty folders older than %g s from %s", n_files, n_folders,
                             age_s, Path(root).name)
            except Exception:  # housekeeping never takes the server down
                log.exception("sweeping the Gradio folder failed")

    t = threading.Thread(target=loop, daemon=True, name="cache-sweep")
    t.start()
    return t
