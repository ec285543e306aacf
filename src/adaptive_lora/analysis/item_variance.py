"""The test items' part of the variance of a mean difference over seeds × items.

When every seed is scored on the same test items (a fixed split), the mean difference

    D̄ = mean over seeds s and items i of d_si,   d_si = m + a_s + b_i + e_si

carries the items' effects b_i once for the whole study: more seeds never average them
away. Its variance is σ_a²/S + σ_b²/I + σ_e²/(S·I). A paired t over the seeds' means
estimates only σ_a²/S + σ_e²/(S·I) (a seed mean's variance is σ_a² + σ_e²/I), so a
sequential design on seeds alone tests the mean on *these* items. The unit seeds × items
adds the items' part, estimated by the two-way ANOVA moments of the crossed table
without replication (Searle, Casella & McCulloch 1992, "Variance Components", §4.5):

    MS_items = S · Σ_i (d̄_·i − D̄)² / (I − 1),  E = S·σ_b² + σ_e²
    MS_resid = Σ_si (d_si − d̄_s· − d̄_·i + D̄)² / ((S − 1)(I − 1)),  E = σ_e²

so σ̂_b²/I = max(0, MS_items − MS_resid) / (S·I), truncated at 0 as a variance must be.
The sum s²/S + σ̂_b²/I is then an unbiased estimate of Var(D̄) before truncation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["item_share_by_look", "item_variance_of_mean", "two_way_mean_squares"]


def two_way_mean_squares(table: np.ndarray) -> tuple[float, float, float]:
    """(MS_seeds, MS_items, MS_resid) of a complete seeds × items table (S, I >= 2)."""
    d = np.asarray(table, dtype=float)
    n_seeds, n_items = d.shape
    grand = d.mean()
    seed_means, item_means = d.mean(axis=1), d.mean(axis=0)
    ms_seeds = n_items * float(((seed_means - grand) ** 2).sum()) / (n_seeds - 1)
    ms_items = n_seeds * float(((item_means - grand) ** 2).sum()) / (n_items - 1)
    resid = d - seed_means[:, None] - item_means[None, :] + grand
    ms_resid = float((resid**2).sum()) / ((n_seeds - 1) * (n_items - 1))
    return ms_seeds, ms_items, ms_resid


def item_variance_of_mean(table: np.ndarray) -> float:
    """σ̂_b²/I: the items' part of Var(D̄) for a seeds × items table of differences.

    NaN when the table has fewer than two seeds or two items, or any value is not
    finite (no estimate, rather than a wrong one)."""
    d = np.asarray(table, dtype=float)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2 or not np.isfinite(d).all():
        return float("nan")
    _, ms_items, ms_resid = two_way_mean_squares(d)
    return max(0.0, ms_items - ms_resid) / d.size


def item_share_by_look(table: np.ndarray, looks: Sequence[int]) -> np.ndarray:
    """`item_variance_of_mean` of the first n seeds (rows) for each look's n; NaN for a
    look the table does not reach yet."""
    d = np.asarray(table, dtype=float)
    out = np.full(len(looks), np.nan)
    for k, n in enumerate(looks):
        if d.ndim == 2 and d.shape[0] >= n:
            out[k] = item_variance_of_mean(d[:n])
    return out
