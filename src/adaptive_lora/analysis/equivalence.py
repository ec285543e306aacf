"""Equivalence of paired samples: two one-sided t-tests (TOST) against a stated margin.

Schuirmann 1987, "A comparison of the two one-sided tests procedure and the power
approach for assessing the equivalence of average bioavailability". With paired
differences d (n of them, mean d̄, standard error s/√n) and a margin δ > 0, the two
nulls are mean ≤ −δ and mean ≥ +δ; equivalence is concluded when both are rejected at
α, i.e. when the (1 − 2α) t interval of the mean lies inside (−δ, +δ). So the tightest
margin the data support at α is the larger absolute end of that interval: every wider
margin is passed, every narrower one is not (`tightest_margin`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as st


def tost_paired(diffs: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """TOST of the paired differences `diffs` against ±`margin` (see module doc).

    Returns n, mean, the (1 − 2α) interval, both one-sided t statistics and p-values,
    the TOST p-value (the larger of the two), `equivalent` (p < α) and
    `tightest_margin` (the larger |end| of the interval: the smallest margin TOST at α
    would pass). With fewer than two differences, or no spread, the p-values and the
    tightest margin are NaN and `equivalent` is None.
    """
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be > 0, got {margin}")
    d = np.asarray(list(diffs), dtype=float)
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "margin": float(margin), "alpha": alpha}
    mean = float(np.mean(d)) if n else math.nan
    se = float(np.std(d, ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    out["mean"] = mean
    if not (n >= 2 and se > 0):
        nan = math.nan
        out.update(ci=[nan, nan], t_lower=nan, t_upper=nan, p_lower=nan, p_upper=nan, p=nan)
        out["equivalent"] = None
        out["tightest_margin"] = nan
        return out
    df = n - 1
    t_lower = (mean + margin) / se  # H0: mean <= -margin
    t_upper = (mean - margin) / se  # H0: mean >= +margin
    p_lower = float(st.t.sf(t_lower, df))
    p_upper = float(st.t.cdf(t_upper, df))
    half = float(st.t.ppf(1 - alpha, df)) * se
    out.update(
        ci=[mean - half, mean + half],
        t_lower=t_lower,
        t_upper=t_upper,
        p_lower=p_lower,
        p_upper=p_upper,
        p=max(p_lower, p_upper),
    )
    out["equivalent"] = bool(out["p"] < alpha)
    out["tightest_margin"] = max(abs(mean - half), abs(mean + half))
    return out
