"""The baseline's gain per doubling of the parameter budget, from per-seed losses.

A *series* is the baseline's budgets in order of parameters, each
`{"budget", "params", "test_loss": {"values": {seed: loss}}}`. Its gain per doubling:

* per step of the ladder, paired by seed: (loss at the smaller budget − loss at the
  larger) / log2(larger / smaller parameters), its mean, sd and 95% t interval;
* over the whole ladder, per seed: minus the least-squares slope of test loss on
  log2(parameters); the mean over seeds with its sd and 95% t interval.

A gain is *established* when its interval lies above 0. The report's regime map
(`report/regime.py`) and `plan`'s seeds for the ladder (`study/power_plan.py`) read it:
`GainPerDoubling` with its `GainStep`s and `GainInterval`s, written to stats.json in
field order (`jsonable.to_jsonable`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adaptive_lora.analysis.descriptive import mean_ci_t
from adaptive_lora.analysis.jsonable import KeyedRecord

__all__ = [
    "GainInterval",
    "GainPerDoubling",
    "GainStep",
    "gain_interval",
    "gain_per_doubling",
    "read_gain",
]


@dataclass(frozen=True)
class GainInterval(KeyedRecord):
    """Per-seed gains per doubling: their number, mean, sd and 95% t interval."""

    n: int
    mean: float
    sd: float
    ci_t: list[float]
    established: bool  # the interval lies above 0


@dataclass(frozen=True)
class GainStep(KeyedRecord):
    """One step of the ladder, paired by seed; `from_` is the smaller budget (`from`)."""

    from_: str = field(metadata={"key": "from"})
    to: str
    doublings: float
    n: int
    mean: float
    sd: float
    ci_t: list[float]
    established: bool


@dataclass(frozen=True)
class GainPerDoubling(KeyedRecord):
    """The baseline's gain per doubling per step, and over the whole ladder (the slope)."""

    steps: list[GainStep]
    overall: GainInterval


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)  # stats.json writes NaN as null


def _interval_of(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n": int(data["n"]),
        "mean": _float(data["mean"]),
        "sd": _float(data["sd"]),
        "ci_t": [_float(v) for v in data["ci_t"]],
        "established": bool(data["established"]),
    }


def read_gain(data: GainPerDoubling | Mapping[str, Any]) -> GainPerDoubling:
    """A gain per doubling as computed, or read back from its stats.json form (nulls for
    NaN), so that a report drawn from a written stats.json reads the same attributes."""
    if isinstance(data, GainPerDoubling):
        return data
    steps = [
        GainStep(s["from"], s["to"], float(s["doublings"]), **_interval_of(s))
        for s in data["steps"]
    ]
    return GainPerDoubling(steps, GainInterval(**_interval_of(data["overall"])))


def _finite_pairs(small: dict, large: dict) -> list[tuple[float, float]]:
    seeds = sorted(set(small) & set(large), key=str)
    return [
        (float(small[s]), float(large[s]))
        for s in seeds
        if math.isfinite(float(small[s])) and math.isfinite(float(large[s]))
    ]


def gain_interval(values: list[float]) -> GainInterval:
    """Mean, sd and 95% t interval of per-seed gains; established when it lies above 0."""
    if not values:
        return GainInterval(0, math.nan, math.nan, [math.nan, math.nan], False)
    low, high = mean_ci_t(values) if len(values) > 1 else (math.nan, math.nan)
    return GainInterval(
        n=len(values),
        mean=float(np.mean(values)),
        sd=float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
        ci_t=[low, high],
        established=bool(math.isfinite(low) and low > 0),
    )


def _sized(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rungs whose parameter count is known: a doubling needs a finite, positive size."""
    return [s for s in series if math.isfinite(float(s["params"])) and float(s["params"]) > 0]


def gain_per_doubling(series: list[dict[str, Any]]) -> GainPerDoubling:
    """Per step and over the ladder: the baseline's test-loss gain per doubling of budget.

    A budget whose parameter count is unknown (not finite) is no rung: its distance from
    its neighbours in doublings is undefined. Two budgets of the same size make no step.
    """
    series = _sized(series)
    steps = []
    for small, large in zip(series, series[1:]):
        doublings = math.log2(large["params"] / small["params"])
        if doublings <= 0:
            continue
        pairs = _finite_pairs(small["test_loss"]["values"], large["test_loss"]["values"])
        g = gain_interval([(a - b) / doublings for a, b in pairs])
        steps.append(GainStep(small["budget"], large["budget"], doublings,
                              g.n, g.mean, g.sd, g.ci_t, g.established))  # fmt: skip
    slopes = []
    x = np.log2([s["params"] for s in series])
    if len(set(x.tolist())) >= 2:  # a slope needs two sizes at least
        seeds = set.intersection(*(set(s["test_loss"]["values"]) for s in series))
        for seed in sorted(seeds, key=str):
            y = np.array([float(s["test_loss"]["values"][seed]) for s in series])
            if np.all(np.isfinite(y)):
                slopes.append(-float(np.polyfit(x, y, 1)[0]))
    return GainPerDoubling(steps, gain_interval(slopes))
