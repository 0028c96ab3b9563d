"""Start-up work: the default sides made ready in the background (models, the built-in corpora's vectors,
maps and indexes), and the same work exported as the shipped seed cache (``python -m embedlab build-cache``)."""
from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path
from typing import Callable, Sequence

from .compute import trim_heap
from .corpora import builtin
from .files import swap_folder
from .features.maps import map_key, save_map, twin_map
from .features.pairs import anisotropy_corpus, anisotropy_cosines
from .lab import MAP_MAX, SEED_DIR, Lab
from .side import Side, default_sides, seeded_sides

log = logging.getLogger(__name__)
WARM_CORPORA = ("topics", "snli", "stsb")


def prepare(lab: Lab, sides: tuple[Side, Side] | None = None, corpora: Sequence[str] = WARM_CORPORA) -> tuple[Side, Side]:
    """Make the default sides (or ``sides``) ready: models, the built-in corpora's vectors, maps and indexes."""
    a, b = sides or default_sides()
    lab.resident.update((a.model, b.model))  # the default sides' models are never evicted
    lab.status["model"] = f"loading {a.spec} and {b.spec}…"
    with lab.hold(a, b) as readies:  # nor their adapters let go when idle (Lab.release_idle)
        lab.resident_adapters.update((r.side.model, r.adapter) for r in readies if r.adapter is not None)
    lab.status["model"] = "ready"
    lab.status["anisotropy"] = "embedding"
    with lab.hold(a, b) as readies:  # computed here, waiting: a request's path gives up after JOB_WAIT_S
        for r in readies:
            lab.corpus(r, anisotropy_corpus(), wait=True)
    anisotropy_cosines(lab, a, b)
    lab.status["anisotropy"] = "ready"
    for name in corpora:
        c = builtin(name)

        def prog(done: int, total: int, name: str = name) -> None:
            lab.status[name] = f"embedding {done:,}/{total:,}"

        with lab.hold(a, b) as readies:
            for r in readies:
                lab.corpus(r, c, progress=prog, wait=True)
            lab.status[name] = "building map…"
            twin_map(lab, a, b, c)
            for r in readies:
                lab.index(r, c)
        lab.status[name] = "ready"
    return a, b


def warm(lab: Lab, sides: tuple[Side, Side] | None = None, corpora: Sequence[str] = WARM_CORPORA,
         then: Sequence[tuple[str, Callable[[], None]]] = ()) -> None:
    """:func:`prepare` in a background thread, then each ``(what, job)`` of ``then`` (work no visitor waits for
    yet), shown on the status line while it runs. A failing :func:`prepare` is reported on the status line; a
    failing later job is logged and leaves the line (the app works without it, only slower). Never raises."""
    try:
        prepare(lab, sides, corpora)
    except Exception as e:  # background thread: report, never crash the app
        log.exception("warm-up failed")
        lab.status["error"] = f"warm-up failed: {e}"
    for what, job in then:
        lab.status[what] = "preparing…"
        try:
            job()
        except Exception:  # later jobs still run; the app works without this one (only slower)
            log.exception("warm-up: %s failed", what)
            lab.status.pop(what, None)
        else:
            lab.status[what] = "ready"
    gc.collect()  # what the warm-up made and dropped goes back to the system now, not at the next periodic trim
    trim_heap()


def export_seeds(lab: Lab, pairs: Sequence[tuple[tuple[Side, Side], Sequence[str]]] | None = None,
                 out: Path = SEED_DIR) -> list[Path]:
    """Write what :func:`prepare` builds for each pair of sides and its corpora (default: :func:`seeded_sides`,
    from the registry) to ``out``: vectors (the anisotropy sample's and the corpora's, in cache.quantize's
    8-bit form) and maps, replacing what was there.

    Run by ``python -m embedlab build-cache`` after an adapter changes; returns the files written.
    Everything is written to a sibling folder first and swapped in at the end: ``out`` may be
    this lab's own seed folder, which the export reads from while it runs.
    """
    from .evaluation import anisotropy_texts

    out = Path(out)
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    for sides, corpora in pairs if pairs is not None else seeded_sides():
        a, b = prepare(lab, sides, corpora)
        with lab.hold(a, b) as (ra, rb):
            for t in [anisotropy_texts(0)] + [builtin(n).texts for n in corpora]:
                for r in ([ra, rb] if ra.key("") != rb.key("") else [ra]):
                    lab.embeddings.export(r.enc, t, r.adapter, tmp / "embeddings")
            for name in corpora:
                c = builtin(name).sample(MAP_MAX)
                save_map(tmp / "maps" / f"{map_key(ra, rb, c)}.npz", twin_map(lab, a, b, builtin(name)))
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("embeddings", "maps"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)  # a pair list without corpora still replaces the old maps
        swap_folder(tmp / sub, out / sub)
    shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p for p in out.rglob("*") if p.is_file())
