"""Seeds planned by power: each comparison's pilot sd → the seeds a decision needs.

A pilot is a store of finished runs: the study's own (its tuning seeds, or whatever has
run) or another study's with the same model and data settings. Per comparison
(strategy − baseline in one group × budget) the sd of the paired test-loss differences
is estimated from the pilot's seeds at the chosen rates; where the pilot never ran the
strategy, the baseline's own paired differences between this budget and its nearest
other one stand in (two adapters on the same seed's data order), else √2 × the
baseline's seed-to-seed sd (two independent runs' noise), each said as "assumed".
`analysis/planning.plan_comparison` then gives the seeds for 80% power at the smallest effect of interest (at the first Holm step, α/m) and for TOST at
the margin, the power of the planned seeds, and the Wilcoxon floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adaptive_lora.analysis.ladder import gain_per_doubling
from adaptive_lora.analysis.planning import plan_comparison
from adaptive_lora.evaluation_metrics import PRIMARY_METRIC
from adaptive_lora.study.lr import chosen_rate_rows
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import DONE, RunRow


def planned_seeds(study: Study) -> int:
    """The reporting seeds a study plans: the sequential plan's maximum, else its list."""
    return study.seed_plan.maximum if study.seed_plan else len(study.seeds)


@dataclass
class ComparisonPlan:
    group: str
    budget: str
    label: str
    sd: float
    source: str  # "paired (n pilot pairs)", "assumed: √2 × baseline sd (n seeds)" or "no pilot"
    plan: dict[str, Any] = field(default_factory=dict)


def _losses(
    pilot: Study, rows: Sequence[RunRow], group_key: str, budget: str, label: str
) -> dict[int, float]:
    """Seed → finite test loss of the pilot's reporting runs of `label` at `budget`, at the
    chosen rate (a tuning seed's run, picked on validation loss, never counts)."""
    choices = pilot.lr_choices_by_group.get(group_key, {})
    out = {}
    for r in chosen_rate_rows(rows, choices, pilot.lr.tuning_seeds):
        value = r.metrics.get(PRIMARY_METRIC)
        if r.label == label and r.budget == budget:
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[r.seed] = float(value)
    return out


def pilot_sd(
    pilot: Study, pilot_rows: Sequence[RunRow], signature: str, budget: str, label: str
) -> tuple[float, str]:
    """(sd of paired differences, where it came from) for one comparison, from a pilot."""
    group = pilot.group_with(signature)
    if group is None:
        return math.nan, "no pilot runs with this model and data"
    rows = pilot.rows_of(group, pilot_rows)
    base = _losses(pilot, rows, group.key, budget, pilot.baseline_at(budget))
    mine = _losses(pilot, rows, group.key, budget, label) if label in pilot.labels else {}
    pairs = [mine[s] - base[s] for s in sorted(set(base) & set(mine))]
    if len(pairs) >= 2 and np.std(pairs, ddof=1) > 0:
        return float(np.std(pairs, ddof=1)), f"paired ({len(pairs)} pilot pairs)"
    near = _neighbour_pairs(pilot, rows, group.key, budget)
    if near is not None:
        other, diffs = near
        return float(np.std(diffs, ddof=1)), (
            f"assumed: the baseline's {budget} − {other} paired by seed ({len(diffs)} pairs)"
        )
    if group.sections.get("data", {}).get("split") == "per_seed":
        # Each seed tests on its own items: the baseline's seed-to-seed sd carries that
        # test set's spread, which a pair (both arms on one seed's items) cancels.
        return (
            math.nan,
            "no pilot pairs: with per-seed splits the baseline's seed sd is no stand-in",
        )
    if len(base) >= 2:
        sd = math.sqrt(2) * float(np.std(list(base.values()), ddof=1))
        return sd, f"assumed: √2 × the baseline's seed sd ({len(base)} seeds)"
    return math.nan, "no pilot: the baseline has fewer than 2 finished seeds"


