"""Embeddings cached on disk by (model, adapter hash, corpus hash, settings), in checksummed chunks.

Chunks make a long embedding job resumable (a killed run keeps the chunks it
finished) and let a corrupt or half-written file be detected and recomputed
instead of silently served. Three tiers, looked up in order: recently used
arrays in memory, the user's cache folder, then read-only *seed* folders
(``assets/cache``: 8-bit copies of the built-in corpora's vectors shipped with the
repository, :func:`quantize`, so a first visit does not wait for 2 CPU cores to embed 10K texts).
Short interactive texts (a pair, a query) are remembered one by one, in memory only.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .compute import BACKGROUND, INTERACTIVE, Cancelled, stop_when
from .encode import Encoder, validate_texts
from . import files
from .lru import LRU

log = logging.getLogger(__name__)
CHUNK = 2048  # sentences per cached file
# Corpus jobs running at once (each up to 20,000 texts at background priority): a new one beyond this is refused
# with a message, so requests that give up after JOB_WAIT_S cannot pile up hours of background work.
MAX_JOBS = int(os.environ.get("EMBEDLAB_MAX_JOBS", "4"))
SLICE = 128  # sentences per encode call (progress is reported per slice); the compute thread runs
#              them at background priority, so interactive requests go first between two batches


def corpus_sha256(texts: Sequence[str]) -> str:
    """Order-sensitive hash of a list of texts."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embedding_key(enc: Encoder, adapter: str | None, corpus_sha: str) -> str:
    """Everything that changes the vectors: model, adapter weights (``adapter``: a name loaded on ``enc``,
    None = the base weights), prompt, max length, corpus.

    Not the precision (embedlab.precision), on purpose: the shipped fp32 caches serve a bf16 process too
    (against fresh bf16 vectors, cosine >= 0.9992 on every text checked: bench/precision.py --caches), and
    every record of vectors that may come from a cache says so (``environment()``)."""
    tag = enc.adapters[enc.check_adapter(adapter)].sha256[:16] if adapter is not None else "base"
    settings = hashlib.sha256(f"{enc.prompt_for(adapter)}|{enc.max_length}|{enc.spec.pooling}".encode()).hexdigest()[:8]
    return f"{enc.spec.key}-{tag}-{settings}-{corpus_sha[:16]}"


def model_of(key: str) -> str:
    """The registry key of the model an :func:`embedding_key` belongs to."""
    return key.rsplit("-", 3)[0]


def _write_checked(path: Path, data: bytes) -> str:
    """Write ``data`` whole or not at all; returns its sha256 (what a manifest records)."""
    files.write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _read_checked(path: Path, sha: str) -> bytes | None:
    """The bytes of ``path`` when they are what its manifest's sha256 names, else None (missing, changed)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha else None


def _save_npy_atomic(path: Path, arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return _write_checked(path, buf.getvalue())


def load_checked(path: Path, sha: str) -> np.ndarray | None:
    """A cached chunk, None when it is missing, unreadable or not the bytes its manifest's sha256 names."""
    if (data := _read_checked(path, sha)) is None:
        return None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError:
        return None


def quantize(vecs: np.ndarray) -> dict[str, np.ndarray]:
    """(N, d) float32 -> the seed format: int8 codes of each column standardised (``mean``, ``std``: (d,)
    float32), scaled per row (``scale``: (N,) float32). A quarter of float32's bytes; standardising first
    keeps a causal LM's few huge dimensions from taking all 255 levels of a row: cosine to the float32
    vectors >= 0.9999 on the shipped ones (per-row scaling alone: 0.9991 on SmolLM2's base)."""
    vecs = np.asarray(vecs, dtype=np.float32)
    mean = vecs.mean(0)
    std = vecs.std(0) + np.float32(1e-6)  # a constant column: codes 0, restored from the mean
    z = (vecs - mean) / std
    scale = np.abs(z).max(1) / np.float32(127)
    q = np.round(z / np.maximum(scale, np.float32(1e-12))[:, None]).astype(np.int8)
    return {"q": q, "scale": scale.astype(np.float32), "mean": mean, "std": std.astype(np.float32)}


