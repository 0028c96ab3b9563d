"""The lab behind the web app: models, adapters, corpora, caches, and one function per view.

Plain functions over numpy arrays and dicts; app.py only lays them out. Shared
state (loaded models, caches) lives in one :class:`Lab` object, bounded; nothing
per user lives here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import index as faiss_index
from .adapters import (ADAPTERS_DIR, AdapterError, AdapterInfo, _inside, inspect_adapter, read_training_record,
                       shipped_adapters)
from .cache import EmbeddingCache, embedding_key
from .compute import BACKGROUND, on_compute_thread, urgent
from .corpora import Corpus, InputError, builtin
from .encode import Encoder
from .loading import attach_adapter, cache_root, load_encoder
from .projection import TwinMaps, neighbour_overlap, place_by_neighbours
from .registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec, hub_reachable
from .sts import spearman100

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = ROOT / "runs"
SEED_DIR = ROOT / "assets" / "cache"  # shipped float16 vectors + maps of the built-in corpora (`python -m embedlab build-cache`)
WARM_CORPORA = ("topics", "snli", "stsb")
MAP_MAX = 2000  # texts on one map: UMAP on 2 cores stays within seconds
NONE = "none"
HUB_PREFIX = "hub:"


def hub_adapter_dir(key: str, repo: str) -> Path:
    """Download (or find in the HF cache) one of the registry's published adapters for ``key``.

    Only repositories the registry lists are fetched; the files then go through the
    same validation as any adapter (safetensors only, matching base model).
    """
    if repo not in MODELS[key].hub_adapters:
        raise AdapterError(f"{repo} is not a published adapter for {key}")
    if not hub_reachable():
        raise AdapterError(f"{repo} needs the Hugging Face Hub, which is not reachable from this machine")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=["adapter_config.json", "adapter_model.safetensors", "*.bin"]))


def adapter_roots() -> list[Path]:
    """Folders adapters may be loaded from in the app (plus $EMBEDLAB_ADAPTER_DIRS, ':'-separated)."""
    extra = [Path(p) for p in os.environ.get("EMBEDLAB_ADAPTER_DIRS", "").split(":") if p]
    return [ADAPTERS_DIR, RUNS_DIR, *extra]


@dataclass
class Side:
    """Which encoder and which adapter make the 'tuned' side."""

    enc: Encoder
    adapter: str | None  # loaded adapter name, None = no adapter chosen

    @property
    def label(self) -> str:
        if not self.adapter:
            return "tuned (no adapter)"
        info = self.enc.adapters[self.adapter]
        return f"tuned ({info.path.name})"


class Lab:
    """Bounded caches of models, embeddings, indexes and maps, shared by all users."""

    def __init__(self, cache_dir: Path | None = None, max_models: int = 2, device: str | None = "cpu",
                 seed_dir: Path | None = SEED_DIR) -> None:
        self.cache_dir = Path(cache_dir or cache_root())
        self.seed_dir = Path(seed_dir) if seed_dir else None
        self.embeddings = EmbeddingCache(self.cache_dir / "embeddings",
                                         seeds=[self.seed_dir / "embeddings"] if self.seed_dir else [])
        self.max_models = max_models
        self.device = device
        self._models: OrderedDict[str, Encoder] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {k: threading.Lock() for k in MODELS}
        self._lock = threading.Lock()
        self._map_build = threading.Lock()  # one uncached map at a time (see map)
        self._indexes: OrderedDict[str, faiss_index.Index] = OrderedDict()
        self._maps: OrderedDict[str, dict] = OrderedDict()
        self._attached: dict[tuple, str] = {}  # (model, adapter path, file stats) -> loaded adapter name
        self.status: dict[str, str] = {}  # background work, shown in the UI

    # --- models and adapters -------------------------------------------------------------------
    def encoder(self, key: str) -> Encoder:
        """The loaded encoder for ``key`` (loads on first use; least recently used is evicted)."""
        get_spec(key)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._load_locks[key]:  # one load per model even when many users ask at once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            enc = load_encoder(key, device=self.device)
            with self._lock:
                self._models[key] = enc
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return enc

    def adapter_choices(self, key: str) -> list[tuple[str, str]]:
        """(label, value) for the adapter menu: shipped ones, local training runs, 'none'."""
        out = []
        for path in shipped_adapters(key):
            out.append((f"{path.name} (shipped){_device_tag(path)}", str(path.relative_to(ROOT))))
        if RUNS_DIR.is_dir():
            for cfg in sorted(RUNS_DIR.glob("*/adapter_config.json")):
                try:
                    if json.loads(cfg.read_text()).get("base_model_name_or_path") in MODELS[key].base_ids:
                        out.append((f"{cfg.parent.name} (local run){_device_tag(cfg.parent)}",
                                    str(cfg.parent.relative_to(ROOT))))
                except (OSError, ValueError):
                    continue
        if MODELS[key].hub_adapters and hub_reachable():
            out += [(f"{repo} (Hugging Face Hub)", HUB_PREFIX + repo) for repo in MODELS[key].hub_adapters]
        return out + [("none (base model only)", NONE)]

    def side(self, key: str, adapter: str | None) -> Side:
        """Encoder for ``key`` with ``adapter`` (a path under the allowed folders, or 'none') attached."""
        enc = self.encoder(key)
        if not adapter or adapter == NONE:
            return Side(enc, None)
        if adapter.startswith(HUB_PREFIX):
            return Side(enc, attach_adapter(enc, hub_adapter_dir(key, adapter[len(HUB_PREFIX):]), activate=False).name)
        path = allowed_adapter_path(adapter)
        try:  # already validated and attached, and the files unchanged since: skip re-reading them
            sig = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(path.iterdir()))
        except OSError:
            sig = None
        memo = (key, str(path), sig)
        if sig is not None and self._attached.get(memo) in enc.adapters:
            return Side(enc, self._attached[memo])
        info = attach_adapter(enc, path, allowed_roots=adapter_roots(), activate=False)
        self._attached[memo] = info.name
        return Side(enc, info.name)

    def adapter_info(self, key: str, adapter: str | None) -> AdapterInfo | None:
        """The validated adapter (its training record included) without loading the model: None for 'none'.

        Same checks as :meth:`side` (allowed folders first, then :func:`inspect_adapter`).
        """
        spec = self.spec(key)
        if not adapter or adapter == NONE:
            return None
        if adapter.startswith(HUB_PREFIX):
            return inspect_adapter(hub_adapter_dir(key, adapter[len(HUB_PREFIX):]), spec)
        return inspect_adapter(allowed_adapter_path(adapter), spec, allowed_roots=adapter_roots())

    def spec(self, key: str) -> ModelSpec:
        """The registry entry ``key`` serves (what its encoder will be built from)."""
        return get_spec(key)

    # --- embeddings ------------------------------------------------------------------------------
    def embed_pair_sides(self, s: Side, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Base and tuned vectors of a request's texts, (N, d) float32 each; recent texts come from memory."""
        return self.embeddings.sides(s.enc, texts, s.adapter)

    def corpus_vectors(self, s: Side, corpus: Corpus, progress: Callable[[int, int], None] | None = None,
                       wait: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Base and tuned vectors of a corpus (cached). ``wait=False``: a corpus another request is
        embedding right now raises CacheBusy with its progress instead of blocking this request."""
        kw = {"progress": progress, "wait": wait, "sha": corpus.sha256, "uploaded": corpus.uploaded}
        base = self.embeddings.get_or_compute(s.enc, corpus.texts, use_adapter=False, **kw)
        tuned = self.embeddings.get_or_compute(s.enc, corpus.texts, use_adapter=s.adapter, **kw) if s.adapter else None
        return base, tuned

    def _sample_vectors(self, s: Side, full: Corpus, sample: Corpus) -> tuple[np.ndarray, np.ndarray | None]:
        """Vectors of a map's sample: rows of the whole corpus's when those are cached already
        (the 10K search corpus), else the sample embedded on its own (a fresh 50K upload)."""
        if sample is not full:
            kw = {"sha": full.sha256, "uploaded": full.uploaded}
            fb = self.embeddings.peek(s.enc, full.texts, use_adapter=False, **kw)
            ft = self.embeddings.peek(s.enc, full.texts, use_adapter=s.adapter, **kw) if s.adapter else None
            if fb is not None and (ft is not None or not s.adapter):
                idx = full.sample_indices(len(sample))
                return fb[idx], (ft[idx] if ft is not None else None)
        return self.corpus_vectors(s, sample)

    # --- views --------------------------------------------------------------------------------
    def compare_pair(self, s: Side, a: str, b: str) -> dict:
        """Cosine of one pair under base and tuned. Urgent: the cheapest request, and the one every visitor waits on."""
        with urgent():
            base, tuned = self.embed_pair_sides(s, [a, b])
        return {"base": float(base[0] @ base[1]), "tuned": float(tuned[0] @ tuned[1]) if tuned is not None else None}

    def batch_pairs(self, s: Side, s1: list[str], s2: list[str], gold: list[float] | None) -> dict:
        """Cosines for many pairs; Spearman x100 against gold when given.

        Long work: its batches run at background priority, so single compares overtake them.
        """
        uniq = list(dict.fromkeys(s1 + s2))
        pos = {t: i for i, t in enumerate(uniq)}
        base, tuned = self.embeddings.sides(s.enc, uniq, s.adapter, priority=BACKGROUND)
        i1, i2 = [pos[t] for t in s1], [pos[t] for t in s2]
        cb = np.einsum("ij,ij->i", base[i1], base[i2])
        ct = np.einsum("ij,ij->i", tuned[i1], tuned[i2]) if tuned is not None else None
        out = {"s1": s1, "s2": s2, "gold": gold, "base": cb.tolist(), "tuned": ct.tolist() if ct is not None else None}
        if gold is not None and len(gold) >= 3:
            out["spearman_base"] = spearman100(cb, np.asarray(gold))
            out["spearman_tuned"] = spearman100(ct, np.asarray(gold)) if ct is not None else None
        return out

    def anisotropy(self, s: Side, n_pairs: int = 2000, seed: int = 0) -> dict:
        """Cosines of random sentence pairs from the STSBenchmark corpus, base vs tuned.

        A useful embedding spreads unrelated sentences apart; a raw LM puts almost
        every pair near the same high cosine (its vectors share one dominant direction).
        """
        from .evaluation import anisotropy_texts, random_pair_cosines

        texts = anisotropy_texts(seed)
        corpus = Corpus("anisotropy sample", texts, ("stsb",) * len(texts), "")
        base, tuned = self.corpus_vectors(s, corpus)
        cb = random_pair_cosines(base, n_pairs, seed)
        return {"base": cb, "tuned": random_pair_cosines(tuned, n_pairs, seed) if tuned is not None else None,
                "n_pairs": len(cb)}

    def index_for(self, s: Side, corpus: Corpus, tuned: bool) -> tuple[faiss_index.Index, np.ndarray]:
        base_v, tuned_v = self.corpus_vectors(s, corpus)
        vecs = tuned_v if tuned else base_v
        key = embedding_key(s.enc, s.adapter if tuned else False, corpus.sha256)
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key], vecs
        idx = faiss_index.build(vecs)
        with self._lock:
            self._indexes[key] = idx
            while len(self._indexes) > 8:
                self._indexes.popitem(last=False)
        return idx, vecs

    def search(self, s: Side, corpus: Corpus, query: str, k: int = 10) -> dict:
        """Top-k corpus texts for a query under base and tuned, with overlap@k and rank shifts."""
        k = int(max(1, min(k, 50, len(corpus))))
        ib, _ = self.index_for(s, corpus, tuned=False)
        it = self.index_for(s, corpus, tuned=True)[0] if s.adapter else None

        def query_both() -> tuple:  # one task on the compute thread: one wait behind background work, not three
            qb, qt = self.embed_pair_sides(s, [query])
            return ib.search(qb, k), (it.search(qt, k) if it is not None else None)

        (sb, nb), tuned_hits = on_compute_thread(query_both)
        res = {"k": k, "index": ib.kind, "recall_at_10": ib.recall_at_10, "n": len(corpus),
               "base": [(int(i), float(x)) for i, x in zip(nb[0], sb[0]) if i >= 0], "tuned": None}
        if tuned_hits is not None:
            st, nt = tuned_hits
            res["tuned"] = [(int(i), float(x)) for i, x in zip(nt[0], st[0]) if i >= 0]
            res["overlap"] = len({i for i, _ in res["base"]} & {i for i, _ in res["tuned"]}) / k
        return res

    def map(self, s: Side, corpus: Corpus, k: int = 10, seed: int = 42) -> dict:
        """Aligned UMAP layouts (base, tuned) + per-text neighbour overlap; cached on disk."""
        full, corpus = corpus, corpus.head(MAP_MAX)
        key = self.map_key(s, corpus, k, seed)
        with self._lock:
            if key in self._maps:
                return self._maps[key]
        # One map is built at a time (its texts' vectors, then UMAP): a request whose map is already in
        # memory (above) never waits behind a long build, e.g. a 20,000-text upload's.
        with self._map_build:
            with self._lock:  # built meanwhile by the request this one waited for
                if key in self._maps:
                    return self._maps[key]
            base, tuned = self._sample_vectors(s, full, corpus)
            tuned_for_fit = base if tuned is None else tuned  # no adapter: both panels show the base model
            path = self.cache_dir / "maps" / f"{key}.npz"
            m = None
            # an upload's map stays in memory only: one file per distinct upload would fill the disk
            candidates = [] if corpus.uploaded else [path] + ([self.seed_dir / "maps" / path.name] if self.seed_dir else [])
            for candidate in candidates:
                if m is None and candidate.is_file():
                    try:
                        z = np.load(candidate, allow_pickle=False)
                        m = {k_: z[k_] for k_ in _MAP_ARRAYS}
                        m["params"] = json.loads(str(z["params"]))
                    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # npz members carry a CRC
                        log.warning("map cache %s unreadable or corrupt; recomputing", candidate)
                        m = None
            if m is None:
                um = TwinMaps(seed=seed).fit(base, tuned_for_fit, same=tuned is None)
                jac, nb, nt = neighbour_overlap(base, tuned_for_fit, k=min(k, len(corpus) - 1))
                m = {"base_xy": um.base_xy, "tuned_xy": um.tuned_xy, "jaccard": jac, "nn_base": nb, "nn_tuned": nt,
                     "params": um.params}
                if not corpus.uploaded:
                    _save_map(path, m)
            m = {**m, "corpus": corpus, "base_vecs": base, "tuned_vecs": tuned, "has_tuned": tuned is not None}
            with self._lock:
                self._maps[key] = m
                while len(self._maps) > 6:
                    self._maps.popitem(last=False)
            return m

    @staticmethod
    def map_key(s: Side, corpus: Corpus, k: int = 10, seed: int = 42) -> str:
        """Cache key of one map: both sides' embedding keys plus the projection settings."""
        return hashlib.sha256("|".join([embedding_key(s.enc, False, corpus.sha256),
                                        embedding_key(s.enc, s.adapter or False, corpus.sha256),
                                        f"{TwinMaps(seed=seed).tag}-k{k}"]).encode()).hexdigest()[:24]

    def place_queries(self, s: Side, m: dict, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
        qb, qt = self.embed_pair_sides(s, queries)
        pb = place_by_neighbours(qb, m["base_vecs"], m["base_xy"])
        pt = place_by_neighbours(qt, m["tuned_vecs"], m["tuned_xy"]) if qt is not None else pb
        return pb, pt

    # --- start-up -----------------------------------------------------------------------------
    def prepare(self, key: str = DEFAULT_MODEL, corpora: Sequence[str] = WARM_CORPORA) -> Side:
        """Load ``key`` + its first adapter and make the built-in corpora's vectors, maps and indexes ready."""
        self.status["model"] = f"loading {key}…"
        s = self.side(key, self.adapter_choices(key)[0][1])
        self.status["model"] = "ready"
        self.status["anisotropy"] = "embedding"
        self.anisotropy(s)
        self.status["anisotropy"] = "ready"
        for name in corpora:
            c = builtin(name)

            def prog(done: int, total: int, name: str = name) -> None:
                self.status[name] = f"embedding {done:,}/{total:,}"

            self.corpus_vectors(s, c, progress=prog, wait=True)
            self.status[name] = "building map…"
            self.map(s, c)
            self.index_for(s, c, tuned=False)
            if s.adapter:
                self.index_for(s, c, tuned=True)
            self.status[name] = "ready"
        return s

    def warm(self, key: str = DEFAULT_MODEL, corpora: Sequence[str] = WARM_CORPORA) -> None:
        """:meth:`prepare` in a background thread: failures are reported in the status line, never raised."""
        try:
            self.prepare(key, corpora)
        except Exception as e:  # background thread: report, never crash the app
            log.exception("warm-up failed")
            self.status["error"] = f"warm-up failed: {e}"

    def export_seeds(self, key: str = DEFAULT_MODEL, corpora: Sequence[str] = WARM_CORPORA,
                     out: Path = SEED_DIR) -> list[Path]:
        """Write what :meth:`prepare` builds (vectors as float16, maps) to ``out``, replacing what was there.

        Run by ``python -m embedlab build-cache`` after an adapter changes; returns the files written.
        Everything is written to a sibling folder first and swapped in at the end: ``out`` may be
        this lab's own seed folder, which the export reads from while it runs.
        """
        from .evaluation import anisotropy_texts

        s = self.prepare(key, corpora)
        out = Path(out)
        tmp = out.with_name(out.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        for t in [anisotropy_texts(0)] + [builtin(n).texts for n in corpora]:
            for side in ([False, s.adapter] if s.adapter else [False]):
                self.embeddings.export(s.enc, t, side, tmp / "embeddings")
        for name in corpora:
            c = builtin(name).head(MAP_MAX)
            _save_map(tmp / "maps" / f"{self.map_key(s, c)}.npz", self.map(s, builtin(name)))
        for sub in ("embeddings", "maps"):
            shutil.rmtree(out / sub, ignore_errors=True)
            (out / sub).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / sub, out / sub)
        shutil.rmtree(tmp, ignore_errors=True)
        return sorted(p for p in out.rglob("*") if p.is_file())

    def status_line(self) -> str:
        if not self.status:
            return ""
        busy = {k: v for k, v in self.status.items() if v != "ready"}
        if not busy:
            return "Ready: model, adapter and built-in corpora are cached."
        return "Preparing in the background (other views work meanwhile): " + "; ".join(f"{k}: {v}" for k, v in busy.items())


_MAP_ARRAYS = ("base_xy", "tuned_xy", "jaccard", "nn_base", "nn_tuned")


def _save_map(path: Path, m: dict) -> None:
    """A map's layouts and neighbour lists as .npz (written to a temp name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: m[k] for k in _MAP_ARRAYS}, params=json.dumps(m["params"]))
    os.replace(tmp, path)


def allowed_adapter_path(adapter: str) -> Path:
    """``adapter`` (absolute, or relative to the repository) resolved, refused unless inside :func:`adapter_roots`.

    Checked before anything lists, stats or opens the folder.
    """
    path = Path(adapter).expanduser()
    path = (path if path.is_absolute() else ROOT / path).resolve()
    if not _inside(path, adapter_roots()):
        raise AdapterError(f"{adapter} is outside the allowed adapter folders")
    return path


def _device_tag(path: Path) -> str:
    try:
        rec = read_training_record(path)
    except AdapterError:  # unreadable record: no tag, the adapter's own validation says more when it is picked
        return ""
    if not rec:
        return ""
    return " · GPU-trained" if rec.get("trained_on") == "cuda" else " · CPU-trained"


__all__ = ["Lab", "Side", "InputError", "AdapterError", "NONE", "MAP_MAX"]