def _neighbour_pairs(
    pilot: Study, rows: Sequence[RunRow], group_key: str, budget: str
) -> tuple[str, list[float]] | None:
    """The baseline's paired differences between `budget` and its nearest other budget
    with at least 3 common seeds: two adapters trained on the same seed's data order,
    as a strategy and the baseline are, so a closer stand-in for a strategy's paired sd
    than two independent runs' noise. None when no budget qualifies."""
    if budget not in pilot.budgets:
        return None
    baseline = pilot.baseline_at(budget)  # the same label at both budgets
    base = _losses(pilot, rows, group_key, budget, baseline)
    here = pilot.budgets.index(budget)
    for other in sorted(pilot.budgets, key=lambda b: abs(pilot.budgets.index(b) - here)):
        if other == budget:
            continue
        theirs = _losses(pilot, rows, group_key, other, baseline)
        seeds = sorted(set(base) & set(theirs))
        diffs = [base[s] - theirs[s] for s in seeds]
        if len(diffs) >= 3 and np.std(diffs, ddof=1) > 0:
            return other, diffs
    return None


def plan_study(study: Study, pilot: Study, pilot_rows: Sequence[RunRow], *,
               smallest_effect: float | None, margin: float | None) -> list[ComparisonPlan]:  # fmt: skip
    """A plan per comparison of `study`, from the pilot's variance."""
    n_planned = planned_seeds(study)
    plans = []
    for group in study.groups:
        part = study.for_group(group)  # the strategies that run in this group (`where`)
        for budget in study.budgets:
            labels = [label for label in part.labels if budget in part.budgets_for(label)]
            baseline = study.baseline_at(budget)
            if baseline not in labels:
                continue
            compared = [label for label in labels if label != baseline]
            for label in compared:
                h = study.hypotheses.for_comparison(label)
                sd, source = pilot_sd(pilot, pilot_rows, group.signature, budget, label)
                entry = ComparisonPlan(group.key, budget, label, sd, source)
                if math.isfinite(sd) and sd > 0:
                    entry.plan = plan_comparison(
                        sd,
                        n_planned,
                        # A flag of `plan` (a what-if) wins over the declared value.
                        smallest_effect=_given(smallest_effect, h.smallest_effect),
                        margin=_given(margin, h.margin),
                        family_size=len(compared),
                        alternative=h.alternative,
                    )
                plans.append(entry)
    return plans


def warning_lines(study: Study, plans: list[ComparisonPlan]) -> list[str]:
    """One line per comparison the planned seeds cannot decide (what `run` prints)."""
    titles = study.group_titles(plain=True)
    lines = []
    for p in plans:
        where = f"{p.label} vs {study.baseline_at(p.budget)} at {p.budget}" + (
            f" ({titles[p.group]})" if study.multi_group else ""
        )
        for warning in p.plan.get("warnings", []):
            lines.append(f"warning: {where}: {warning}")
    return lines


