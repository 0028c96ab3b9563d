"""Command line: ``python -m embedlab eval|models|report|build-data|build-cache|convert-adapter|model-card|replay-cache|adopt-snapshots|export``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import ROOT
from .adapters import AdapterError, TrainingRecord
from .nli import BUILT_IN
from .registry import DEFAULT_MODEL, MODELS, PAPER_RESULTS, UnknownModelError
from .sources import available_models
from .sts import EXTRA_TASKS, SICK_SPLITS, TASKS


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import run_eval
    from .loading import ModelUnavailableError, load_encoder

    unknown = [t for t in args.tasks if t not in TASKS + EXTRA_TASKS]
    if unknown:
        print(f"error: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS + EXTRA_TASKS)}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 2:
        print("error: --limit must be at least 2 pairs", file=sys.stderr)
        return 2
    try:
        enc = load_encoder(args.model, adapter=args.adapter, device=args.device)
    except (UnknownModelError, ModelUnavailableError, AdapterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    adapter = next(iter(enc.adapters)) if args.adapter and not args.base else None  # the loaded adapter's name
    record = run_eval(enc, args.tasks, adapter=adapter, limit=args.limit, sick=args.sick, progress=True)
    if adapter is not None:  # where the adapter was trained, from its training record
        trained = TrainingRecord.read(enc.adapters[adapter].path)
        if trained.trained_on:
            record.update(trained_on=trained.trained_on, trained_device=trained.device)
    print(format_table(record))
    if args.json:
        from .files import write_json

        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


def format_table(record: dict) -> str:
    """The eval record as a fixed-width table, with the paper's range for context."""
    lines = [f"{record['model']}" + (f" + {record['adapter']}" if record.get("adapter") else "")]
    lines.append(f"{'task':<18}{'pairs':>7}{'Spearman':>10}")
    for name, score in record["tasks"].items():
        lines.append(f"{name:<18}{record['pairs'][name]:>7}{score:>10.2f}")
    lines.append(f"{'average':<18}{'':>7}{record['average']:>10.2f}")
    lines.append(f"({record['seconds']:.1f} s on {record['environment']['device']})")
    return "\n".join(lines)


