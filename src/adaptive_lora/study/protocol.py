"""The study keys of the comparison protocol: tuning seeds, per-strategy budgets, cross-budget.

DESIGN.md's rules, as a study states them:

    seeds: 2..9                 # reporting seeds: every reported test uses these only
    lr_candidates: [5e-4, 1e-3, 2e-3]
    lr_tuning_seeds: [0, 1]     # candidates are tried on these; never in a reported test
    strategies:
      - uniform                                  # every budget
      - {name: linear_decay, budgets: [r8]}      # only where listed
    cross_budget: {small: r8, large: r16, margin: null}

`cross_budget` asks, for each strategy at the smaller budget, whether it recovers what
the baseline gains from the smaller to the larger budget: a paired comparison with the
baseline at the larger budget and a TOST against `margin` (loss units; default: half
the baseline's gain, measured in the study and stated in the report with its interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaptive_lora.config import Budget
from adaptive_lora.errors import UserError
from adaptive_lora.study.hypotheses import reject_unknown_keys

CROSS_BUDGET_KEYS = ("small", "large", "margin")
# `margin: post-hoc`: half the baseline's measured small → large gain, computed from the
# outcomes. Allowed when asked for; the report labels it post hoc. Declare a number instead.
POST_HOC = "post-hoc"


@dataclass(frozen=True)
class CrossBudget:
    """Does a strategy at `small` recover the baseline's gain from `small` to `large`?"""

    small: str
    large: str
    margin: float | None  # None: half of the baseline's small → large gain

    def to_dict(self) -> dict[str, Any]:
        return {"small": self.small, "large": self.large, "margin": self.margin}


def parse_tuning_seeds(seeds: list[int], tuning: list[int], tunes: bool) -> list[int]:
    """Check `lr_tuning_seeds` against the reporting seeds; they must be disjoint."""
    overlap = sorted(set(seeds) & set(tuning))
    if overlap:
        raise UserError(
            f"lr_tuning_seeds {overlap} are also reporting seeds: tuning seeds must never "
            "reach a reported test; take them out of `seeds`"
        )
    if not tunes:
        raise UserError(
            "lr_tuning_seeds needs learning-rate candidates: give `lr_candidates` (or a "
            "strategy's own `lr` list) with two or more rates"
        )
    return tuning


def parse_entry_budgets(value: Any, budgets: list[str], where: str) -> tuple[str, ...] | None:
    """A strategy's own `budgets` (a subset of the study's), or None for all of them."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}.budgets must be a non-empty list like [r8], got {value!r}")
    unknown = [b for b in value if str(b) not in budgets]
    if unknown:
        raise UserError(
            f"{where}.budgets: {unknown} not among the study's budgets ({', '.join(budgets)})"
        )
    return tuple(str(b) for b in value)


def _budget_size(budget: Budget) -> tuple[str, float]:
    """(kind, size) of a budget: ranks for `rN`, ranks on a placement for `qv:rN`,
    parameters for a count (two kinds compare only on a model's inventory)."""
    if budget.rank is not None:
        kind = "rank" if budget.placement is None else f"{budget.placement} rank"
        return kind, float(budget.rank)
    return "params", float(budget.params)


def parse_cross_budget(
    value: Any, parsed: Sequence[Budget], baseline_budgets: tuple[str, ...]
) -> CrossBudget | None:
    """Validate `cross_budget` against the study's budgets and where its baseline runs."""
    if value is None:
        return None
    budgets = [b.label for b in parsed]
    if not isinstance(value, dict):
        raise UserError(f"cross_budget must be a mapping {{small, large, margin}}, got {value!r}")
    reject_unknown_keys(value, CROSS_BUDGET_KEYS, "cross_budget")
    small, large = str(value.get("small", "")), str(value.get("large", ""))
    if small not in budgets:
        raise UserError(f"cross_budget.small {small!r} is not one of the budgets {budgets}")
    if large not in budgets or large not in baseline_budgets:
        raise UserError(
            f"cross_budget.large {large!r}: the study has no baseline runs at that budget; "
            "add it to `budgets` (and to the baseline's `budgets`, if it lists any)"
        )
    by_label = {b.label: b for b in parsed}
    small_kind, small_size = _budget_size(by_label[small])
    large_kind, large_size = _budget_size(by_label[large])
    if small_kind != large_kind or not large_size > small_size:
        raise UserError(
            f"cross_budget: {large} must be a larger budget of the same kind than {small}"
        )
    if small not in baseline_budgets:
        raise UserError(f"cross_budget.small {small!r}: the baseline does not run at it")
    margin = value.get("margin")
    if margin == POST_HOC:
        margin = None  # asked for explicitly: the report labels it post hoc
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0
    ):
        raise UserError(
            f"cross_budget.margin must be a number > 0 (loss units) or {POST_HOC!r}, got {margin!r}"
        )
    return CrossBudget(small, large, None if margin is None else float(margin))
