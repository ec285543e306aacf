"""`adaptive-lora plan`: the seeds each comparison needs, from a pilot's variance."""

from __future__ import annotations

import argparse

from adaptive_lora.errors import UserError
from adaptive_lora.study.hypothesis_sources import source_warnings
from adaptive_lora.study.look_plan import comparison_looks, look_table, look_warnings
from adaptive_lora.study.plan import open_store_if_any
from adaptive_lora.study.power_plan import (
    ladder_table,
    plan_ladder,
    plan_study,
    plan_table,
    planned_seeds,
    warning_lines,
)
from adaptive_lora.study.spec import load_study


def cmd_plan(args: argparse.Namespace) -> int:
    study = load_study(args.study, check_sources=False)
    pilot = load_study(args.pilot, check_sources=False) if args.pilot else study
    h = study.hypotheses
    effect = args.smallest_effect if args.smallest_effect is not None else h.smallest_effect
    margin = args.margin if args.margin is not None else h.margin
    ladder = args.gain_per_doubling
    if ladder is not None and not ladder > 0:
        raise UserError(f"--gain-per-doubling must be > 0 (test-loss units), got {ladder:g}")
    if effect is None and margin is None and ladder is None:
        raise UserError(
            "plan needs a smallest effect of interest or an equivalence margin, in test-loss "
            "units: declare them under `hypotheses:` or pass --smallest-effect / --margin "
            "(or --gain-per-doubling for the baseline's ladder)"
        )
    what_ifs = tuple(
        name for name, flag in (("smallest_effect", args.smallest_effect), ("margin", args.margin))
        if flag is not None
    )  # fmt: skip
    sources = source_warnings(h, study.labels, overridden=what_ifs)
    store = open_store_if_any(pilot)
    if store is None:
        raise UserError(
            f"the pilot {pilot.path} has no store yet ({pilot.store_path}); run it first"
        )
    with store:
        rows = store.rows(pilot.run_ids)  # not the rows an edited file no longer lists
    n = planned_seeds(study)
    if ladder is not None:
        print(
            f"plan for {study.name}'s baseline ladder: pilot {pilot.name} ({len(rows)} stored "
            f"runs); seeds for 80% power to establish a gain of {ladder:g} test loss per "
            f"doubling of the budget (95% interval above 0); {n} seeds planned"
        )
        print()
        print("\n".join(ladder_table(study, plan_ladder(study, pilot, rows, gain=ladder), ladder)))
        if effect is None and margin is None:
            return 0
        print()
    plans = plan_study(study, pilot, rows, smallest_effect=args.smallest_effect, margin=args.margin)
    declared = "declared in the study file" if h.given else "not declared in the study file"
    print(
        f"plan for {study.name}: pilot {pilot.name} ({len(rows)} stored runs); hypotheses "
        f"{declared}: {h.alternative}, Holm within each cell, smallest effect "
        f"{_shown(effect)}, margin ±{_shown(margin)} (test loss); {n} seeds planned"
    )
    print()
    print("\n".join(plan_table(study, plans)))
    looks = comparison_looks(study, plans, smallest_effect=args.smallest_effect, margin=args.margin)
    if looks:
        print()
        print("\n".join(look_table(study, looks)))
    warnings = sources + warning_lines(study, plans) + look_warnings(study, looks)
    if warnings:
        print()
        print("\n".join(warnings))
    return 0


def _shown(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def register(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="seeds each comparison needs for 80%% power, from a pilot's variance",
        description="Estimate each comparison's sd of paired test-loss differences from a "
        "pilot (the study's own stored runs, or --pilot OTHER.yaml with the same model and "
        "data) and print the seeds needed for 80% power at the smallest effect of interest "
        "(at the first Holm step) and for TOST at the equivalence margin.",
    )
    plan.add_argument("study", metavar="STUDY.yaml")
    plan.add_argument("--pilot", metavar="PILOT.yaml", help="another study's store as the pilot")
    plan.add_argument("--smallest-effect", type=float, help="what-if: overrides the declared one")
    plan.add_argument("--margin", type=float, help="what-if: overrides the declared margin")
    plan.add_argument(
        "--gain-per-doubling",
        type=float,
        metavar="G",
        help="also plan the baseline's budget ladder: seeds to establish a test-loss gain of "
        "G per doubling of the budget, per group, over the ladder and per step",
    )
    plan.set_defaults(func=cmd_plan)
