"""`adaptive-lora importance`: probe per-module importance, compare calibration seeds."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

from adaptive_lora.allocation.heatmap import rank_heatmap
from adaptive_lora.allocation.importance import ImportanceResult
from adaptive_lora.allocation.importance_seeds import SeedSummary, probe_each_seed, summarise_seeds
from adaptive_lora.allocation.probe_settings import METRICS, PRECISIONS, ProbeSettings
from adaptive_lora.data.calibration import Calibration, calibration_from_source
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
    defaults = ProbeSettings()
    parser.add_argument("--model", default="smollm2-135m", help="preset, hub id, folder or .gguf")
    parser.add_argument(
        "--data", default="builtin", help="data source; its training split is the calibration"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[defaults.seed],
        help="calibration seeds (batch draws)",
    )
    parser.add_argument("--metric", default=defaults.metric, choices=METRICS)
    parser.add_argument(
        "--batches", type=int, default=defaults.n_batches, help="calibration batches per seed"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--precision",
        default=defaults.precision,
        choices=PRECISIONS,
        help="bf16: autocast forward (faster)",
    )
    parser.add_argument(
        "--early-stop",
        type=float,
        default=defaults.early_stop,
        metavar="RHO",
        help=ProbeSettings.help("early_stop"),
    )
    parser.add_argument(
        "--target", default="all", help="all, attention, mlp or a comma list of kinds"
    )
    parser.add_argument("--no-cache", action="store_true", help="always run the probe")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="layer × kind heatmap of mean scores")
    parser.set_defaults(func=cmd_importance)


def probe_settings_per_seed(args: argparse.Namespace) -> dict[int, ProbeSettings]:
    """One validated `ProbeSettings` per distinct calibration seed, from the flags."""
    base = ProbeSettings(
        metric=args.metric,
        n_batches=args.batches,
        batch_size=args.batch_size,
        early_stop=args.early_stop,
        precision=args.precision,
    )
    return {seed: replace(base, seed=seed) for seed in dict.fromkeys(args.seeds)}


def _print_json(
    args: argparse.Namespace,
    calibration: Calibration,
    results: Mapping[int, ImportanceResult],
    summary: SeedSummary,
) -> None:
    print(
        json.dumps(
            {
                "model": args.model,
                "data": args.data,
                "metric": args.metric,
                "calibration": {"data_hash": calibration.data_hash, **calibration.info},
                "seeds": {str(s): r.to_dict() for s, r in results.items()},
                "mean_scores": summary.mean,
                "per_layer": {str(k): v for k, v in summary.per_layer.items()},
                "per_kind": summary.per_kind,
                "spearman_between_seeds": summary.pairs,
            },
            indent=2,
        )
    )


def _print_table(
    args: argparse.Namespace,
    inventory: Sequence[ModuleInfo],
    calibration: Calibration,
    results: Mapping[int, ImportanceResult],
    summary: SeedSummary,
) -> None:
    width = max(len(m.name) for m in inventory)
    print(f"{'module':<{width}}  layer  kind  {'mean score':>10}  {'min':>9}  {'max':>9}")
    for m in inventory:
        values = [r.scores[m.name] for r in results.values()]
        print(
            f"{m.name:<{width}}  {m.layer:>5}  {m.kind:<4}  {summary.mean[m.name]:>10.3e}  "
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
    print("per layer:  " + "  ".join(f"L{k}: {v:.3e}" for k, v in summary.per_layer.items()))
    print("per kind:   " + "  ".join(f"{k}: {v:.3e}" for k, v in summary.per_kind.items()))
    if summary.pairs:
        pairs = "  ".join(f"{k}: {v:.4f}" for k, v in summary.pairs.items())
        print("Spearman between seeds:  " + pairs)
    if args.plot:
        print(f"heatmap: {args.plot}")


def cmd_importance(args: argparse.Namespace) -> int:
    per_seed = probe_settings_per_seed(args)  # bad flags fail before the model loads
    loaded = load_model(args.model)
    inventory = build_inventory(loaded.model, args.target)
    calibration = calibration_from_source(args.data, loaded.tokenizer)
    results = probe_each_seed(
        loaded.model,
        inventory,
        calibration,
        per_seed,
        model_fingerprint=loaded.fingerprint.get("sha256", args.model),
        use_cache=not args.no_cache,
    )
    summary = summarise_seeds(inventory, results)
    if args.plot:
        rank_heatmap(
            inventory,
            summary.mean,
            args.plot,
            title=f"{args.metric} importance ({args.model}, mean of {len(per_seed)} seed(s))",
            label="importance",
            integer=False,
        )
    if args.json:
        _print_json(args, calibration, results, summary)
    else:
        _print_table(args, inventory, calibration, results, summary)
    return 0