def dequantize(q: np.ndarray, scale: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """:func:`quantize`'s arrays -> (N, d) float32."""
    return (q.astype(np.float32) * scale[:, None]) * std + mean


def _save_seed_atomic(path: Path, vecs: np.ndarray) -> str:
    """One seed chunk (:func:`quantize`, an .npz); returns the sha256 of its bytes."""
    buf = io.BytesIO()
    np.savez(buf, **quantize(vecs))
    return _write_checked(path, buf.getvalue())


def _load_seed(path: Path, sha: str) -> np.ndarray | None:
    """A seed chunk as float32 (N, d); None when missing, corrupt or not of :func:`quantize`'s form."""
    if (data := _read_checked(path, sha)) is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return dequantize(z["q"], z["scale"], z["mean"], z["std"])
    except (ValueError, KeyError):
        return None


class CacheBusy(RuntimeError):
    """Another thread is computing these embeddings right now (the message says how far it is)."""


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


class Job:
    """A corpus being embedded in the background for one side (see :meth:`EmbeddingCache.get_or_compute`):
    its progress, an estimate of the time left, and a way to cancel it."""

    def __init__(self, key: str, label: str, total: int) -> None:
        self.key, self.label, self.total = key, label, total
        self.done = 0
        self.started = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, rows) when computing began: the rate's origin
        self.finished = threading.Event()
        self.cancelled = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None

    def update(self, done: int, total: int) -> None:
        if self._first is None or done < self._first[1]:
            self._first = (time.monotonic(), done)  # cached chunks read before it do not count for the rate
        self.done, self.total = done, total

    def eta_s(self) -> float | None:
        """Seconds left at the rate since the first computed slice, measured up to now (so a job that
        stalls behind interactive work sees its estimate grow); None until a slice has been computed."""
        if self._first is None or self.done <= self._first[1]:
            return None
        rate = (self.done - self._first[1]) / max(1e-9, time.monotonic() - self._first[0])
        return (self.total - self.done) / rate

    def describe(self) -> str:
        """E.g. "3,200 of 10,000 texts (32%, about 2 min left)"."""
        pct = int(100 * self.done / self.total) if self.total else 100
        eta = self.eta_s()
        left = f"about {_duration(eta)} left" if eta is not None else "estimating the time left"
        return f"{self.done:,} of {self.total:,} texts ({pct}%, {left})"

    def cancel(self) -> None:
        """Stop after the batch that runs now (the chunks finished so far stay cached)."""
        self.cancelled.set()


