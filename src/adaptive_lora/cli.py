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
    lines.append(
        "per layer:  "
        + "  ".join(
            f"L{layer}: r{v['rank']}/{v['params']:,}"
            for layer, v in allocation.sums_by("layer").items()
        )
    )
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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
