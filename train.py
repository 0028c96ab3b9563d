"""Contrastive fine-tuning of a small LM into a sentence encoder, with a LoRA adapter.

Reproduces arXiv 2408.00690: InfoNCE over (premise, entailment, contradiction) triplets with in-batch
and hard negatives, on the EOS-pooled embedding embedlab's encoder uses. The loop is embedlab.training
(the app's live training runs the same one); this file is its command line.

    python train.py --model smollm2-135m --steps 400 --batch-size 128 --lr 3e-4 --out runs/smol
    python train.py --config my.json --resume                     # continue a killed run
    python train.py --config run/training.json --out again        # a run again, from its training record
    python train.py ... --snapshot-steps 0,10,25,50,100,200       # + the adapter after those steps (replay)
    python train.py ... --precision fp32                          # auto (default): bf16 where the device has it
    accelerate launch --num_processes 4 train.py ...              # 4x the in-batch negatives

The contrastive batch can be decoupled from memory by a gradient cache (--chunk-size
sentences with activations held at once), so --batch-size 1024 runs on a small GPU or the CPU.
The adapter is saved in the standard PEFT form with a Hub model card (README.md), next to
training.json (the settings, the command, device, precision, loss curve and scores).
With --snapshot-steps, the adapter after each listed step is saved too (``<out>/snapshots/step-<N>/``,
float16) and evaluated like the final one.
"""
import argparse
import dataclasses  # noqa: F401  (tests list Config's fields through train.dataclasses)
import json
import math
import sys
import typing
from pathlib import Path

from transformers import HfArgumentParser

from embedlab.adapters import AdapterError
from embedlab.loading import ModelUnavailableError, load_encoder
from embedlab.nli import DataError, read_triplets
from embedlab.registry import UnknownModelError
from embedlab.training import (Config, ConfigError, LossNotFinite, SetupError, check_config,
                               command_line, field_types, train)

__all__ = ["Config", "cli", "command_line", "main", "parse_config"]


def _accepts(kind, value) -> bool:
    """Whether a JSON value has the Config type ``kind`` (a bool is no number; a float is finite)."""
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    if kind == list[str]:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _type_name(kind) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(typing.get_args(kind))
    return "list[str]" if kind == list[str] else kind.__name__


def _read_config_file(path: str, ap: argparse.ArgumentParser) -> dict:
    """A JSON object of Config fields, each of its declared type; anything else ends in ap.error (exit 2).
    ``bf16`` (deprecated) is read as precision auto (true) or fp32 (false)."""
    try:
        base = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        ap.error(f"cannot read {path}: {e.strerror}")
    except (ValueError, UnicodeDecodeError) as e:
        ap.error(f"{path} is not a JSON file ({str(e)[:120]})")
    if not isinstance(base, dict):
        ap.error(f"{path} must hold a JSON object of settings, not {type(base).__name__}")
    if isinstance(base.get("config"), dict) and "command" in base:
        base = _settings_of_record(base, Path(path), ap)
    types = {**field_types(), "bf16": bool}
    if unknown := set(base) - set(types):
        ap.error(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for name, value in base.items():
        if not _accepts(types[name], value):
            ap.error(f"{path}: {name} must be {_type_name(types[name])}, got {json.dumps(value)[:60]}")
    if "bf16" in base:
        bf16 = base.pop("bf16")
        base.setdefault("precision", "auto" if bf16 else "fp32")
    return base


def _settings_of_record(record: dict, path: Path, ap: argparse.ArgumentParser) -> dict:
    """The settings of a training record (training.json, e.g. a live run's download) to train it again.

    A record may come from anyone, so it decides neither where to write (its ``out`` is dropped: --out, else
    the default) nor which file is read beyond what it names: a relative data path is the file next to the
    record if there is one (the download holds data.csv), else the one the command line named, relative to
    here. The file's sha256 and row count must be the record's: training on other data is not the run again."""
    base = {k: v for k, v in record["config"].items() if k not in ("resume", "out")}
    data = base.get("data")
    if isinstance(data, str) and not Path(data).is_absolute() and ".." not in Path(data).parts \
            and (path.parent / data).is_file():
        base["data"] = str(path.parent / data)
    want = record.get("data") if isinstance(record.get("data"), dict) else {}
    if isinstance(base.get("data"), str) and want.get("sha256"):
        try:
            mr = base.get("max_rows")
            got = read_triplets(base["data"], mr if isinstance(mr, int) and mr > 0 else None)
        except (DataError, OSError) as e:
            ap.error(f"{path}: its training data: {str(e)[:200]}")
        if got.sha256 != want["sha256"] or ("rows" in want and len(got) != want["rows"]):
            ap.error(f"{path}: {base['data']} is not the data this run trained on (sha256 {got.sha256[:12]}…, "
                     f"{len(got)} rows; the record names {str(want['sha256'])[:12]}…, {want.get('rows')} rows)")
    return base


def parse_config(argv: list[str] | None = None) -> Config:
    """Flags generated from the Config dataclass (HfArgumentParser), optionally on top of a JSON file (--config)."""
    ap = HfArgumentParser(Config, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON file with any Config fields; flags override it")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="deprecated: --bf16 = --precision auto, --no-bf16 = --precision fp32")
    pre, _ = ap.parse_known_args(argv)
    if pre.config:
        ap.set_defaults(**_read_config_file(pre.config, ap))  # flags given on the command line still win
    args = vars(ap.parse_args(argv))
    args.pop("config")
    if (bf16 := args.pop("bf16")) is not None and not any(
            a.startswith("--precision") for a in (sys.argv[1:] if argv is None else argv)):
        args["precision"] = "auto" if bf16 else "fp32"
    cfg = Config(**args)
    try:
        check_config(cfg)
    except ConfigError as e:
        ap.error(str(e))
    return cfg


def main(cfg: Config, load=load_encoder) -> int:
    """Train, save, evaluate (embedlab.training.train with a progress bar). Returns the exit code:
    0, or 3 when the loss became NaN or infinite (the last checkpoint stays for --resume)."""
    try:
        train(cfg, load=load, progress=True)
    except LossNotFinite as e:
        print(f"error: {e}")
        return 3
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``python train.py ...``: bad data, model or adapter settings end in one line on stderr and exit 2."""
    cfg = parse_config(argv)
    try:
        return main(cfg)
    except (DataError, UnknownModelError, ModelUnavailableError, SetupError, AdapterError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
