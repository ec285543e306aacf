"""One-sample summaries: interquartile mean, ``describe`` and the t interval of a mean.

The IQM is the mean of the middle 50 % of the values, ``scipy.stats.trim_mean(x, 0.25)``,
as recommended by Agarwal et al. (2021), "Deep reinforcement learning at the edge of the
statistical precipice", NeurIPS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from adaptive_lora.analysis.values import NAN

__all__ = ["describe", "iqm", "mean_ci_t"]


def iqm(values: Sequence[float] | np.ndarray, axis: int | None = None) -> Any:
    """Interquartile mean: mean of the middle 50 % of the values.

    Defined exactly as in Agarwal et al. (2021) and their ``rliable`` library:
    ``scipy.stats.trim_mean(x, 0.25)``, which cuts ``int(0.25 * n)`` values from each end
    (so with n = 4 it averages the middle 2, with n = 5 the middle 3).
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return NAN
    return _st.trim_mean(x, 0.25, axis=axis)


def describe(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Summary of one sample: ``n, mean, median, iqm, std, min, max``.

    ``std`` uses ddof = 1 (NaN when n < 2); everything but ``n`` is NaN when n = 0.
    ``iqm`` is the interquartile mean (Agarwal et al. 2021; ``trim_mean(x, 0.25)``).
    """
    x = np.asarray(list(values), dtype=float).ravel()
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": NAN, "median": NAN, "iqm": NAN, "std": NAN, "min": NAN, "max": NAN}
    return {
        "n": n,
        "mean": float(np.mean(x)),
        "median": float(np.median(x)),
        "iqm": float(iqm(x)),
        "std": float(np.std(x, ddof=1)) if n >= 2 else NAN,
        "min": float(np.min(x)),
        "max": float(np.max(x)),
    }


def mean_ci_t(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> list[float]:
    """Student-t interval of the mean of one sample ([NaN, NaN] when n < 2)."""
    x = np.asarray(list(values), dtype=float).ravel()
    if x.size < 2:
        return [NAN, NAN]
    mean, se = float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(x.size))
    half = float(_st.t.ppf(0.5 + confidence / 2, x.size - 1)) * se
    return [mean - half, mean + half]
