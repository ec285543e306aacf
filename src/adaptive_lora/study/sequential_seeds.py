"""Sequential seeds: how many reporting seeds each comparison gets, look by look.

With `seeds: {min, max, step}` a study runs its reporting seeds in blocks (the looks of
`hypotheses.SeedPlan`). After each block, every comparison of a cell (strategy against
the baseline in one group × budget) is judged by the group-sequential design of
`analysis/sequential.py` with α/m for the m comparisons of the cell (its Holm family):
a decided comparison (superior, inferior, equivalent, futile) gets no more seeds; an
open one gets the next block; the baseline runs as many seeds as its most-seeded
comparison. A look is judged only once every run it needs has finished, so the count
is a pure function of the stored rows (the runner re-expands the study after each run).

Each look is judged in the study's inference unit (`StudyDesign.inference_unit`): with
`seeds_x_items` the runs' per-item test losses add the test items' share to the look's
variance; where the runs carry no per-item records of one shared test set, seeds alone.
The other unit's decision rides along where it differs, for the report to say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from adaptive_lora.analysis.sequential import (
    SequentialDecision,
    SequentialDesign,
    sequential_decisions,
)
from adaptive_lora.evaluation_metrics import PRIMARY_METRIC
from adaptive_lora.study.design import Group
from adaptive_lora.study.hypotheses import SeedPlan
from adaptive_lora.study.item_tables import item_arrays
from adaptive_lora.study.lr import chosen_rate_rows
from adaptive_lora.study.model import StudyDesign
from adaptive_lora.study.store import RunRow


def _runs(
    study: StudyDesign, group: Group, rows: Sequence[RunRow], budget: str, label: str
) -> dict[int, RunRow]:
    """Seed → the label's finished reporting run at its chosen rate."""
    choices = study.lr_choices_by_group.get(group.key, {})
    return {
        row.seed: row
        for row in chosen_rate_rows(rows, choices, study.lr.tuning_seeds)
        if row.label == label and row.budget == budget
    }


def _values(runs: dict[int, RunRow]) -> dict[int, float]:
    """Seed → test loss (NaN where a run recorded none)."""
    out = {}
    for seed, row in runs.items():
        value = row.metrics.get(PRIMARY_METRIC)
        out[seed] = float(value) if isinstance(value, (int, float)) else math.nan
    return out


def _item_table(
    plan: SeedPlan, base: dict[int, RunRow], mine: dict[int, RunRow], n: int
) -> np.ndarray | None:
    """The first `n` seeds' per-item differences (seeds × items, token-weighted), or None
    where the runs lack per-item records of one shared test set."""
    seeds = plan.seeds[:n]
    arrays = item_arrays([base[s] for s in seeds], [mine[s] for s in seeds])
    if isinstance(arrays, str):
        return None
    return arrays[1] - arrays[0]


def _judged(
    label: str,
    diffs: list[float],
    k: int,
    design: SequentialDesign,
    table: np.ndarray | None,
    unit: str,
) -> SequentialDecision:
    """The look's decision in the study's unit, and the other unit's where it differs.
    Without a table (no per-item records) seeds × items cannot be judged: seeds it is."""
    by_seeds = sequential_decisions({label: diffs}, k, design)[label]
    if table is None:
        return replace(by_seeds, unit="seeds")
    by_both = sequential_decisions({label: diffs}, k, design, {label: table})[label]
    mine, other = (by_both, by_seeds) if unit == "seeds_x_items" else (by_seeds, by_both)
    differs = other.decision if other.decision != mine.decision else ""
    return replace(mine, unit=unit, other_unit_decision=differs)


def _diffs(
    plan: SeedPlan, base: dict[int, float], mine: dict[int, float], n: int
) -> list[float] | None:
    """The first `n` seeds' differences, or None while a run of them has not finished."""
    seeds = plan.seeds[:n]
    if not all(s in base and s in mine for s in seeds):
        return None
    return [mine[s] - base[s] for s in seeds]