def plan_table(study: Study, plans: list[ComparisonPlan]) -> list[str]:
    """The `plan` command's table: per comparison, sd and the seeds each test needs."""
    n_planned = planned_seeds(study)
    titles = study.group_titles(plain=True)
    lines = [
        "| group | budget | strategy | sd of differences (source) | t-test: seeds for 80% "
        f"[power at {n_planned}] | TOST: seeds for 80% [power at {n_planned}] | Wilcoxon can reach α |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        if not p.plan:
            lines.append(f"| {titles[p.group]} | {p.budget} | {p.label} | n/a ({p.source}) | | | |")
            continue
        q = p.plan
        t = _seeds(q["t_seeds"], q["t_power"]) if q["smallest_effect"] is not None else "not asked"
        tost = _seeds(q["tost_seeds"], q["tost_power"]) if q["margin"] is not None else "not asked"
        reach = (
            "yes"
            if q["wilcoxon"]["can_reach"]
            else f"no (floor × m = {q['wilcoxon']['holm_floor']:.3g})"
        )
        lines.append(
            f"| {titles[p.group]} | {p.budget} | {p.label} | {p.sd:.4g} ({p.source}) | {t} | "
            f"{tost} | {reach} |"
        )
    return lines


def _seeds(seeds: int | None, power: float) -> str:
    needed = "> 100,000" if seeds is None else str(seeds)
    shown = "< 0.1%" if power < 0.001 else f"{power:.1%}"
    return f"{needed} [{shown}]"


def _given(flag: float | None, declared: float | None) -> float | None:
    return flag if flag is not None else declared


def design_warnings(study: Study, rows: Sequence[RunRow]) -> list[str]:
    """What `run` and `run --dry-run` say before starting: each comparison the planned
    seeds cannot decide, from the study's own stored runs as the pilot."""
    h = study.hypotheses
    if h.smallest_effect is None and h.margin is None and not h.comparisons:
        return []
    plans = plan_study(study, study, rows, smallest_effect=None, margin=None)
    if plans and not any(p.plan for p in plans):
        return [
            "plan: no pilot variance yet (the tuning runs, or `adaptive-lora plan --pilot "
            "OTHER.yaml`, give one); the seeds' power is unknown"
        ]
    return warning_lines(study, plans)


@dataclass
class LadderPlan:
    """Seeds to establish the baseline's gain per doubling: over a group's ladder or a step."""

    group: str
    span: str  # "r1 → r16 (slope)" or one step "r1 → r2"
    n_pilot: int  # seeds the pilot's estimate rests on
    mean: float  # the pilot's gain per doubling
    sd: float  # its sd over seeds
    plan: dict[str, Any] = field(default_factory=dict)


def _ladder_series(pilot: Study, rows: Sequence[RunRow], group_key: str) -> list[dict[str, Any]]:
    """The pilot baseline's budgets in order of parameters, with per-seed test losses."""
    series = []
    for budget in pilot.budgets:
        losses = _losses(pilot, rows, group_key, budget, pilot.baseline)
        params = [
            float(r.metrics["effective_params"])
            for r in rows
            if r.label == pilot.baseline and r.budget == budget and r.status == DONE
            and isinstance(r.metrics.get("effective_params"), (int, float))
        ]  # fmt: skip
        if losses and params:
            series.append({"budget": budget, "params": float(np.mean(params)),
                           "test_loss": {"values": losses}})  # fmt: skip
    return sorted(series, key=lambda s: s["params"])


def plan_ladder(
    study: Study, pilot: Study, pilot_rows: Sequence[RunRow], *, gain: float
) -> list[LadderPlan]:
    """Per group of `study`: the seeds its baseline needs to establish (95% interval above
    0: a two-sided t-test at α = 0.05) a gain per doubling of `gain` test-loss units, over
    the ladder (per-seed slopes) and per step, from the pilot's seed-to-seed spread."""
    n_planned = planned_seeds(study)
    plans = []
    for group in study.groups:
        found = pilot.group_with(group.signature)
        if found is None:
            plans.append(LadderPlan(group.key, "no pilot runs with this model and data", 0,
                                    math.nan, math.nan))  # fmt: skip
            continue
        series = _ladder_series(pilot, pilot.rows_of(found, pilot_rows), found.key)
        if len(series) < 2:
            plans.append(LadderPlan(group.key, "fewer than 2 budgets finished in the pilot", 0,
                                    math.nan, math.nan))  # fmt: skip
            continue
        gains = gain_per_doubling(series)
        spans = [(f"{series[0]['budget']} → {series[-1]['budget']} (slope)", gains["overall"])]
        spans += [(f"{s['from']} → {s['to']}", s) for s in gains["steps"]]
        for span, estimate in spans:
            entry = LadderPlan(group.key, span, estimate["n"], estimate["mean"], estimate["sd"])
            if math.isfinite(entry.sd) and entry.sd > 0:
                entry.plan = plan_comparison(entry.sd, n_planned, smallest_effect=gain)
            plans.append(entry)
    return plans


def ladder_table(study: Study, plans: list[LadderPlan], gain: float) -> list[str]:
    """`plan --gain-per-doubling`'s table: per group and span, the seeds to establish it."""
    n_planned = planned_seeds(study)
    titles = study.group_titles(plain=True)
    lines = [
        f"| group | ladder | pilot gain per doubling (seeds) | sd over seeds | seeds to "
        f"establish {gain:g} per doubling, 80% [power at {n_planned}] |",
        "|---|---|---|---|---|",
    ]
    for p in plans:
        if not p.plan:
            pilot = f"{p.mean:+.4f} ({p.n_pilot})" if p.n_pilot else "n/a"
            lines.append(f"| {titles[p.group]} | {p.span} | {pilot} | needs 2 pilot seeds | |")
            continue
        seeds = _seeds(p.plan["t_seeds"], p.plan["t_power"])
        lines.append(
            f"| {titles[p.group]} | {p.span} | {p.mean:+.4f} ({p.n_pilot}) | {p.sd:.4f} | {seeds} |"
        )
    return lines
