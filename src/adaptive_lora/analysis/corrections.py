"""Multiple-comparison correction: Holm's step-down adjusted p-values.

Holm 1979, "A simple sequentially rejective multiple test procedure", Scand. J.
Statistics 6:65-70.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adaptive_lora.analysis.values import as_float

__all__ = ["holm"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order.

    With the m non-NaN p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted
    value of p_(i) is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: monotone in the
    ordering and capped at 1. NaN (a comparison without a test) passes through untouched
    and is not counted in the family size m. Equals
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]`` on non-NaN input.
    """
    p = np.asarray([as_float(x) for x in pvalues], dtype=float)
    out = p.copy()
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return [float(x) for x in out]
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1]: {list(pvalues)}")
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[ok], kind="stable")]
    factors = m - np.arange(m)  # m, m-1, ..., 1
    adj = np.minimum(1.0, np.maximum.accumulate(factors * p[order]))
    out[order] = adj
    return [float(x) for x in out]
