"""The strategy registry, the context a strategy sees, and the allocation it returns.

A strategy is one pure function `fn(ctx, **params) -> {module_name: rank}`
registered by name with `@register`. Its keyword-only parameters (with
defaults) are its settings; unknown settings are a user error. Most strategies
compute parameter *shares* and hand them to `apportion`, which does the budget
matching for everyone alike.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adaptive_lora.allocation.budget import Budget, apportion, tolerance, total_params
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo, inventory_report


@dataclass
class AllocationContext:
    """Everything a strategy may look at. Shape-only strategies use the first fields."""

    inventory: list[ModuleInfo]
    budget: Budget
    min_rank: int = 1
    max_rank: int | None = None
    seed: int = 0  # the run seed; strategies with randomness derive from it
    # The model's `config.model_type` (`llama`, `gpt2`): what PEFT's default targets are
    # looked up by (`peft_default`); known without weights, so it is not `model`.
    model_type: str | None = None
    model: Any = None  # the loaded model, for strategies that read weights
    # Calibration batches from the *training* split, for data-driven strategies.
    calibration: Any = None
    cache_dir: str | None = None
    # Cache keys and provenance (model fingerprint, data hash) for data-driven strategies.
    fingerprints: dict[str, str] = field(default_factory=dict)
    # The run's data settings (`config.DataSettings`: source, options): what a strategy may
    # know of the task; `oracle` reads a planted task's sites from it.
    data: Any = None
    # Anything a strategy wants recorded with the run (probe cost, scores, ...).
    report: dict[str, Any] = field(default_factory=dict)

    def apportion(self, shares: Mapping[str, float]) -> dict[str, int]:
        """Shares of the parameter budget → ranks, with this context's bounds."""
        return apportion(
            self.inventory,
            shares,
            self.budget.params,
            min_rank=self.min_rank,
            max_rank=self.max_rank,
        )


StrategyFn = Callable[..., dict[str, int]]


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: StrategyFn
    needs_weights: bool  # must the real weights be loaded (not just the meta skeleton)?
    needs_data: bool  # does it read calibration batches from the training split?
    summary: str

    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `params`; an unknown name is a user error."""
        defaults = self.defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            raise UserError(
                f"strategy {self.name!r} has no parameter(s) {', '.join(unknown)}; known: {known}"
            )
        for name, value in params.items():
            _check_type(self.name, name, value, defaults[name])
        return {**defaults, **params}


def _check_type(strategy: str, name: str, value: Any, default: Any) -> None:
    """A parameter must have its default's type (an integer may stand for a number)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (isinstance(default, float) or isinstance(value, int))
    else:
        return  # None or a structured default: the strategy checks it itself
    if not ok:
        kind = type(default).__name__.replace("float", "number").replace("int", "whole number")
        raise UserError(f"strategy {strategy!r} parameter {name} must be a {kind}, got {value!r}")


STRATEGIES: dict[str, Strategy] = {}


def register(
    name: str, *, needs_weights: bool = False, needs_data: bool = False
) -> Callable[[StrategyFn], StrategyFn]:
    """Register a strategy function under `name` (its docstring's first line is its summary)."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        STRATEGIES[name] = Strategy(name, fn, needs_weights or needs_data, needs_data, summary)
        return fn

    return wrap


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UserError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        )
    return STRATEGIES[name]


@dataclass
class Allocation:
    """A strategy's answer, with everything a table, a plot or a run record needs."""

    strategy: str
    params: dict[str, Any]
    budget: Budget
    inventory: list[ModuleInfo]
    ranks: dict[str, int]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return total_params(self.inventory, self.ranks)

    @property
    def deviation_pct(self) -> float:
        return 100.0 * (self.total_params - self.budget.params) / self.budget.params

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "layer": m.layer,
                "kind": m.kind,
                "group": m.group,
                "d_in": m.d_in,
                "d_out": m.d_out,
                "rank": self.ranks[m.name],
                "params": self.ranks[m.name] * m.cost_per_rank,
            }
            for m in self.inventory
        ]

    def sums_by(self, key: str) -> dict[Any, dict[str, int]]:
        """Per-`layer` or per-`kind` sums of rank and parameters, in first-seen order."""
        sums: dict[Any, dict[str, int]] = defaultdict(
            lambda: {"rank": 0, "params": 0, "modules": 0}
        )
        for row in self.rows():
            entry = sums[row[key]]
            entry["rank"] += row["rank"]
            entry["params"] += row["params"]
            entry["modules"] += 1
        return dict(sums)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "strategy_params": self.params,
            "budget": self.budget.to_dict(),
            "budget_params": self.budget.params,
            "total_params": self.total_params,
            "deviation_pct": self.deviation_pct,
            "modules": [
                {k: r[k] for k in ("name", "layer", "kind", "rank", "params")} for r in self.rows()
            ],
            "per_layer": {str(k): v for k, v in self.sums_by("layer").items()},
            "per_kind": self.sums_by("kind"),
            "report": self.report,
        }


def allocate(
    name: str, ctx: AllocationContext, params: Mapping[str, Any] | None = None
) -> Allocation:
    """Run strategy `name` in `ctx` and check the research rules on its answer."""
    strategy = get_strategy(name)
    resolved = strategy.check_params(dict(params or {}))
    ranks = strategy.fn(ctx, **resolved)
    names = [m.name for m in ctx.inventory]
    if sorted(ranks) != sorted(names):
        raise RuntimeError(f"strategy {name} did not assign exactly the inventory's modules")
    # An inventory with unclassified projections says so in every allocation's report.
    report = {**inventory_report(ctx.inventory), **ctx.report}
    allocation = Allocation(name, resolved, ctx.budget, list(ctx.inventory), dict(ranks), report)
    gap = abs(allocation.total_params - ctx.budget.params)
    if gap > tolerance(ctx.inventory, ctx.budget.params):
        raise RuntimeError(
            f"strategy {name} missed the budget by {gap} parameters ({allocation.deviation_pct:.3f}%)"
        )
    return allocation
