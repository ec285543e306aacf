"""Power: the minimum detectable effect d_z of a two-sided paired t-test at 80 % power.

Cohen 1988, "Statistical power analysis for the behavioral sciences", 2nd ed.; computed
with statsmodels' ``TTestPower``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from statsmodels.stats.power import TTestPower

from adaptive_lora.analysis.values import NAN

__all__ = ["POWER", "minimum_detectable_d_z"]

POWER = 0.8


def minimum_detectable_d_z(n: int, alpha: float, power: float = POWER) -> float:
    """Smallest |d_z| a two-sided paired t-test at ``alpha`` detects with ``power``, n pairs.

    NaN when statsmodels finds no positive finite solution; statsmodels' own errors
    propagate (the caller reports them). Its warnings are silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mde = float(
            np.asarray(
                TTestPower().solve_power(
                    effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"
                )
            ).item()
        )
    return mde if math.isfinite(mde) and mde > 0 else NAN
