"""Paired bootstrap intervals of the mean and IQM of differences: percentile and BCa.

BCa with jackknife acceleration: Efron 1987, "Better bootstrap confidence intervals",
JASA 82:171-185; Efron & Tibshirani 1993, ch. 14. Resampling whole seeds keeps the
pairs together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as _st

from adaptive_lora.analysis.descriptive import iqm
from adaptive_lora.analysis.values import NAN

__all__ = ["paired_bootstrap"]


def _bca_from_distribution(
    data: np.ndarray, stat_fn: Any, theta_hat: float, theta_b: np.ndarray, alpha: float
) -> list[float]:
    """BCa interval (Efron 1987) from a bootstrap distribution, jackknife acceleration.

    z0 = Phi^-1(fraction of theta* below theta_hat, ties counted half);
    a = sum(U^3) / (6 * sum(U^2)**1.5) with U_i = mean(theta_(.)) - theta_(i) over the
    leave-one-out estimates; the interval is the alpha1- and alpha2-quantiles of theta*,
    alpha_k = Phi(z0 + (z0 + z_k) / (1 - a (z0 + z_k))). Same conventions as
    ``scipy.stats.bootstrap(method="BCa")``.
    """
    b = theta_b.size
    frac = np.count_nonzero(theta_b < theta_hat) + np.count_nonzero(theta_b <= theta_hat)
    z0 = float(_st.norm.ppf(frac / (2.0 * b)))
    n = data.size
    jack = np.array([stat_fn(np.delete(data, i)) for i in range(n)], dtype=float)
    u = jack.mean() - jack
    den = float(np.sum(u**2))
    a = float(np.sum(u**3) / (6.0 * den**1.5)) if den > 0 else 0.0
    z_lo = float(_st.norm.ppf(alpha / 2))
    z_hi = -z_lo
    with np.errstate(invalid="ignore", divide="ignore"):
        a1 = _st.norm.cdf(z0 + (z0 + z_lo) / (1 - a * (z0 + z_lo)))
        a2 = _st.norm.cdf(z0 + (z0 + z_hi) / (1 - a * (z0 + z_hi)))
    if not (np.isfinite(a1) and np.isfinite(a2)):
        return [NAN, NAN]
    lo, hi = np.percentile(theta_b, [100 * a1, 100 * a2])
    return [float(lo), float(hi)]


def paired_bootstrap(
    diffs: np.ndarray, n_boot: int, seed: int | None, alpha: float
) -> dict[str, list[float]]:
    """Paired bootstrap of the mean and IQM of the differences.

    Whole seeds are resampled with replacement (``rng.integers(0, n, (n_boot, n))``, the
    same draw as ``scipy.stats.bootstrap`` with ``rng=np.random.default_rng(seed)``), so
    strategy and baseline values stay paired. Keys: ``mean_percentile``, ``mean_bca``,
    ``iqm_percentile``, ``iqm_bca``.
    """
    n = diffs.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    res = diffs[idx]
    out: dict[str, list[float]] = {}
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    for name, fn in (("mean", np.mean), ("iqm", iqm)):
        theta_b = np.asarray(fn(res, axis=1), dtype=float)
        theta_hat = float(fn(diffs))
        out[f"{name}_percentile"] = [float(v) for v in np.percentile(theta_b, q)]
        out[f"{name}_bca"] = _bca_from_distribution(diffs, fn, theta_hat, theta_b, alpha)
    return out
