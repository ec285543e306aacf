"""`adaptive-lora importance`: probe per-module importance, compare calibration seeds."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from adaptive_lora.allocation.heatmap import rank_heatmap
from adaptive_lora.allocation.importance import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRECISION,
    METRICS,
    PRECISIONS,
    cached_importance,
    check_settings,
    probe_importance,
    spearman,
)
from adaptive_lora.data.calibration import calibration_from_source
from adaptive_lora.model.inventory import ModuleInfo, build_inventory
from adaptive_lora.model.loading import load_model


def register(subparsers) -> None:
    """Add the `importance` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "importance",
        help="probe per-module importance on calibration data and compare calibration seeds",
        description="Run the importance probe (training split only) for each calibration seed; "
        "print per-module scores, per-layer and per-kind sums, and the Spearman "
        "correlation of the scores between each pair of seeds.",
    )
    parser.add_argument("--model", default="smollm2-135m", help="preset, hub id, folder or .gguf")
    parser.add_argument(
        "--data", default="builtin", help="data source; its training split is the calibration"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="calibration seeds (batch draws)"
    )
    parser.add_argument("--metric", default="taylor", choices=METRICS)
    parser.add_argument("--batches", type=int, default=16, help="calibration batches per seed")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--precision",
        default=DEFAULT_PRECISION,
        choices=PRECISIONS,
        help="bf16: autocast forward (faster)",
    )
    parser.add_argument(
        "--early-stop",
        type=float,
        default=None,
        metavar="RHO",
        help="stop once successive score rankings reach this Spearman correlation",
    )
    parser.add_argument(
        "--target", default="all", help="all, attention, mlp or a comma list of kinds"
    )
    parser.add_argument("--no-cache", action="store_true", help="always run the probe")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="layer × kind heatmap of mean scores")
    parser.set_defaults(func=cmd_importance)


def _sums(inventory: Sequence[ModuleInfo], scores: Mapping[str, float], key: str) -> dict:
    sums: dict[Any, float] = {}
    for m in inventory:
        group = getattr(m, key)
        sums[group] = sums.get(group, 0.0) + scores[m.name]
    return sums


def cmd_importance(args: argparse.Namespace) -> int:

    check_settings(args.metric, args.batches, args.batch_size, precision=args.precision)
    seeds = list(dict.fromkeys(args.seeds))
    loaded = load_model(args.model)
    inventory = build_inventory(loaded.model, args.target)
    calibration = calibration_from_source(args.data, loaded.tokenizer)
    results = {}
    for seed in seeds:
        settings = dict(
            metric=args.metric,
            n_batches=args.batches,
            batch_size=args.batch_size,
            seed=seed,
            early_stop=args.early_stop,
            precision=args.precision,
        )
        if args.no_cache:
            results[seed] = probe_importance(loaded.model, inventory, calibration, **settings)
        else:
            results[seed] = cached_importance(
                loaded.model,
                inventory,
                calibration,
                model_fingerprint=loaded.fingerprint.get("sha256", args.model),
                **settings,
            )
    names = [m.name for m in inventory]
    mean = {n: sum(r.scores[n] for r in results.values()) / len(results) for n in names}
    pairs = {
        f"{a}-{b}": spearman(
            [results[a].scores[n] for n in names], [results[b].scores[n] for n in names]
        )
        for a, b in combinations(seeds, 2)
    }
    per_layer, per_kind = _sums(inventory, mean, "layer"), _sums(inventory, mean, "kind")
    if args.plot:
        rank_heatmap(
            inventory,
            mean,
            args.plot,
            title=f"{args.metric} importance ({args.model}, mean of {len(seeds)} seed(s))",
            label="importance",
            integer=False,
        )
    if args.json:
        summary = {
            "model": args.model,
            "data": args.data,
            "metric": args.metric,
            "calibration": {"data_hash": calibration.data_hash, **calibration.info},
            "seeds": {str(s): r.to_dict() for s, r in results.items()},
            "mean_scores": mean,
            "per_layer": {str(k): v for k, v in per_layer.items()},
            "per_kind": per_kind,
            "spearman_between_seeds": pairs,
        }
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(n) for n in names)
    print(f"{'module':<{width}}  layer  kind  {'mean score':>10}  {'min':>9}  {'max':>9}")
    for m in inventory:
        values = [r.scores[m.name] for r in results.values()]
        print(
            f"{m.name:<{width}}  {m.layer:>5}  {m.kind:<4}  {mean[m.name]:>10.3e}  "
            f"{min(values):>9.3e}  {max(values):>9.3e}"
        )
    print()
    print(
        f"metric {args.metric}  model {args.model}  calibration: {len(calibration)} training "
        f"examples of {args.data}"
    )
    for seed, r in results.items():
        print(
            f"seed {seed}: {r.n_batches} batches of {args.batch_size} in {r.seconds:.1f} s, "
            f"peak RSS {r.peak_rss_mb:,.0f} MB, cache {r.cache}"
        )
    print("per layer:  " + "  ".join(f"L{k}: {v:.3e}" for k, v in per_layer.items()))
    print("per kind:   " + "  ".join(f"{k}: {v:.3e}" for k, v in per_kind.items()))
    if pairs:
        print("Spearman between seeds:  " + "  ".join(f"{k}: {v:.4f}" for k, v in pairs.items()))
    if args.plot:
        print(f"heatmap: {args.plot}")
    return 0
