"""The study as a typed model: what its file says, read once (`schema.read_study`).

`StudyDesign` holds every setting typed — tasks and their sizes as groups, budgets as
parsed `Budget`s, strategies, seeds (or a sequential seed plan), the learning-rate rule,
the declared hypotheses — and the rates chosen so far from the stored tuning runs.
Expansion (`expand`), sequential seeds (`sequential_seeds`) and `spec.Study` (this model
with its runs) all read it; nothing re-reads the file. Its methods are pure queries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from adaptive_lora.analysis.sequential import SequentialDesign
from adaptive_lora.config import Budget, DataSettings
from adaptive_lora.errors import UserError
from adaptive_lora.study.design import Group, Task, group_signature
from adaptive_lora.study.hypotheses import Hypotheses, SeedPlan
from adaptive_lora.study.lr import LrChoice, choose_lr_extending
from adaptive_lora.study.protocol import CrossBudget
from adaptive_lora.study.store import RunRow

# What a strategy's `where` may restrict: the factors of a group (`design.Group`).
WHERE_KEYS = ("model", "task", "n_train")

# Per strategy label × budget, the rate chosen there (`lr.LrChoice`).
Choices = dict[tuple[str, str], LrChoice]

# `StudyDesign` or a subclass (`spec.Study`): a part of a study is of the study's class.
D = TypeVar("D", bound="StudyDesign")


@dataclass(frozen=True)
class StrategyEntry:
    """One entry of `strategies`: a registered strategy, its settings, its display label."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    lr: tuple[float, ...] | None = None  # this strategy's own learning-rate candidates
    budgets: tuple[str, ...] | None = None  # the budgets it runs at (None: all of them)
    # The groups it runs in: factor → the levels allowed (None: every group).
    where: dict[str, tuple[object, ...]] | None = None

    def runs_in(self, group: Group) -> bool:
        """Whether this strategy runs in a model × task × size group."""
        return self.where is None or all(
            getattr(group, factor) in levels for factor, levels in self.where.items()
        )


@dataclass(frozen=True)
class LrRule:
    """How each strategy's learning rate is found."""

    candidates: tuple[float, ...] | None = None  # `lr_candidates`; a strategy's own `lr` wins
    tuning_seeds: tuple[int, ...] = ()  # tried there only, never reported (else every seed)
    extend: int = 0  # steps a tuning grid may grow past an edge where the best rate sits
    base: float = 1e-3  # `train.lr`: the rate of a strategy with no candidates

    def rates(self, entry: StrategyEntry) -> tuple[float, ...]:
        """A strategy's candidates in increasing order (one when nothing is tuned)."""
        return tuple(sorted(entry.lr or self.candidates or (self.base,)))