class EmbeddingCache:
    """Disk cache of float32 (N, d) embeddings; one folder per key, one .npy per chunk.

    One computation per key at a time: a second caller either waits for it
    (``wait=True``) or gets :class:`CacheBusy` with the progress, instead of
    computing the same vectors twice.
    """

    def __init__(self, root: Path, seeds: Sequence[Path] = (), memory_bytes: int = 512 << 20,
                 memory_texts: int = 8192, upload_bytes: int | None = None) -> None:
        self.root = Path(root)
        # Vectors of users' uploads live apart and are capped in size, least recently used removed first
        # (a 20K-text upload holds ~90 MB for base and tuned); built-in corpora and seeds are never evicted.
        self.uploads = self.root / "uploads"
        self.upload_bytes = upload_bytes if upload_bytes is not None else \
            int(float(os.environ.get("EMBEDLAB_UPLOAD_CACHE_MB", "256")) * 2**20)
        self.seeds = [Path(p) for p in seeds]
        self._memory: LRU[str, np.ndarray] = LRU(max_size=memory_bytes, size=lambda a: a.nbytes)  # read-only (N, d)
        # (text, side) key -> its (d,) vector; 8192 of a 576-d model hold ~19 MB
        self._texts: LRU[str, np.ndarray] = LRU(max_items=memory_texts)
        self._texts_used = time.monotonic()  # when a request last asked for text vectors
        self._locks: dict[str, threading.Lock] = {}
        self._progress: dict[str, str] = {}
        self._jobs: dict[str, Job] = {}  # key -> the background job computing it now
        self._guard = threading.Lock()

    def forget_texts_if_idle(self, idle_s: float) -> int:
        """Empty the text vectors once no request has asked for any for ``idle_s`` seconds: they serve a visitor
        editing a pair or a query, seconds apart (8,192 of them held ~25 MiB with their keys). Returns how many went."""
        with self._guard:
            if time.monotonic() - self._texts_used < idle_s:
                return 0
            n = len(self._texts)
            self._texts.clear()
            return n

    def forget(self, models: Sequence[str]) -> None:
        """Drop ``models``' vectors from memory (a model let go by the Lab); the disk keeps them."""
        with self._guard:
            for lru in (self._memory, self._texts):
                for key in [k for k in lru if model_of(k) in models]:
                    lru.pop(key)

    def jobs(self) -> list[Job]:
        """The background jobs running now, oldest first."""
        with self._guard:
            return [j for j in self._jobs.values() if not j.finished.is_set()]

    def cancel(self, key: str | None = None) -> int:
        """Cancel the job computing ``key`` (None: every job); returns how many were running."""
        jobs = [j for j in self.jobs() if key is None or j.key == key]
        for j in jobs:
            j.cancel()
        return len(jobs)

    def _remember(self, key: str, arr: np.ndarray) -> np.ndarray:
        arr.flags.writeable = False  # shared between requests: nobody may change it in place
        with self._guard:
            self._memory.put(key, arr)
        return arr

    def get_or_compute(
        self,
        enc: Encoder,
        texts: Sequence[str],
        adapter: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        wait: bool = True,
        sha: str | None = None,
        uploaded: bool = False,
        job_wait_s: float | None = None,
        label: str = "",
        keep: Callable[[], Callable[[], None]] | None = None,
    ) -> np.ndarray:
        """Embeddings of ``texts`` (float32, (N, d)) under ``adapter`` (a loaded name, None = base), computing
        only the chunks not yet cached.

        ``sha``: :func:`corpus_sha256` of ``texts`` when the caller knows it (hashing 10K texts costs 20 ms).
        ``uploaded``: a user's upload, cached under the size-capped ``uploads`` folder.
        ``job_wait_s`` (with ``wait=False``; a web request): compute in a background :class:`Job` instead of
        in the caller's thread, wait at most this long for it, and then raise :class:`CacheBusy` saying how
        far it is ("3,200 of 10,000 texts (32%, about 2 min left)"); the next call for the same vectors finds
        the job (or its result) instead of starting another. ``label`` names the job (side and corpus);
        ``keep()`` is called when the job starts and returns what to call when it ends (the Lab pins the
        model with it).
        """
        texts = list(texts)
        key = embedding_key(enc, adapter, sha or corpus_sha256(texts))
        with self._guard:
            if (hit := self._memory.get(key)) is not None:
                return hit
            lock = self._locks.setdefault(key, threading.Lock())
        if job_wait_s is not None and not wait:
            return self._via_job(enc, texts, adapter, key, lock, uploaded, job_wait_s, label, keep)
        if not lock.acquire(blocking=wait):
            if (job := self._jobs.get(key)) is not None:
                raise CacheBusy(f"building the index for {job.label or 'this side'}: {job.describe()}; "
                                "try again in a moment")
            raise CacheBusy(f"these embeddings are being computed right now ({self._progress.get(key, 'starting')}); "
                            "try again in a moment")
        try:
            return self._remember(key, self._get_or_compute(enc, texts, adapter, progress, key, uploaded=uploaded))
        finally:
            self._progress.pop(key, None)
            lock.release()
            if uploaded:
                self.trim_uploads()

    def _via_job(self, enc: Encoder, texts: list[str], adapter: str | None, key: str, lock: threading.Lock,
                 uploaded: bool, job_wait_s: float, label: str,
                 keep: Callable[[], Callable[[], None]] | None) -> np.ndarray:
        """get_or_compute's background path: join or start the job for ``key``, wait a little, report."""
        with self._guard:
            job = self._jobs.get(key)
            if job is None:
                if len(self._jobs) >= MAX_JOBS:
                    running = "; ".join(f"{j.label or 'a side'}: {j.describe()}" for j in self._jobs.values())
                    raise CacheBusy(f"the app is already building as many indexes as it builds at once "
                                    f"({len(self._jobs)}: {running}); ask again when one of them is done")
                if not lock.acquire(blocking=False):  # computed in another thread without a job (the warm-up)
                    raise CacheBusy(f"these embeddings are being computed right now "
                                    f"({self._progress.get(key, 'starting')}); try again in a moment")
                job = self._jobs[key] = Job(key, label, len(texts))
                release = keep() if keep else None
                threading.Thread(target=self._run_job, args=(job, enc, texts, adapter, lock, uploaded, release),
                                 name=f"embed-job-{key[:24]}", daemon=True).start()
        if job.finished.wait(job_wait_s):
            if job.result is not None:
                return job.result
            if isinstance(job.error, Cancelled):
                raise CacheBusy(f"building the index for {job.label or 'this side'} was cancelled at "
                                f"{job.done:,} of {job.total:,} texts; ask again to resume it") from None
            raise job.error  # type: ignore[misc]
        raise CacheBusy(f"Building the index for {job.label or 'this side'}: {job.describe()}. It runs in the "
                        "background (other views answer meanwhile; the status line shows its progress): "
                        "ask again when it is done.")

    def _run_job(self, job: Job, enc: Encoder, texts: list[str], adapter: str | None, lock: threading.Lock,
                 uploaded: bool, release: Callable[[], None] | None) -> None:
        """A job's thread: the chunks not cached yet, in background-priority batches; stops when cancelled."""
        try:
            with stop_when(job.cancelled.is_set):
                arr = self._get_or_compute(enc, texts, adapter, job.update, job.key, uploaded=uploaded)
            job.result = self._remember(job.key, arr)
        except BaseException as e:  # handed to whoever asks next
            if not isinstance(e, Cancelled):
                log.exception("embedding job %s failed", job.label or job.key)
            job.error = e
        finally:
            self._progress.pop(job.key, None)
            with self._guard:
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]
            lock.release()
            try:
                if uploaded:  # before the waiting request goes on: it sees the upload cache within its cap
                    self.trim_uploads()
            finally:
                job.finished.set()
                if release:
                    release()

    def trim_uploads(self) -> int:
        """Remove the least recently used upload folders until the rest fit ``upload_bytes``; returns bytes freed.

        Recency is the manifest's modification time, which every read touches. A folder being
        computed right now (its lock held) is kept.
        """
        entries = []
        for d in self.uploads.glob("*") if self.uploads.is_dir() else []:
            try:
                files = [f for f in d.iterdir() if f.is_file()]
                used = max((d / "manifest.json").stat().st_mtime if (d / "manifest.json").exists() else 0,
                           d.stat().st_mtime)
                entries.append((used, sum(f.stat().st_size for f in files), d))
            except OSError:
                continue
        total, freed = sum(e[1] for e in entries), 0
        for _, size, d in sorted(entries, key=lambda e: e[0]):
            if total <= self.upload_bytes:
                break
            lock = self._locks.get(d.name)
            if lock is not None and lock.locked():
                continue
            shutil.rmtree(d, ignore_errors=True)
            with self._guard:
                self._locks.pop(d.name, None)
            total -= size
            freed += size
        return freed

    def sides(self, enc: Encoder, texts: Sequence[str], adapters: Sequence[str | None],
              priority: int = INTERACTIVE) -> list[np.ndarray]:
        """Request texts under each of ``adapters`` (loaded names on ``enc``, None = base): one float32 (N, d)
        array per adapter, all computed in one mixed-adapter pass.

        ``priority``: BACKGROUND for a long list (a batch of pairs), so interactive requests go first.

        Each text's vector under each adapter is remembered (the ``memory_texts`` most recent), so
        re-scoring a pair with one sentence edited, or re-running a query, embeds only what is
        new: on a CPU the forward pass is most of a compare's time.
        """
        texts = validate_texts(texts)
        self._texts_used = time.monotonic()
        adapters = list(adapters)
        for a in adapters:
            enc.check_adapter(a)
        key_of = {(t, a): embedding_key(enc, a, corpus_sha256([t])) for a in dict.fromkeys(adapters) for t in texts}
        with self._guard:
            found = {k: v for k in key_of.values() if (v := self._texts.get(k)) is not None}
        new = [ta for ta, k in key_of.items() if k not in found]
        if new:
            vecs = enc.embed([t for t, _ in new], [a for _, a in new], priority=priority)
            computed = {key_of[ta]: vecs[i] for i, ta in enumerate(new)}
            found.update(computed)
            with self._guard:
                for k, v in computed.items():
                    self._texts.put(k, v)
        return [np.stack([found[key_of[(t, a)]] for t in texts]) for a in adapters]

    def cached_rows(self, enc: Encoder, texts: Sequence[str], adapter: str | None = None,
                    sha: str | None = None) -> int:
        """How many of ``texts`` the user cache already holds (rows of the chunks its manifest lists;
        checksums are verified when they are read, not here)."""
        key = embedding_key(enc, adapter, sha or corpus_sha256(list(texts)))
        return min(len(texts), len(read_manifest(self.root / key / "manifest.json")) * CHUNK)

    def in_memory(self, key: str) -> bool:
        """Whether the vectors of embedding key ``key`` are in memory (get_or_compute answers at once)."""
        with self._guard:
            return key in self._memory

    def peek(self, enc: Encoder, texts: Sequence[str], adapter: str | None = None,
             sha: str | None = None, uploaded: bool = False) -> np.ndarray | None:
        """The cached embeddings of ``texts`` if every chunk is already cached, else None (never computes)."""
        texts = list(texts)
        key = embedding_key(enc, adapter, sha or corpus_sha256(texts))
        with self._guard:
            if (hit := self._memory.get(key)) is not None:
                return hit
        arr = self._get_or_compute(enc, texts, adapter, None, key, compute=False, uploaded=uploaded)
        return None if arr is None else self._remember(key, arr)

    def _get_or_compute(self, enc: Encoder, texts: list[str], adapter: str | None,
                        progress: Callable[[int, int], None] | None, key: str, compute: bool = True,
                        uploaded: bool = False) -> np.ndarray | None:
        folder = (self.uploads if uploaded else self.root) / key
        if compute:
            folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / "manifest.json"
        manifest = read_manifest(manifest_path)
        if uploaded and manifest:
            with contextlib.suppress(OSError):  # the upload cache's recency for trim_uploads
                os.utime(manifest_path)
        seeds = [(d / key, read_manifest(d / key / "manifest.json")) for d in self.seeds]
        parts = []
        n_chunks = (len(texts) + CHUNK - 1) // CHUNK
        for c in range(n_chunks):
            self._progress[key] = f"{c * CHUNK:,} of {len(texts):,} texts"
            if progress:
                progress(c * CHUNK, len(texts))
            name, seed_name = f"part-{c:05d}.npy", f"part-{c:05d}.npz"
            lo, hi = c * CHUNK, min(len(texts), (c + 1) * CHUNK)
            arr = load_checked(folder / name, manifest[name]) if name in manifest else None
            for seed_dir, seed_manifest in seeds:
                if arr is None and seed_name in seed_manifest:
                    arr = _load_seed(seed_dir / seed_name, seed_manifest[seed_name])
                    if arr is None:
                        log.warning("seed chunk %s/%s is corrupt; ignoring it", seed_dir.name, seed_name)
            if arr is None or arr.shape != (hi - lo, enc.dim):
                if not compute:
                    return None
                if name in manifest:
                    log.warning("cache chunk %s/%s is corrupt; recomputing", folder.name, name)
                pieces = []
                for j in range(lo, hi, SLICE):
                    pieces.append(enc.embed(texts[j : min(hi, j + SLICE)], adapter, priority=BACKGROUND))
                    if progress:
                        progress(min(hi, j + SLICE), len(texts))
                arr = np.concatenate(pieces)
                manifest[name] = _save_npy_atomic(folder / name, arr)
                files.write_json(manifest_path, manifest, indent=None)
            parts.append(arr)
        if progress:
            progress(len(texts), len(texts))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def export(self, enc: Encoder, texts: Sequence[str], adapter: str | None, out_root: Path) -> str:
        """Copy one key's vectors, computing them if needed, to ``out_root/<key>`` as seed chunks
        (:func:`quantize`: a quarter of float32's bytes, cosine to the float32 vectors >= 0.9999). Returns the key.
        """
        texts = list(texts)
        sha = corpus_sha256(texts)
        vecs = self.get_or_compute(enc, texts, adapter, sha=sha)
        key = embedding_key(enc, adapter, sha)
        folder = Path(out_root) / key
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        manifest = {}
        for c, lo in enumerate(range(0, len(texts), CHUNK)):
            name = f"part-{c:05d}.npz"
            manifest[name] = _save_seed_atomic(folder / name, vecs[lo : lo + CHUNK])
        files.write_json(folder / "manifest.json", manifest, indent=None)
        return key


def read_manifest(path: Path) -> dict:
    """A cache folder's manifest ({chunk file: sha256}); {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

