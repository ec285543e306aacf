"""A study's run specs: a pure function of its validated settings and its stored rows.

One run per group (model × task × size) × budget × seed × strategy × learning rate:
tuning runs first, then the reporting runs that the chosen rates (and, with sequential
seeds, the looks judged so far) open. A run's id is `RunConfig.run_id()`; the strategy
label is display only and lives in the store.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaptive_lora.config import RunConfig
from adaptive_lora.errors import UserError
from adaptive_lora.records import canonical_json
from adaptive_lora.study.design import Group
from adaptive_lora.study.model import Choices, StrategyEntry, StudyDesign
from adaptive_lora.study.sequential_seeds import seed_counts
from adaptive_lora.study.store import RunRow


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: what to run and where it sits in the study."""

    run_id: str
    label: str
    strategy: str
    budget: str
    seed: int
    lr: float
    config: RunConfig
    position: int
    tuning: bool = False  # a learning-rate tuning run: never in a reported test
    group: str = ""  # its model × task × size (`design.Group.key`)

    def describe(self) -> str:
        role = "  (lr tuning)" if self.tuning else ""
        return f"{self.label} {self.budget} seed {self.seed} lr {self.lr:g}{role}"


_Planned = tuple[Group, StrategyEntry, str, int, float, bool]  # … seed, rate, tuning


def expand_runs(design: StudyDesign, rows: Sequence[RunRow] = ()) -> list[RunSpec]:
    """Per group (model × task × size): tuning runs first (every candidate on every tuning
    seed), then the reporting runs; `design` carries the rates chosen from `rows`.

    Within each part: budget-major, then seed, strategy and rate, so that a half-finished
    study already holds complete pairs. With tuning seeds, a strategy × budget's reporting
    runs appear once its choice is complete (at the chosen rate only); without them, every
    seed runs every candidate.
    """
    plan: list[_Planned] = []
    for group in design.groups:
        plan += _group_plan(design.for_group(group), group, rows)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for group, entry, budget, seed, lr, tuning in plan:
        config = _run_config(group.sections, entry, budget, seed, lr)
        run_id = config.run_id()
        if run_id in seen:
            raise UserError(
                f"strategies {seen[run_id]!r} and {entry.label!r} describe the "
                "same runs; change a parameter or drop one"
            )
        seen[run_id] = entry.label
        runs.append(
            RunSpec(run_id, entry.label, entry.name, budget, seed, config.train.lr, config,
                    position=len(runs), tuning=tuning, group=group.key)
        )  # fmt: skip
    return runs


def _group_plan(part: StudyDesign, group: Group, rows: Sequence[RunRow]) -> list[_Planned]:
    """One group's runs in order; `part` holds only the strategies that run there (`where`)."""
    choices = part.lr_choices_by_group[group.key]
    counts = seed_counts(part, group, part.rows_of(group, rows)) if part.seed_plan else {}
    plan: list[_Planned] = []
    for budget in part.budgets:
        for seed in part.lr_tuning_seeds:
            for entry in part.strategies:
                if budget in part.budgets_for(entry.label):
                    # The grid as tuning stands (extended past an edge: `lr_extend`).
                    lrs = tuple(choices[(entry.label, budget)].candidates)
                    plan += [(group, entry, budget, seed, lr, True) for lr in lrs]
    for budget in part.budgets:
        for position, seed in enumerate(part.seeds):
            for entry in part.strategies:
                if position >= counts.get((budget, entry.label), len(part.seeds)):
                    continue  # sequential: this comparison has not reached that look
                if budget in part.budgets_for(entry.label):
                    lrs = _reporting_lrs(part, entry, budget, choices)
                    plan += [(group, entry, budget, seed, lr, False) for lr in lrs]
    return plan


def _reporting_lrs(
    design: StudyDesign, entry: StrategyEntry, budget: str, choices: Choices
) -> tuple[float, ...]:
    if not design.lr_tuning_seeds:
        return design.lrs_for(entry.label)
    choice = choices[(entry.label, budget)]
    return (choice.chosen,) if choice.complete and choice.chosen is not None else ()


def _run_config(
    base: dict[str, Any], entry: StrategyEntry, budget: str, seed: int, lr: float
) -> RunConfig:
    resolved = copy.deepcopy(base)
    resolved["seed"] = seed
    resolved["allocation"].update(strategy=entry.name, budget=budget, params=dict(entry.params))
    resolved["train"]["lr"] = lr
    return RunConfig.from_dict(resolved)


def spec_hash(
    name: str, baseline: str, runs: list[RunSpec], by_budget: dict[str, str] | None = None
) -> str:
    spec: dict = {"name": name, "baseline": baseline, "runs": [[r.run_id, r.label] for r in runs]}
    if by_budget:  # only then: a study with one baseline keeps the hash it always had
        spec["baseline_by_budget"] = dict(sorted(by_budget.items()))
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]
