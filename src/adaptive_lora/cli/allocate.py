"""`adaptive-lora allocate`: how would a strategy spend the budget on a model?"""

from __future__ import annotations

import argparse
import json
import sys

from adaptive_lora.allocation.for_model import allocation_for
from adaptive_lora.allocation.heatmap import rank_heatmap
from adaptive_lora.cli.common import _strategy_params
from adaptive_lora.methods import STRATEGIES  # every strategy, methods included
from adaptive_lora.study.export import check_export, export_allocation


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

    if args.export:
        check_export(*args.export, args.strategy)  # bad format or path: fail first
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
    if args.export:
        lines = export_allocation(
            allocation, *args.export, model_spec=args.model, data=args.data, seed=args.seed
        )
        # stdout stays pure JSON under --json
        print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    return 0


def register(subparsers) -> None:
    alloc = subparsers.add_parser(
        "allocate",
        help="print a strategy's rank allocation for a model and budget",
        description="Strategies: "
        + "; ".join(f"{s.name}: {s.summary}" for s in STRATEGIES.values()),
    )
    alloc.add_argument("--model", default="smollm2-135m", help="preset, hub id, folder or .gguf")
    alloc.add_argument("--strategy", default="uniform", help=f"one of {', '.join(STRATEGIES)}")
    alloc.add_argument(
        "--budget",
        default="r8",
        help="rN, qv:rN (rank N on PEFT's default targets) or a parameter count (e.g. 1.2M)",
    )
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
    alloc.add_argument(
        "--export",
        nargs=2,
        metavar=("FORMAT", "FILE"),
        help="also write the allocation for another trainer: peft (adapter_config.json) or "
        "axolotl (YAML keys), with FILE.provenance.json beside it",
    )
    alloc.set_defaults(func=cmd_allocate)
