"""Pairing by seed: which seeds two runs share, and their differences.

Seeds from JSON (``"3"``) pair with int seeds (``3``); a seed present on one side only,
or with a non-finite value on either side, is dropped and listed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from adaptive_lora.analysis.values import as_float

__all__ = ["Pairs", "pair_by_seed"]


def _normalise_seed(k: Any) -> Any:
    """Seeds as ints where possible, so that ``{"3": x}`` (from JSON) pairs with ``{3: y}``."""
    if isinstance(k, (bool, np.bool_)):
        return k
    if isinstance(k, (int, np.integer)):
        return int(k)
    if isinstance(k, str):
        s = k.strip()
        if s.lstrip("+-").isdigit():
            return int(s)
    return k


def _seed_sort_key(k: Any) -> tuple[int, Any]:
    return (0, k) if isinstance(k, int) else (1, str(k))


def _normalise_runs(d: Mapping[Any, Any], what: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for k, v in d.items():
        key = _normalise_seed(k)
        if key in out:
            raise ValueError(f"{what}: seed {k!r} appears twice")
        out[key] = as_float(v)
    return out


@dataclass
class Pairs:
    """The paired seeds of a strategy and its baseline, and what was dropped."""

    seeds: list[Any]
    only_in_strategy: list[Any]
    only_in_baseline: list[Any]
    non_finite: list[Any]
    strategy: np.ndarray
    baseline: np.ndarray
    diffs: np.ndarray  # strategy - baseline, rounding-level differences set to 0
    tol: float  # what counted as rounding level

    @property
    def n(self) -> int:
        return int(self.diffs.size)

    def dropped_warnings(self) -> list[str]:
        """One sentence per kind of dropped seed."""
        warns = []
        if self.only_in_strategy:
            warns.append(f"seeds only in the strategy, dropped: {self.only_in_strategy}")
        if self.only_in_baseline:
            warns.append(f"seeds only in the baseline, dropped: {self.only_in_baseline}")
        if self.non_finite:
            warns.append(f"seeds with a non-finite value (failed run?), dropped: {self.non_finite}")
        return warns


def pair_by_seed(strategy: Mapping[Any, float], baseline: Mapping[Any, float]) -> Pairs:
    """Pair ``{seed: value}`` maps on their common seeds with finite values, in seed order."""
    s = _normalise_runs(strategy, "strategy")
    b = _normalise_runs(baseline, "baseline")
    common = sorted(set(s) & set(b), key=_seed_sort_key)
    only_s = sorted(set(s) - set(b), key=_seed_sort_key)
    only_b = sorted(set(b) - set(s), key=_seed_sort_key)
    non_finite = [k for k in common if not (math.isfinite(s[k]) and math.isfinite(b[k]))]
    seeds = [k for k in common if k not in non_finite]
    xs = np.array([s[k] for k in seeds], dtype=float)
    xb = np.array([b[k] for k in seeds], dtype=float)
    diffs = xs - xb
    n = int(diffs.size)
    # Differences at the level of floating-point rounding of the raw values count as 0
    # (e.g. x + 0.01 - x is not exactly 0.01), so "all equal" and "zero" are robust.
    tol = 64 * np.finfo(float).eps * float(np.max(np.abs(np.r_[xs, xb]))) if n else 0.0
    diffs = np.where(np.abs(diffs) <= tol, 0.0, diffs)
    return Pairs(seeds, only_s, only_b, non_finite, xs, xb, diffs, tol)
