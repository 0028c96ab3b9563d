"""The package's file plumbing, once: files written whole or not at all, folders swapped in, hashes and other
work on a file remembered while the file is unchanged, and data files read whether or not they are compressed.

Standard library only (tools/space_check.py imports it without torch).
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Iterator, TypeVar

T = TypeVar("T")
MAX_DECOMPRESSED = 1 << 30  # a compressed data file may expand to at most 1 GiB


class DataError(ValueError):
    """A data file that cannot be used (corrupt, too large once expanded; a training file: the row or column at
    fault), the reason in words."""


# --- whole files -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write in the block; renamed over ``path`` when the block ends
    without error, removed otherwise. Readers see the old file or the new one, never half of one, and a
    killed writer leaves at most a hidden ``.<name>.*.tmp<suffix>`` (the suffix kept, e.g. for np.savez)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """``data`` as JSON (NaN allowed), written whole; ``indent=None``: one compact line."""
    write_text(path, json.dumps(data, indent=indent, allow_nan=True) + ("\n" if indent is not None else ""))


# --- whole folders -----------------------------------------------------------------------------------------
def swap_folder(new: Path, dst: Path, old: Path | None = None) -> None:
    """Put the folder ``new`` at ``dst`` by renames: ``dst`` (if any) moves to ``old`` (default ``<dst>.old``
    beside it), ``new`` takes its place, then ``old`` is removed. A kill in between leaves ``dst`` or, for one
    rename's time, only ``old``: never half a folder."""
    old = old or dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(dst: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``dst`` to fill in the block; swapped in for ``dst`` (:func:`swap_folder`)
    when the block ends without error, removed otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        swap_folder(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_files(dst: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_folder)``, then move each file it wrote into ``dst`` by one rename (the folder's other
    files stay): each file is the old one or the new one, never half of one."""
    dst.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst))
    try:
        write(tmp)
        for f in tmp.iterdir():
            os.replace(f, dst / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- work remembered while a file is unchanged ---------------------------------------------------------------
def signature(path: str | Path) -> tuple | None:
    """What changes when a file or a folder's files change: (size, mtime ns) of a file (links followed); of a
    folder, (name, size, mtime ns) of each regular file in it; None when it cannot be read."""
    p = Path(path)
    try:
        if p.is_dir():
            return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file())
        st = p.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def memo_by_signature(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Remember ``fn(path, *args)`` (args hashable) per resolved path, :func:`signature` and args: the work is
    done again only when the file (or the folder's files) changed. The most recent ``maxsize`` results are kept;
    ``.cache_clear()`` forgets them."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        def memo(path: str, sig: tuple | None, *args: Any) -> T:
            return fn(Path(path), *args)

        @functools.wraps(fn)
        def call(path: str | Path, *args: Any) -> T:
            resolved = Path(path).resolve()  # links (the Hugging Face cache links snapshots to blobs) share one entry
            return memo(str(resolved), signature(resolved), *args)

        call.cache_clear = memo.cache_clear  # type: ignore[attr-defined]
        return call

    return wrap


def _digest(path: Path, chunk: int = 2**22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@memo_by_signature(maxsize=64)
def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file's bytes, hashed once per process for a given path, size and mtime."""
    return _digest(path)


# --- data files, plain or compressed ---------------------------------------------------------------------------
def decompress(raw: bytes, what: str = "file") -> bytes:
    """``raw`` itself, or its content when it is gzip or xz (recognised by magic bytes, not by name);
    :class:`DataError` when it expands beyond :data:`MAX_DECOMPRESSED` or is corrupt."""
    if raw[:2] == b"\x1f\x8b":
        opener: IO[bytes] = gzip.GzipFile(fileobj=io.BytesIO(raw))
    elif raw[:6] == b"\xfd7zXZ\x00":
        opener = lzma.LZMAFile(io.BytesIO(raw))
    else:
        return raw
    try:
        with opener as f:
            out = f.read(MAX_DECOMPRESSED + 1)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise DataError(f"{what}: corrupt compressed file ({e})") from None
    if len(out) > MAX_DECOMPRESSED:
        raise DataError(f"{what} expands to more than {MAX_DECOMPRESSED >> 20} MiB")
    return out


def read_data(path: Path) -> bytes:
    """A shipped data file's content: ``path`` itself, or ``<path>.xz`` / ``<path>.gz`` when only the
    compressed copy ships (the larger files do, to keep the repository small; SOURCES.md records the
    uncompressed bytes), expanded."""
    if not path.exists():
        path = next((c for c in (path.with_name(path.name + s) for s in (".xz", ".gz")) if c.exists()), path)
    return decompress(path.read_bytes(), str(path))


def open_data(path: Path) -> IO[str]:
    """:func:`read_data` as UTF-8 text, line endings as stored (for ``csv``)."""
    return io.StringIO(read_data(path).decode("utf-8"), newline="")


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 for what vanished meanwhile)."""
    total = 0
    for f in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file():
                total += f.stat().st_size
    return total
