"""The `adaptive-lora` command.

Every subcommand reads top to bottom: parse → load → compute → print. Mistakes
a user can fix (`UserError`) end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from adaptive_lora.errors import UserError


def _strategy_params(pairs: Sequence[str]) -> dict:
    """`--param ratio=4 --param reverse=true` → {"ratio": 4, "reverse": True}."""
    from adaptive_lora.config import parse_override

    params = {}
    for text in pairs:
        path, value = parse_override(text)
        params[".".join(path)] = value
    return params


def format_allocation_table(allocation) -> str:
    """The human-readable answer of `allocate`: modules, total vs budget, sums."""
    rows = allocation.rows()
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'module':<{width}}  layer  kind  rank     params"]
    lines += [
        f"{r['name']:<{width}}  {r['layer']:>5}  {r['kind']:<4}  {r['rank']:>4}  {r['params']:>9,}"
        for r in rows
    ]
    lines.append("")
    lines.append(
        f"strategy {allocation.strategy}  budget {allocation.budget.label} = "
        f"{allocation.budget.params:,} params  total {allocation.total_params:,}  "
        f"deviation {allocation.deviation_pct:+.3f}%"
    )
    per_layer = [
        f"L{layer}: r{v['rank']}/{v['params']:,}"
        for layer, v in allocation.sums_by("layer").items()
    ]
    for start in range(0, len(per_layer), 6):  # six layers a line stays readable
        label = "per layer:" if start == 0 else ""
        lines.append(f"{label:<11} " + "  ".join(per_layer[start : start + 6]))
    lines.append(
        "per kind:   "
        + "  ".join(
            f"{kind}: r{v['rank']}/{v['params']:,}"
            for kind, v in allocation.sums_by("kind").items()
        )
    )
    return "\n".join(lines)


def cmd_allocate(args: argparse.Namespace) -> int:
    from adaptive_lora.pipeline import allocation_for

    allocation = allocation_for(
        model_spec=args.model,
        strategy=args.strategy,
        budget=args.budget,
        params=_strategy_params(args.param),
        target=args.target,
        min_rank=args.min_rank,
        max_rank=args.max_rank,
        seed=args.seed,
        data=args.data,
    )
    if args.plot:
        from adaptive_lora.plots import rank_heatmap

        rank_heatmap(
            allocation.inventory,
            allocation.ranks,
            args.plot,
            title=f"{allocation.strategy} @ {allocation.budget.label} ({args.model})",
        )
    if args.json:
        print(json.dumps(allocation.to_dict(), indent=2))
    else:
        print(format_allocation_table(allocation))
        if args.plot:
            print(f"heatmap: {args.plot}")
    return 0


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
    from adaptive_lora.config import RunConfig, load_yaml, merge_overrides

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

    from adaptive_lora.train import execute_run

    config = run_config_from_args(args)
    result = execute_run(config, Path(args.out), quiet=args.quiet)
    m = result.metrics
    print(f"run {result.run_id}: {result.status}  folder {result.run_dir}")
    if result.status != "done":
        print(f"reason: {result.error}")
        return 1
    print(
        f"test loss {m['test_loss_before']:.4f} -> {m['test_loss']:.4f}  "
        f"val loss {m['val_loss_before']:.4f} -> {m['val_loss']:.4f}  "
        f"ROUGE-L {m['rouge_l'] if m['rouge_l'] is not None else float('nan'):.3f}"
        + (f"  exact match {m['exact_match']:.3f}" if m.get("exact_match") is not None else "")
    )
    print(
        f"trainable {m['trainable_params']:,} (budget {m['budget_params']:,}, "
        f"{m['deviation_pct']:+.3f}%)  train {m['train_seconds']:.0f}s  "
        f"{m['tokens_per_second']:.0f} tok/s  peak {m['peak_memory_mb']:.0f} MB"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from adaptive_lora.allocation import STRATEGIES

    parser = argparse.ArgumentParser(
        prog="adaptive-lora",
        description="Budget-matched LoRA rank allocation: allocate, train, run studies, report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    alloc = sub.add_parser(
        "allocate",
        help="print a strategy's rank allocation for a model and budget",
        description="Strategies: "
        + "; ".join(f"{s.name}: {s.summary}" for s in STRATEGIES.values()),
    )
    alloc.add_argument("--model", default="smollm2-135m", help="preset, hub id, folder or .gguf")
    alloc.add_argument("--strategy", default="uniform", help=f"one of {', '.join(STRATEGIES)}")
    alloc.add_argument("--budget", default="r8", help="rN or a parameter count (e.g. 1.2M)")
    alloc.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy parameter, e.g. --param ratio=4 (repeatable)",
    )
    alloc.add_argument(
        "--target", default="all", help="all, attention, mlp or a comma list of kinds"
    )
    alloc.add_argument("--min-rank", type=int, default=1)
    alloc.add_argument("--max-rank", type=int, default=None)
    alloc.add_argument("--seed", type=int, default=0, help="seed for randomised strategies")
    alloc.add_argument(
        "--data", default="builtin", help="calibration data for data-driven strategies"
    )
    alloc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    alloc.add_argument("--plot", metavar="FILE.png", help="also draw a layer × kind heatmap")
    alloc.set_defaults(func=cmd_allocate)

    train = sub.add_parser(
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
    train.add_argument("--budget", help="rN or a parameter count (default r8)")
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

    from adaptive_lora.study_cli import register_cli as register_study_commands

    register_study_commands(sub)  # run, status, report, note

    from adaptive_lora.importance import register_cli as register_importance_command

    register_importance_command(sub)  # importance

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a UserError becomes one line on stderr and exit status 2."""
    try:
        return args.func(args)
    except UserError as error:
        print(f"adaptive-lora: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adaptive-lora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