def _models(_: argparse.Namespace) -> int:
    for key, (ok, why) in available_models().items():
        spec = MODELS[key]
        print(f"{key:<14} {'ok ' if ok else 'no '} {spec.title}" + (f"  -- {why}" if why else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import markdown_table, results_frame, update_readme

    if args.readme:
        changed = update_readme(args.readme)
        print(f"{args.readme}: results table {'updated' if changed else 'already current'}")
    else:
        print(markdown_table(results_frame()))
    from .report import adapters_frame

    print("\nshipped adapters (from their training.json):")
    print(markdown_table(adapters_frame()))
    return 0


def _build_data(args: argparse.Namespace) -> int:
    from .nli import build_multigenre_triplets, build_snli_triplets, write_multigenre, write_triplets
    from .files import write_json

    rows, counts = build_snli_triplets()
    sha = write_triplets(rows, args.out)
    meta = {"file": args.out.name, "rows": len(rows), "sha256": sha, **counts,
            "built_from": "SNLI 1.0 dev+test (SentEval format): every entailment x contradiction pair per premise, "
                          "minus triplets containing a sentence of any evaluation set (letters+digits comparison)",
            "licence": "SNLI 1.0: CC BY-SA 4.0"}
    write_json(args.out.with_suffix(".json"), meta)
    print(f"wrote {args.out}: {len(rows):,} triplets ({counts['dropped_overlap']} dropped for evaluation overlap), sha256 {sha}")
    if args.multigenre_out is None:
        return 0
    out = args.multigenre_out
    rows, per_source = build_multigenre_triplets()
    sha = write_multigenre(rows, out)
    meta = {"file": out.name, "rows": len(rows), "sha256_csv": sha, "columns": ["sent0", "sent1", "hard_neg", "source"],
            "sources": per_source,
            "built_from": "SNLI 1.0 dev+test triplets (as snli_all_triplets.csv), MultiNLI 1.0 dev matched and mismatched "
                          "(grouped by pairID minus its last letter; classes from the label column), counterfactually-"
                          "augmented SNLI train (grouped by premise text): every entailment x contradiction pair per "
                          "premise, minus triplets containing a sentence of any evaluation set (letters+digits "
                          "comparison), minus triplets whose positive and hard negative are the same, deduplicated "
                          "(letters+digits comparison; the first source keeps a triplet)",
            "licence": "SNLI 1.0 CC BY-SA 4.0; MultiNLI 1.0 OANC (free) and CC BY-SA 3.0 / CC BY 3.0 (fiction); "
                       "counterfactually-augmented SNLI Apache-2.0 (text from SNLI train, CC BY-SA 4.0)"}
    write_json(out.with_name(out.name.removesuffix(".xz").removesuffix(".csv") + ".json"), meta)
    print(f"wrote {out}: {len(rows):,} triplets, sha256 (uncompressed CSV) {sha}")
    print(f"{'source':<22}{'premises':>9}{'candidates':>11}{'overlap':>9}{'degenerate':>11}{'duplicate':>10}{'kept':>7}")
    for name, c in per_source.items():
        print(f"{name:<22}{c['premises']:>9,}{c['candidates']:>11,}{c['dropped_overlap']:>9,}{c['dropped_degenerate']:>11,}"
              f"{c['dropped_duplicate']:>10,}{c['kept']:>7,}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Embed a corpus file into a .npy, resumably: chunks land in the embedding cache as they finish.

    Under ``accelerate launch`` each process embeds a contiguous shard on its own device
    and process 0 joins the shards in order.
    """
    import time

    import numpy as np
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .cache import EmbeddingCache, corpus_sha256, embedding_key
    from .corpora import InputError, parse_corpus, read_upload
    from .loading import ModelUnavailableError, cache_root, load_encoder

    state = PartialState(cpu=args.device == "cpu")
    try:
        limit = args.max_mib * 2**20
        corpus = parse_corpus(read_upload(args.corpus, limit), args.corpus.name, max_texts=10**8, max_bytes=limit)
        enc = load_encoder(args.model, adapter=args.adapter, device=str(state.device))
    except (InputError, UnknownModelError, ModelUnavailableError, AdapterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    adapter = next(iter(enc.adapters)) if args.adapter and not args.base else None  # the loaded adapter's name
    with state.split_between_processes(list(corpus.texts)) as shard:
        cache = EmbeddingCache(cache_root() / "embeddings")
        corpus_sha = corpus_sha256(shard)
        start = cache.cached_rows(enc, shard, adapter, sha=corpus_sha)
        print(f"process {state.process_index}: {len(shard):,} of {len(corpus):,} distinct texts; "
              f"{start:,} already in the cache ({embedding_key(enc, adapter, corpus_sha)})", flush=True)
        bar = tqdm(total=len(shard), initial=start, unit="text", desc=f"embed {args.model} [{state.process_index}]",
                   smoothing=0.1, position=state.process_index)
        t0 = time.perf_counter()
        vecs = cache.get_or_compute(enc, shard, adapter, sha=corpus_sha,
                                    progress=lambda done, total: bar.update(max(0, done - bar.n)))
        bar.close()
        wall = time.perf_counter() - t0
        part = args.out.with_name(f"{args.out.stem}.part{state.process_index}.npy")
        part.parent.mkdir(parents=True, exist_ok=True)
        np.save(part, vecs)
        computed = len(shard) - start
        print(f"process {state.process_index}: computed {computed:,} texts in {wall:.1f} s = "
              f"{computed / wall if computed and wall > 0 else float('nan'):.1f} sentences/s on {enc.device}", flush=True)
    state.wait_for_everyone()
    if state.is_main_process:
        parts = [args.out.with_name(f"{args.out.stem}.part{i}.npy") for i in range(state.num_processes)]
        vecs = np.concatenate([np.load(p) for p in parts])
        np.save(args.out, vecs)
        args.out.with_suffix(".txt").write_text("\n".join(corpus.texts) + "\n", encoding="utf-8")
        for p in parts:
            p.unlink()
        print(f"wrote {args.out} ({vecs.shape[0]:,} x {vecs.shape[1]} float32) and {args.out.with_suffix('.txt')} "
              f"(the distinct texts, one per line, in row order)")
    return 0


def _build_cache(args: argparse.Namespace) -> int:
    from .lab import Lab
    from .precision import ENV
    from .warmup import export_seeds

    if os.environ[ENV] != "fp32":  # the keys hold no precision: what ships is fp32, as precision.CACHED_VECTORS_NOTE says
        print(f"build-cache writes the shipped fp32 vectors (precision {os.environ[ENV]} -> fp32)", file=sys.stderr)
        os.environ[ENV] = "fp32"
    files = export_seeds(Lab(device=args.device), out=args.out)  # the registry's seeded pairs (side.seeded_sides)
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files, {size / 2**20:.1f} MiB, under {args.out}")
    return 0


def _adapter_folders(args: argparse.Namespace):
    """(spec, folders): the adapters named, or every shipped adapter of --model."""
    from .adapters import shipped_adapters
    from .registry import get_spec

    spec = get_spec(args.model)
    return spec, [Path(a) for a in args.adapters] or shipped_adapters(spec.key)


def _convert_adapter(args: argparse.Namespace) -> int:
    """Rewrite adapters saved on the bare backbone into the standard causal-LM form, then write their cards."""
    import torch
    from transformers import AutoConfig, AutoModel

    from .adapters import convert_adapter
    from .loading import ModelUnavailableError, weights_dir
    from .modelcard import write_card

    try:
        spec, folders = _adapter_folders(args)
        # the backbone's class and config only (meta device: no weights read)
        config = AutoConfig.from_pretrained(weights_dir(spec), trust_remote_code=spec.trust_remote_code)
        with torch.device("meta"):
            backbone = AutoModel.from_config(config, trust_remote_code=spec.trust_remote_code)
        for folder in folders:
            changed = convert_adapter(folder, spec, backbone)
            card = write_card(folder, spec)
            print(f"{folder}: {'converted to the causal-LM form' if changed else 'already in the standard form'}; "
                  f"wrote {card.name}")
    except (UnknownModelError, ModelUnavailableError, AdapterError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _model_card(args: argparse.Namespace) -> int:
    from .modelcard import write_card

    try:
        spec, folders = _adapter_folders(args)
        for folder in folders:
            print(f"wrote {write_card(folder, spec)}")
    except (UnknownModelError, AdapterError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _replay_cache(args: argparse.Namespace) -> int:
    """Precompute the training replay (maps + anisotropy per snapshot step) of an adapter for the app's slider."""
    import time

    from .corpora import InputError
    from .lab import Lab
    from .loading import ModelUnavailableError
    from .precision import ENV
    from .replay import build_replay

    os.environ[ENV] = "fp32"  # shipped, like build-cache's vectors: fp32 whatever the host runs
    try:
        spec, folders = _adapter_folders(argparse.Namespace(model=args.model, adapters=[args.adapter] if args.adapter else []))
        lab = Lab(device=args.device)
        for folder in folders:
            for name in args.corpora:
                t0 = time.perf_counter()
                path = build_replay(lab, spec.key, folder, name)
                print(f"{folder.name} on {name}: wrote {path.name} ({path.stat().st_size / 1024:.0f} KiB) "
                      f"in {time.perf_counter() - t0:.0f} s")
    except (UnknownModelError, ModelUnavailableError, AdapterError, InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _export(args: argparse.Namespace) -> int:
    """A side as a sentence-transformers model folder (LoRA merged, tokenizer adding BOS/EOS, last-token pooling)."""
    from .export import ExportError, export_side
    from .loading import ModelUnavailableError
    from .side import SideError

    command = f"python -m embedlab export {args.side} {args.out}" + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
    try:
        r = export_side(args.side, args.out, dtype=args.dtype, force=args.force, device=args.device, command=command)
    except (SideError, ExportError, ModelUnavailableError, AdapterError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {r.path}: {r.side}, {r.dtype}, {r.bytes / 2**20:.1f} MiB in {r.seconds:.0f} s; cosine to the lab's "
          f"vectors >= {r.min_cosine:.6f} on the probe texts")
    if r.note:
        print(f"note: {r.note}")
    print(f'use: from sentence_transformers import SentenceTransformer; '
          f'SentenceTransformer("{r.path}").encode(["A man is playing a guitar."])')
    return 0


def _adopt_snapshots(args: argparse.Namespace) -> int:
    """Give a shipped adapter the snapshots of a retraining whose final adapter equals it."""
    from .modelcard import write_card
    from .registry import get_spec
    from .replay import adopt_snapshots

    try:
        keep = [int(x) for x in args.keep.split(",") if x.strip()]
        result = adopt_snapshots(args.run, args.adapter, keep, tolerance=args.tolerance)
        write_card(args.adapter, get_spec(args.model))
    except (ValueError, OSError) as e:  # AdapterError is a ValueError; also a bad --keep
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.adapter}: final adapters differ by at most {result['max_abs_difference']:g}; snapshots "
          f"{result['snapshots']} (learning curve {result['learning_curve']}); model card rewritten")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .precision import CHOICES, ENV, PrecisionError, requested

    p = argparse.ArgumentParser(prog="python -m embedlab", description=__doc__)
    p.add_argument("--precision", help=f"{'|'.join(CHOICES)}: what the forward passes run in (default: ${ENV} or "
                                       "auto = bf16 on a GPU or a CPU with native bf16, else fp32)")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="STS evaluation (Spearman x100 of cosine vs gold)")
    e.add_argument("--model", default=DEFAULT_MODEL, help=f"one of: {', '.join(MODELS)}")
    e.add_argument("--adapter", help="LoRA adapter folder (PEFT format, safetensors)")
    e.add_argument("--base", action="store_true", help="evaluate with the adapter switched off")
    e.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK", help=f"default: all 9 ({', '.join(TASKS)}); also {', '.join(EXTRA_TASKS)}")
    e.add_argument("--limit", type=int, help="seeded random subsample of N pairs per task (quick runs)")
    e.add_argument("--sick", choices=sorted(SICK_SPLITS), default="mteb", help="SICK-R pairs: MTEB's train+trial+test or SentEval's test")
    e.add_argument("--json", type=Path, help="write the result record here")
    e.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.set_defaults(fn=_eval)
    m = sub.add_parser("models", help="list registered models and whether they load here")
    m.set_defaults(fn=_models)
    r = sub.add_parser("report", help="results table (ours beside the paper's) from assets/results")
    r.add_argument("--readme", type=Path, help="rewrite the table between the results markers of this file")
    r.set_defaults(fn=_report)
    b = sub.add_parser("build-data", help="build the training triplet CSVs: SNLI-only (shipped) and multi-genre "
                                          "(SNLI + MultiNLI dev + counterfactual SNLI, with a source column)")
    b.add_argument("--out", type=Path, default=Path(BUILT_IN))
    b.add_argument("--multigenre-out", type=Path, default=ROOT / "assets/data/NLI/multigenre_triplets.csv",
                   help="the multi-genre CSV (.csv.xz: xz-compressed; train.py reads either)")
    b.add_argument("--no-multigenre", dest="multigenre_out", action="store_const", const=None,
                   help="build the SNLI-only CSV alone")
    b.set_defaults(fn=_build_data)
    em = sub.add_parser("embed", help="embed a .txt (one text per line) or .csv ('text' column) corpus into a .npy; "
                                      "resumable: rerun the same command after an interruption")
    em.add_argument("corpus", type=Path)
    em.add_argument("--model", default=DEFAULT_MODEL)
    em.add_argument("--adapter", help="LoRA adapter folder; its embeddings unless --base")
    em.add_argument("--base", action="store_true")
    em.add_argument("--out", type=Path, required=True, help="vectors .npy (the distinct texts go beside it as .txt)")
    em.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    em.add_argument("--max-mib", type=int, default=512, help="refuse larger corpus files (default 512)")
    em.set_defaults(fn=_embed)
    c = sub.add_parser("build-cache", help="precompute the built-in corpora's vectors and maps the app ships for the "
                                           "default pair and each model's registry seed_corpora (run after a shipped "
                                           "adapter changes)")
    c.add_argument("--out", type=Path, default=ROOT / "assets" / "cache")
    c.add_argument("--device", help="cpu, cuda ... (default: cpu)", default="cpu")
    c.set_defaults(fn=_build_cache)
    for name, fn, what in (("convert-adapter", _convert_adapter, "rewrite adapters saved on the bare backbone into "
                            "the standard PEFT causal-LM form (keys, Hub base id) and write their model cards"),
                           ("model-card", _model_card, "write each adapter's README.md model card from its training.json")):
        a = sub.add_parser(name, help=what)
        a.add_argument("adapters", nargs="*", help="adapter folders (default: every shipped adapter of --model)")
        a.add_argument("--model", default=DEFAULT_MODEL)
        a.set_defaults(fn=fn)
    rc = sub.add_parser("replay-cache", help="precompute an adapter's training replay (map per snapshot step, aligned "
                                             "step to step, and random-pair cosines) for the app's step slider")
    rc.add_argument("--model", default=DEFAULT_MODEL)
    rc.add_argument("--adapter", help="adapter folder with snapshots (default: every shipped adapter of --model)")
    rc.add_argument("--corpora", nargs="+", default=["topics", "snli"], choices=["topics", "snli"])
    rc.add_argument("--device", default="cpu", help="cpu, cuda ... (default: cpu)")
    rc.set_defaults(fn=_replay_cache)
    ad = sub.add_parser("adopt-snapshots", help="copy the snapshots of a retraining (same settings, same final "
                                                "adapter) into a shipped adapter, its weights untouched")
    ad.add_argument("run", type=Path, help="the retraining's output folder (train.py --snapshot-steps ...)")
    ad.add_argument("adapter", type=Path, help="the shipped adapter folder")
    ad.add_argument("--keep", required=True, help="intermediate steps whose weights ship, e.g. 25,50,100 "
                                                  "(every evaluated step stays in its learning_curve)")
    ad.add_argument("--tolerance", type=float, default=0.0, help="largest max abs difference accepted (default 0)")
    ad.add_argument("--model", default=DEFAULT_MODEL)
    ad.set_defaults(fn=_adopt_snapshots)
    x = sub.add_parser("export", help="write a side (model[+adapter][@step]) as a sentence-transformers model folder: "
                                      "LoRA merged, a tokenizer that adds BOS/EOS itself, last-token pooling, normalised")
    x.add_argument("side", help="e.g. gemma3-270m+nli-cft, smollm2-135m+nli-cft@50, or a base model gemma3-270m")
    x.add_argument("out", type=Path, help="the folder to write (must not exist, or be empty)")
    x.add_argument("--dtype", default="float32", choices=["float32", "bf16", "bfloat16"],
                   help="weights' precision (default float32: the lab's vectors to cosine >= 0.9999)")
    x.add_argument("--force", action="store_true", help="replace OUT when it holds an earlier export")
    x.add_argument("--device", default="cpu", help="where the lab's check vectors are computed (default cpu)")
    x.set_defaults(fn=_export)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        precision = requested(args.precision)
    except PrecisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ[ENV] = precision  # every loader and record of this command sees the same setting
    return args.fn(args)


__all__ = ["main", "format_table", "PAPER_RESULTS"]
