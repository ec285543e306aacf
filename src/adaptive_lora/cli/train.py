"""`adaptive-lora train`: one run (strategy × budget × seed) into a run folder."""

from __future__ import annotations

import argparse

from adaptive_lora.cli.common import _strategy_params, stopping_on_signals
from adaptive_lora.config import RunConfig, load_yaml, merge_overrides
from adaptive_lora.evaluation_metrics import METRICS
from adaptive_lora.run import execute_run

# How the summary names a task metric; the others go by their registry name.
_SHOWN = {"rouge_l": "ROUGE-L", "exact_match": "exact match"}
# `train` flags that are shorthands for config keys (every key is also reachable with --set).
_TRAIN_SHORTHANDS = {
    "model": "model",
    "seed": "seed",
    "data": "data.source",
    "n_train": "data.n_train",
    "max_length": "data.max_length",
    "strategy": "allocation.strategy",
    "budget": "allocation.budget",
    "target": "allocation.target",
    "lr": "train.lr",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "precision": "train.precision",
}


def run_config_from_args(args: argparse.Namespace):
    """Defaults ← --config FILE ← shorthand flags ← --set overrides ← --param."""

    base = load_yaml(args.config) if args.config else {}
    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, key in _TRAIN_SHORTHANDS.items()
        if getattr(args, flag) is not None
    ]
    overrides += list(args.set)
    merged = merge_overrides(base, overrides)
    if args.param:
        merged.setdefault("allocation", {}).setdefault("params", {}).update(
            _strategy_params(args.param)
        )
    return RunConfig.from_dict(merged)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    config = run_config_from_args(args)
    with stopping_on_signals():  # SIGTERM, SIGINT: the run folder's manifest says "stopped"
        result = execute_run(config, Path(args.out), quiet=args.quiet)
    m = result.metrics
    print(f"run {result.run_id}: {result.status}  folder {result.run_dir}")
    if result.status != "done":
        print(f"reason: {result.error}")
        return 1
    print(
        f"test loss {m['test_loss_before']:.4f} -> {m['test_loss']:.4f}  "
        f"val loss {m['val_loss_before']:.4f} -> {m['val_loss']:.4f}  " + _scores(m)
    )
    print(
        f"trainable {m['trainable_params']:,} (budget {m['budget_params']:,}, "
        f"{m['deviation_pct']:+.3f}%)  train {m['train_seconds']:.0f}s  "
        f"{m['tokens_per_second']:.0f} tok/s  peak {m['peak_memory_mb']:.0f} MB"
    )
    return 0


def _scores(m: dict) -> str:
    """ROUGE-L (every run records it; nan where not scored), then each other metric of the
    registry the run scored, so a newly registered metric shows here too."""
    rouge = m.get("rouge_l")
    parts = [f"ROUGE-L {rouge if rouge is not None else float('nan'):.3f}"]
    parts += [
        f"{_SHOWN.get(name, name)} {m[name]:.3f}"
        for name in METRICS
        if name != "rouge_l" and m.get(name) is not None
    ]
    return "  ".join(parts)


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train and evaluate one run (strategy × budget × seed) into a run folder",
        description="Every config key can be set with --set section.key=value "
        "(e.g. --set train.warmup_ratio=0.05); see `adaptive_lora/config.py` for the keys.",
    )
    train.add_argument("--out", default="runs", help="folder that receives the run folder")
    train.add_argument(
        "--config", help="a run config YAML (the config.yaml of an earlier run works)"
    )
    train.add_argument("--model", help="preset, hub id, folder or .gguf (default smollm2-135m)")
    train.add_argument("--data", help="builtin, an Alpaca JSON/JSONL file or a hub data set id")
    train.add_argument("--strategy", help="rank-allocation strategy (default uniform)")
    train.add_argument("--budget", help="rN, qv:rN or a parameter count (default r8)")
    train.add_argument("--target", help="modules to adapt: all, attention, mlp or kinds")
    train.add_argument("--seed", type=int, help="run seed (data order, adapter init)")
    train.add_argument("--n-train", type=int, dest="n_train", help="training examples")
    train.add_argument("--max-length", type=int, dest="max_length", help="tokens per example")
    train.add_argument("--lr", type=float)
    train.add_argument("--epochs", type=float)
    train.add_argument("--max-steps", type=int, dest="max_steps")
    train.add_argument("--batch-size", type=int, dest="batch_size")
    train.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    train.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy parameter (repeatable)",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set eval.n_generate=32 (repeatable)",
    )
    train.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    train.set_defaults(func=cmd_train)