@dataclass(kw_only=True)
class StudyDesign:
    """A validated study file as typed values, and the rates chosen from stored runs."""

    name: str
    description: str
    models: list[str]  # several: runs pair by seed within a model
    tasks: list[Task]
    budget_values: tuple[Budget, ...]  # in the file's order
    strategies: list[StrategyEntry]
    baseline: str  # the label every comparison is against (at a budget without its own)
    seeds: list[int]  # the reporting seeds
    lr: LrRule
    out: Path
    # The factorial design: model × task × size groups, with their RunConfig sections.
    groups: list[Group]
    hypotheses: Hypotheses = field(default_factory=Hypotheses)  # declared before the runs
    seed_plan: SeedPlan | None = None  # sequential seeds; None: every seed runs
    cross_budget: CrossBudget | None = None
    resources: dict[str, float] = field(default_factory=dict)  # `schema.RESOURCE_KEYS` given
    # Group key → its rate choices, from the tuning runs stored so far (`choices_from`).
    lr_choices_by_group: dict[str, Choices] = field(default_factory=dict)
    # Budget → its own baseline, where `baseline` cannot spend it (below r1 `uniform` does
    # not exist; `peft_default` does): `baseline: {default: uniform, "qv:r1": peft_default}`.
    baseline_by_budget: dict[str, str] = field(default_factory=dict)

    def baseline_at(self, budget: str) -> str:
        """The label every comparison at `budget` is against."""
        return self.baseline_by_budget.get(budget, self.baseline)

    @property
    def budgets(self) -> list[str]:
        """The budgets' labels, as runs, rows and reports name them."""
        return [b.label for b in self.budget_values]

    @property
    def model(self) -> str:
        return self.models[0]

    @property
    def lr_tuning_seeds(self) -> list[int]:
        return list(self.lr.tuning_seeds)

    @property
    def lr_choices(self) -> Choices:
        """The first group's rate choices (a one-group part's own)."""
        return self.lr_choices_by_group.get(self.groups[0].key, {})

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self.strategies]

    def entry(self, label: str) -> StrategyEntry:
        return next(e for e in self.strategies if e.label == label)

    def lrs_for(self, label: str) -> tuple[float, ...]:
        """The learning-rate candidates of a strategy (one when nothing is tuned)."""
        return self.lr.rates(self.entry(label))

    def budgets_for(self, label: str) -> list[str]:
        own = self.entry(label).budgets
        return [b for b in self.budgets if own is None or b in own]

    @property
    def tunes_lr(self) -> bool:
        return any(len(self.lrs_for(label)) > 1 for label in self.labels)

    @property
    def choice_seeds(self) -> list[int]:
        """The seeds a learning-rate choice looks at: the tuning seeds, else every seed."""
        return self.lr_tuning_seeds or self.seeds

    @property
    def multi_model(self) -> bool:
        return len(self.models) > 1

    @property
    def multi_group(self) -> bool:
        return len(self.groups) > 1

    def varies(self) -> tuple[bool, bool, bool]:
        """Which factors take more than one level: (model, task, data size)."""
        model, task, size = (
            len({getattr(g, name) for g in self.groups}) > 1
            for name in ("model", "task", "n_train")
        )
        return model, task, size

    def group_titles(self, *, plain: bool = False) -> dict[str, str]:
        """Group key → the group's name (only the factors that vary); `plain` drops the
        Markdown code marks, for a terminal."""
        varies = self.varies()
        titles = {g.key: g.title(varies) for g in self.groups}
        return {k: t.replace("`", "") for k, t in titles.items()} if plain else titles

    def group_of(self, config: dict[str, Any]) -> Group | None:
        """The group a stored run belongs to, by its model and data settings."""
        return self.group_with(group_signature(config))

    def group_with(self, signature: str) -> Group | None:
        """This study's group with a model × data signature (another study's group, say)."""
        return next((g for g in self.groups if g.signature == signature), None)

    def groups_named(self, only: Sequence[str]) -> set[str]:
        """The keys of the groups that `run --only FACTOR=LEVEL` selects: levels of one
        factor are alternatives, different factors must all hold (`task=alpaca` and
        `n_train=100`: Alpaca at 100 examples); one line naming the known levels otherwise."""
        wanted: dict[str, set[str]] = {}
        for pair in only:
            factor, sep, level = (part.strip() for part in pair.partition("="))
            if not sep or factor not in WHERE_KEYS or not level:
                raise UserError(
                    f"--only {pair!r}: write FACTOR=LEVEL with FACTOR one of "
                    f"{', '.join(WHERE_KEYS)} (e.g. --only task=alpaca --only n_train=100)"
                )
            known = list(dict.fromkeys(str(getattr(g, factor)) for g in self.groups))
            if level not in known:
                raise UserError(
                    f"--only {pair!r}: the study's {factor} levels are {', '.join(known)}"
                )
            wanted.setdefault(factor, set()).add(level)
        keys = {
            g.key
            for g in self.groups
            if all(str(getattr(g, f)) in levels for f, levels in wanted.items())
        }
        if not keys:
            raise UserError(f"--only {' '.join(only)}: no group of the study has all of these")
        return keys

    def rows_of(self, group: Group, rows: Sequence[RunRow]) -> list[RunRow]:
        return [r for r in rows if group_signature(r.config) == group.signature]

    def for_group(self: D, group: Group) -> D:
        """The part of the study on one model × task × size: the strategies that run there
        (`where`) and its rate choices (of this class: `spec.Study` narrows its runs too)."""
        choices = self.lr_choices_by_group.get(group.key, {})
        return dataclasses.replace(
            self,
            strategies=[entry for entry in self.strategies if entry.runs_in(group)],
            models=[group.model],
            groups=[group],
            lr_choices_by_group={group.key: choices},
        )

    def select_lr(self, rows: Sequence[RunRow]) -> Choices:
        """Per strategy label × budget, the rate chosen on validation loss (see `study.lr`)."""
        return {
            (label, budget): choose_lr_extending(
                label, budget, self.lrs_for(label), self.choice_seeds, rows, self.lr.extend
            )
            for label in self.labels
            for budget in self.budgets_for(label)
        }

    def choices_from(self, rows: Sequence[RunRow]) -> dict[str, Choices]:
        """Group key → its rate choices from the stored `rows`: a pure function of both."""
        return {g.key: self.for_group(g).select_lr(self.rows_of(g, rows)) for g in self.groups}

    def inference_unit(self, group: Group) -> str:
        """`seeds` or `seeds_x_items`: the declared unit, else by the group's split
        (`Hypotheses.unit_for`)."""
        split = group.sections.get("data", {}).get("split", DataSettings().split)
        return self.hypotheses.unit_for(split)

    def sequential_design(self, label: str, family_size: int) -> SequentialDesign | None:
        """The group-sequential design of one comparison (None with fixed seeds)."""
        if self.seed_plan is None:
            return None
        h = self.hypotheses.for_comparison(label)
        return SequentialDesign(
            looks=self.seed_plan.looks,
            alternative=h.alternative,
            spending=self.seed_plan.spending,
            margin=h.margin,
            smallest_effect=h.smallest_effect,
            family_size=family_size,
        )