def _compared(study: StudyDesign, budget: str) -> list[str]:
    labels = [label for label in study.labels if budget in study.budgets_for(label)]
    baseline = study.baseline_at(budget)
    return [label for label in labels if label != baseline] if baseline in labels else []


def _plan(study: StudyDesign) -> SeedPlan:
    if study.seed_plan is None:
        raise ValueError(f"study {study.name} has fixed seeds: no looks to judge")
    return study.seed_plan


def comparison_progress(
    study: StudyDesign, group: Group, rows: Sequence[RunRow], budget: str
) -> dict[str, tuple[int, SequentialDecision | None]]:
    """Label → (seeds it needs now, its latest decision or None before the first look)."""
    plan = _plan(study)
    compared = _compared(study, budget)
    unit = study.inference_unit(group)
    base_runs = _runs(study, group, rows, budget, study.baseline_at(budget))
    base = _values(base_runs)
    out: dict[str, tuple[int, SequentialDecision | None]] = {}
    for label in compared:
        design = study.sequential_design(label, family_size=len(compared))
        mine_runs = _runs(study, group, rows, budget, label)
        mine = _values(mine_runs)
        needed, decision = plan.looks[0], None
        for k, look in enumerate(plan.looks):
            diffs = _diffs(plan, base, mine, look)
            if diffs is None:
                break  # this look's runs are still to come
            table = _item_table(plan, base_runs, mine_runs, look)
            decision = _judged(label, diffs, k, design, table, unit)
            if decision.stopped or k + 1 == len(plan.looks):
                needed = look
                break
            needed = plan.looks[k + 1]
        out[label] = (needed, decision)
    return out


def seed_counts(
    study: StudyDesign, group: Group, rows: Sequence[RunRow]
) -> dict[tuple[str, str], int]:
    """(budget, label) → how many reporting seeds it runs now, in one group."""
    looks = _plan(study).looks
    counts: dict[tuple[str, str], int] = {}
    for budget in study.budgets:
        progress = comparison_progress(study, group, rows, budget)
        for label, (needed, _) in progress.items():
            counts[(budget, label)] = needed
        if progress:
            counts[(budget, study.baseline_at(budget))] = max(
                needed for needed, _ in progress.values()
            )
    # A budget where only the baseline runs (a cross-budget reference) keeps pace with
    # the group's most-seeded cell.
    most = max(counts.values(), default=looks[0])
    for budget in study.budgets:
        for label in study.labels:
            if budget in study.budgets_for(label):
                counts.setdefault((budget, label), most)
    return counts


def open_cells(study: StudyDesign, group: Group, rows: Sequence[RunRow]) -> set[tuple[str, str]]:
    """(budget, label) that a later look may still give seeds, in one group: comparisons
    not stopped, the baseline beside any of them, and a budget where only the baseline
    runs while any comparison of the group is open (it keeps pace)."""
    cells: set[tuple[str, str]] = set()
    for budget in study.budgets:
        progress = comparison_progress(study, group, rows, budget)
        going = [label for label, (_, d) in progress.items() if d is None or not d.stopped]
        cells |= {(budget, label) for label in going}
        if going:
            cells.add((budget, study.baseline_at(budget)))
    if cells:
        for budget in study.budgets:
            baseline = study.baseline_at(budget)
            if not _compared(study, budget) and budget in study.budgets_for(baseline):
                cells.add((budget, baseline))
    return cells


def cell_decisions(
    study: StudyDesign, group_rows: Sequence[RunRow], budget: str
) -> dict[str, SequentialDecision]:
    """Label → its `SequentialDecision` in one group × budget (empty with fixed seeds).

    `group_rows` are the group's stored rows (`Study.rows_of`); the group is read from
    them, or is the study's only one.
    """
    if study.seed_plan is None:
        return {}
    group = study.groups[0]
    if len(study.groups) > 1 and group_rows:
        group = study.group_of(group_rows[0].config) or group
    progress = comparison_progress(study, group, group_rows, budget)
    return {label: decision for label, (_, decision) in progress.items() if decision is not None}
