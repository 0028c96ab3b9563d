"""Training replay: what the app's step slider shows for an adapter's training snapshots, precomputed.

``python -m embedlab replay-cache --model smollm2-135m --adapter assets/adapters/smollm2-135m/nli-cft``
embeds a built-in corpus (``topics``, ``snli``) and the app's anisotropy sample at every snapshot
step the adapter's training.json lists (``train.py --snapshot-steps``; read by
:func:`embedlab.adapters.snapshots`), through the lab's own loader and embedding cache, and stores

- ``xy`` (S, N, 2): the corpus's map at every step, all steps laid out together by umap's
  AlignedUMAP with text i of one step related to text i of the next, so a text keeps its place from
  step to step unless its neighbourhood changes, and scrubbing shows points moving smoothly;
- ``cosines`` (S, P): the cosines of the anisotropy view's random pairs (:func:`embedlab.features.pairs.anisotropy_cosines`) at every step.

One small npz per (model, snapshots' weights, corpus) under ``assets/cache/replay/``, named by a hash
of everything that decides it (each step's weights sha256 and prompt, the corpus and sample hashes, the
layout settings): a changed adapter or corpus finds no file, never stale data. The app only reads
these files: a step change is a lookup plus three figures, and no request computes a replay.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from . import plots
from .adapters import (RECORD_FILE, SNAPSHOTS_DIR, AdapterError, Snapshot, TrainingRecord, snapshots,
                       write_training_record)
from .files import atomic_path, memo_by_signature, sha256_file, signature
from .cache import corpus_sha256
from .corpora import Corpus, InputError, builtin
from .registry import ModelSpec

REPLAY_CORPORA = {"topics": "Topics demo (96)", "snli": "SNLI triplets (900)"}
REPLAY_VERSION = "replay-v1"  # bump when what a file holds or how it is computed changes


class ReplayUnavailable(InputError):
    """No replay for this adapter/corpus (no snapshots, or none precomputed); the message says what to do."""


@dataclass(frozen=True)
class LayoutSettings:
    """AlignedUMAP settings of the replay maps (those of :class:`embedlab.projection.TwinMaps`)."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 42
    # umap's default is 0.01 with a window of 3 slices; 0.1 (TwinMaps' choice for two layouts) keeps texts
    # whose neighbourhood does not change close to where they were at the step before
    alignment_regularisation: float = 0.1

    @property
    def tag(self) -> str:
        return (f"{REPLAY_VERSION}-n{self.n_neighbors}-d{self.min_dist:g}-r{self.alignment_regularisation:g}"
                f"-s{self.seed}")


LAYOUT = LayoutSettings()


def replay_dir() -> Path:
    """Where replay files live: the shipped seed cache's ``replay/`` folder."""
    from .lab import SEED_DIR

    return SEED_DIR / "replay"


def replay_corpus(name: Any) -> Corpus:
    """The built-in corpus ``name`` as the replay lays it out (the same sample the Map tab uses)."""
    from .lab import MAP_MAX

    if not isinstance(name, str) or name not in REPLAY_CORPORA:
        raise InputError(f"the replay has the corpora {', '.join(REPLAY_CORPORA)}, not {str(name)[:40]!r}")
    return builtin(name).sample(MAP_MAX)


@functools.lru_cache(maxsize=4)
def _sample_sha(seed: int = 0) -> str:
    from .evaluation import anisotropy_texts

    return corpus_sha256(anisotropy_texts(seed))


def _step_identity(snap: Snapshot, spec: ModelSpec) -> str:
    """What decides a step's vectors: its weights' sha256 (hashed once per file version) and its prompt."""
    if snap.path is None:
        return f"{snap.step}:base:{spec.prompt}"
    w = snap.path / "adapter_model.safetensors"
    try:
        sha = sha256_file(w)
    except OSError:
        raise AdapterError(f"snapshot {snap.step}'s weights are missing ({snap.path.name}/adapter_model.safetensors)") from None
    prompt = TrainingRecord.read(snap.path).prompt or spec.prompt
    return f"{snap.step}:{sha}:{prompt}"


def replay_key(spec: ModelSpec, snaps: Sequence[Snapshot], corpus: Corpus, layout: LayoutSettings = LAYOUT) -> str:
    """Hash of everything a replay file depends on (model, every step's weights and prompt, corpus, sample, layout)."""
    parts = [layout.tag, spec.key, str(spec.max_length), spec.pooling, corpus.sha256, _sample_sha(0),
             *(_step_identity(s, spec) for s in snaps)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def replay_path(spec: ModelSpec, snaps: Sequence[Snapshot], corpus_name: str, root: Path | None = None) -> Path:
    corpus = replay_corpus(corpus_name)
    return Path(root or replay_dir()) / f"{spec.key}-{corpus_name}-{replay_key(spec, snaps, corpus)}.npz"


def aligned_layouts(vectors: Sequence[np.ndarray], layout: LayoutSettings = LAYOUT) -> np.ndarray:
    """(S, N, 2) float32 map layouts of the same N texts embedded S times (each (N, d), L2-normalised),
    laid out together by umap's AlignedUMAP with text i related to text i at the next step."""
    from .projection import aligned_umap

    if len(vectors) < 2:
        raise ValueError("a replay needs at least 2 steps of the same >= 4 texts")
    return aligned_umap(vectors, layout.n_neighbors, layout.min_dist, layout.seed, layout.alignment_regularisation)


def build_replay(lab, model: str, adapter: str | Path, corpus_name: str, out_dir: Path | None = None) -> Path:
    """Embed the corpus and the anisotropy sample at every snapshot step, lay the maps out, write the npz.

    Every step is a side ``model+adapter@step`` parsed like any other (:func:`embedlab.side.parse_side`:
    allowed folders, validation) and goes through the lab's loader and embedding cache. Returns the file written.
    """
    from .features.pairs import anisotropy_cosines
    from .registry import get_spec
    from .side import SideError, parse_side

    spec = get_spec(model)
    adapter = Path(adapter).resolve()
    snaps = snapshots(adapter)
    if len(snaps) < 2:
        raise ReplayUnavailable(f"{adapter.name} lists {len(snaps)} training snapshot(s); a replay needs 2 or more "
                                "(train with --snapshot-steps)")
    corpus = replay_corpus(corpus_name)
    vecs, cosines = [], []
    for s in snaps:
        try:
            side = parse_side(f"{spec.key}+{adapter.name}@{s.step}")
        except SideError as e:
            raise ReplayUnavailable(str(e)) from None
        if side.folder is None or side.folder.resolve() != adapter:
            raise ReplayUnavailable(f"{adapter.name} names another adapter folder among the allowed ones")
        # waited for: a command (replay-cache), not a request that may come back later
        vecs.append(lab.corpus_vectors(side, side, corpus, wait=True)[0])
        cosines.append(anisotropy_cosines(lab, side, side, wait=True)["a"])
    t0 = time.perf_counter()
    xy = aligned_layouts(vecs)
    params = {"version": REPLAY_VERSION, "layout": LAYOUT.tag, "method": "umap.AlignedUMAP over the steps in order, "
              "text i related to text i at the next step", "model": spec.key, "adapter": adapter.name,
              "corpus": {"name": corpus.name, "texts": len(corpus), "sha256": corpus.sha256},
              "anisotropy_sample_sha256": _sample_sha(0), "steps": [s.step for s in snaps],
              "layout_seconds": round(time.perf_counter() - t0, 1)}
    path = replay_path(spec, snaps, corpus_name, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an older file of this model/corpus (an earlier adapter) is stale by construction: replace it
    for old in path.parent.glob(f"{spec.key}-{corpus_name}-*.npz"):
        if old != path:
            old.unlink()
    # float16: 3 significant digits are far finer than a map's pixels or a histogram's 0.02 bins
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, steps=np.array([s.step for s in snaps], dtype=np.int32), xy=xy.astype(np.float16),
                            cosines=np.stack(cosines).astype(np.float16), params=json.dumps(params))
    return path


@dataclass(frozen=True)
class Replay:
    """One adapter's replay of one corpus, ready to draw: S steps of N texts."""

    steps: tuple[int, ...]  # (S,) training steps, ascending; 0 = the base model
    xy: np.ndarray  # (S, N, 2) float32 map layouts
    cosines: np.ndarray  # (S, P) float32 random-pair cosines of the anisotropy sample
    corpus: Corpus
    loss_curve: tuple[tuple[int, float], ...]  # (step, training loss) of every step
    dev: tuple[tuple[int, float], ...]  # (step, STSBenchmark dev) of every evaluated step
    params: dict
    bounds: tuple[float, float, float, float]  # x0, x1, y0, y1 over all steps: the map's axes stay put while scrubbing
    # step index -> its (note, figures), built on first view: a step change then costs a lookup (plotly's figure
    # building is ~100 ms of a 2-core machine's time). At most S entries per replay, and replays are an LRU.
    views: dict = field(default_factory=dict, compare=False, repr=False)


@memo_by_signature(maxsize=8)
def _read(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {"steps": z["steps"], "xy": z["xy"].astype(np.float32), "cosines": z["cosines"].astype(np.float32),
                "params": json.loads(str(z["params"]))}


def load_replay(spec: ModelSpec, adapter: Path, corpus_name: str, root: Path | None = None) -> Replay:
    """The precomputed replay of ``adapter`` (a validated folder) for a built-in corpus; ReplayUnavailable
    when the adapter has no snapshots or nothing was precomputed for exactly these weights and texts.

    The same object while its files are unchanged (training.json and the replay file by size and mtime;
    the weights by sha256 through the file name), so its drawn steps are kept.
    """
    rec_sig = signature(Path(adapter) / RECORD_FILE)
    if rec_sig is None:
        raise ReplayUnavailable(f"adapter {Path(adapter).name} has no training snapshots to replay (it has no "
                                "training record; snapshots come from train.py --snapshot-steps)") from None
    snaps = snapshots(adapter)
    path = replay_path(spec, snaps, corpus_name, root) if len(snaps) >= 2 else None
    sig = signature(path) if path is not None else None
    return _load(spec.key, str(adapter), corpus_name, str(path), sig, rec_sig)


@functools.lru_cache(maxsize=8)
def _load(model: str, adapter_s: str, corpus_name: str, path_s: str, sig: tuple | None,
          rec_sig: tuple) -> Replay:
    """load_replay's work, once per version of the files (``sig``, ``rec_sig``: their sizes and mtimes)."""
    adapter = Path(adapter_s)
    snaps = snapshots(adapter)
    if len(snaps) < 2:
        raise ReplayUnavailable(f"adapter {adapter.name} has no training snapshots to replay (they come from "
                                "train.py --snapshot-steps)")
    path = Path(path_s)
    try:
        data = _read(path)
    except (OSError, ValueError, KeyError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise ReplayUnavailable(f"no replay of {adapter.name} on {corpus_name} is precomputed here (the host "
                                    f"runs: python -m embedlab replay-cache --model {model})") from None
        raise ReplayUnavailable(f"the replay file of {adapter.name} on {corpus_name} is unreadable; precompute it "
                                "again (python -m embedlab replay-cache)") from None
    corpus = replay_corpus(corpus_name)
    steps = tuple(int(s) for s in data["steps"])
    xy = data["xy"]
    if steps != tuple(s.step for s in snaps) or xy.shape != (len(steps), len(corpus), 2):
        raise ReplayUnavailable(f"the replay file of {adapter.name} on {corpus_name} does not match its snapshots; "
                                "precompute it again (python -m embedlab replay-cache)")
    record = TrainingRecord.read(adapter)
    lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
    pad = (hi - lo) * 0.04
    return Replay(steps, xy, data["cosines"], corpus, record.loss_curve, record.dev_curve, data["params"],
                  (float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])))


# --- figures for one step ------------------------------------------------------------------------------
def curves_figure(r: Replay, i: int) -> go.Figure:
    """Training loss and STSBenchmark dev over the steps, with step ``r.steps[i]`` marked on both."""
    step = r.steps[i]
    fig = plots.loss_curve({"training loss": r.loss_curve}) if r.loss_curve else go.Figure()
    if r.dev:
        ds, dv = zip(*r.dev)
        # green: the loss is the palette's blue, and two blues on two axes read as one curve
        fig.add_trace(go.Scatter(x=ds, y=dv, mode="lines+markers", name="STSBenchmark dev", yaxis="y2",
                                 line=dict(color=plots.PALETTE[2]), marker=dict(size=7)))
        here = dict(r.dev).get(step)
        if here is not None:
            fig.add_trace(go.Scatter(x=[step], y=[here], mode="markers", name=f"step {step}: dev {here:.1f}",
                                     yaxis="y2", marker=dict(size=15, color=plots.GOLD_C, line=dict(width=2, color="#111827"))))
    fig.add_vline(x=step, line=dict(color=plots.GOLD_C, width=2, dash="dash"))
    fig.update_layout(title=f"Step {step} on the training curves", xaxis_title="step",
                      yaxis=dict(title=dict(text="loss (InfoNCE)", font=dict(color=plots.PALETTE[0]))),
                      yaxis2=dict(title=dict(text="STS-B dev (ρ ×100)", font=dict(color=plots.PALETTE[2])),
                                  overlaying="y", side="right", showgrid=False),
                      legend=dict(orientation="h", y=-0.25), height=360, margin=dict(l=50, r=50, t=50, b=40))
    return fig


def anisotropy_figure(r: Replay, i: int) -> go.Figure:
    """Random-pair cosines at step ``r.steps[i]`` over the base model's (step 0)."""
    step = r.steps[i]
    c0, ci = r.cosines[0].astype(np.float32), r.cosines[i].astype(np.float32)
    fig = plots.cosine_histogram({"base (step 0)": c0, **({f"step {step}": ci} if i else {})},
                                 f"Random-pair cosines at step {step}")
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return fig


def map_figure(r: Replay, i: int) -> go.Figure:
    """The corpus's map of the base model beside its map at step ``r.steps[i]`` (axes fixed over all steps)."""
    step = r.steps[i]
    fig = plots.twin_maps(r.xy[0], r.xy[i], r.corpus.texts, r.corpus.labels,
                          ("base (step 0)", f"step {step}" + (" (final)" if i == len(r.steps) - 1 else "")))
    x0, x1, y0, y1 = r.bounds
    fig.update_xaxes(range=[x0, x1])
    fig.update_yaxes(range=[y0, y1])
    return fig


def step_note(r: Replay, i: int) -> str:
    step = r.steps[i]
    loss = dict(r.loss_curve).get(step)
    dev = dict(r.dev).get(step)
    what = "the base model (LoRA's B starts at zero)" if step == 0 else f"after {step} of {r.steps[-1]} training steps"
    return (f"**Step {step}**: {what}. "
            + (f"Training loss {loss:.3f}; " if loss is not None else "")
            + (f"STSBenchmark dev **{dev:.1f}**; " if dev is not None else "")
            + f"mean cosine of random pairs **{r.cosines[i].mean():.2f}** (base {r.cosines[0].mean():.2f}). "
            f"{len(r.corpus):,} texts of *{r.corpus.name}*, each step's map aligned to the step before.")


def step_view(r: Replay, i: int) -> tuple[str, go.Figure, go.Figure, go.Figure]:
    """(note, curves, anisotropy histogram, maps) for snapshot index ``i`` of the replay (kept once drawn;
    the figures are only read afterwards)."""
    if i not in r.views:
        r.views[i] = (step_note(r, i), curves_figure(r, i), anisotropy_figure(r, i), map_figure(r, i))
    return r.views[i]


# --- shipping a retrained run's snapshots with an adapter ------------------------------------------------
def max_abs_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two adapters' tensors (same keys required, else AdapterError)."""
    from safetensors.torch import load_file

    for folder in (a, b):
        if not (folder / "adapter_model.safetensors").is_file():
            raise AdapterError(f"{folder} has no adapter_model.safetensors")
    wa = load_file(str(a / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter_model.safetensors"))
    if wa.keys() != wb.keys():
        raise AdapterError(f"{a.name} and {b.name} hold different tensors ({len(wa)} vs {len(wb)} keys)")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def adopt_snapshots(run: Path, shipped: Path, keep: Sequence[int], tolerance: float = 0.0) -> dict:
    """Give ``shipped`` the snapshots of ``run``, a retraining with the same settings, without touching its weights.

    Refused (AdapterError, with the number) unless the run's final adapter equals the shipped one within
    ``tolerance`` (max abs difference). Copies ``snapshots/step-N`` for N in ``keep`` (the weights that
    ship), and writes into the shipped training.json ``snapshots`` (step 0 = base, the kept steps, the
    final = ".") and ``learning_curve`` (every step the run evaluated, shipped or not). Returns what it wrote.
    """
    run, shipped = Path(run), Path(shipped)
    diff = max_abs_difference(run, shipped)
    if diff > tolerance:
        raise AdapterError(f"the run's final adapter differs from the shipped one (max abs difference {diff:.3g} > "
                           f"{tolerance:g}): not the same training")
    rec_run, rec = TrainingRecord.read(run), dict(TrainingRecord.read(shipped).raw)  # written back with fields added
    by_step = {s.step: s for s in rec_run.snapshots}  # validated; the entries themselves are copied as recorded
    entries = rec_run.raw.get("snapshots") or []
    final = max(by_step)
    missing = [s for s in keep if s not in by_step or s in (0, final)]
    if missing:
        raise AdapterError(f"steps {missing} are not intermediate snapshots of the run (it has {sorted(by_step)})")
    kept = {0, final, *keep}
    dst_root = shipped / SNAPSHOTS_DIR
    shutil.rmtree(dst_root, ignore_errors=True)
    out = []
    for e in entries:
        if e["step"] not in kept:
            continue
        if e["step"] not in (0, final):
            shutil.copytree(run / e["path"], shipped / e["path"])
        out.append({**e, "path": "." if e["step"] == final else e["path"]})
    rec["snapshots"] = out
    rec["learning_curve"] = [{k: e[k] for k in ("step", "loss", "dev", "random_pair_cosine")} for e in entries]
    rec["snapshot_run"] = {"command": rec_run.command, "device": rec_run.device,
                           "wall_seconds": rec_run.stat("wall_seconds"),
                           "final_adapter_max_abs_difference": diff,
                           "note": "snapshots come from this retraining with the same settings; its final adapter "
                                   "equals the shipped one (max abs difference above). learning_curve lists every "
                                   "evaluated step; snapshots only those whose weights ship (step 0 = the base model)."}
    write_training_record(shipped, rec)
    return {"max_abs_difference": diff, "snapshots": [e["step"] for e in out],
            "learning_curve": [e["step"] for e in entries]}
