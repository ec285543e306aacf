"""A two-level bootstrap over seeds × test items for the mean difference of two strategies.

Intervals over seeds alone say how the result would move with other seeds on *this*
test set; a reader also cares about other test items. With per-item records (every
seed of both strategies scored on the same items), the mean difference

    D̄ = mean over seeds s and items i of (strategy[s, i] − baseline[s, i])

varies through both. The seeds and the items are *crossed* (every seed sees every
item), so a replicate resamples the seeds with replacement and, independently, the
items with replacement, and uses the same item indices for every seed and for both
arms: the "pigeonhole" bootstrap of a crossed design (Owen 2007, "The pigeonhole
bootstrap", Annals of Applied Statistics 1:386-411; McCullagh 2000, "Resampling and
exchangeable arrays", Bernoulli 6:285-301). Resampling items separately within each
seed would treat an item's effect as new on every seed and understate the item part
of the variance. Writing the differences as d_si = m + r_s + c_i + e_si (seed and
item effects, and a doubly centred remainder), the bootstrap variance of the mean is
exactly v(r)/S + v(c)/I + mean(e²)/(S·I) (v the variance with divisor S or I; the
two draws are independent and the counts' covariances cancel on centred effects).
For data from y = μ + a_s + b_i + ε_si that is about σ_a²/S + σ_b²/I + 3σ_ε²/(S·I)
(the seed and item means each carry the interaction once more) against the true
σ_a²/S + σ_b²/I + σ_ε²/(S·I): slightly conservative in the interaction term, and a
percentile interval with few seeds is a little narrow in the seed term, as any
bootstrap is (McCullagh 2000 shows no resampling scheme is exact for crossed arrays).

Pairing: the differences are taken per (seed, item) before resampling, so the two
arms always share both indices. The interval is the percentile interval of the
replicates' means; the generator is ``numpy.random.default_rng(seed)``.

A replicate's mean is computed without building the resampled array: with c_s the
number of times seed s is drawn and c_i the count of item i, the resampled mean is
c_sᵀ D c_i / (S·I), one matrix product per chunk of replicates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["hierarchical_bootstrap", "two_level_bootstrap_means"]

CHUNK = 2000  # replicates per matrix product: bounds memory at CHUNK × items floats


def _draw_counts(rng: np.random.Generator, size: int, reps: int) -> np.ndarray:
    """(reps, size) counts of each index in ``reps`` draws of ``size`` with replacement."""
    idx = rng.integers(0, size, (reps, size))
    flat = idx + size * np.arange(reps)[:, None]  # a distinct bin range per replicate
    return np.bincount(flat.ravel(), minlength=reps * size).reshape(reps, size)


def two_level_bootstrap_means(diffs: np.ndarray, n_boot: int, seed: int | None) -> np.ndarray:
    """Means of ``n_boot`` two-level resamples of a (seeds, items) array of differences.

    Per replicate: seed indices drawn with replacement, then item indices drawn with
    replacement (the same for every seed), in chunks of ``CHUNK`` replicates from one
    ``default_rng(seed)``.
    """
    d = np.asarray(diffs, dtype=float)
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(int(n_boot))
    for start in range(0, out.size, CHUNK):
        reps = min(CHUNK, out.size - start)
        seed_counts = _draw_counts(rng, n_seeds, reps)
        item_counts = _draw_counts(rng, n_items, reps)
        out[start : start + reps] = np.einsum("rs,si,ri->r", seed_counts, d, item_counts)
    return out / (n_seeds * n_items)


def hierarchical_bootstrap(
    baseline: Any,
    strategy: Any,
    *,
    n_boot: int = 10000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Two-level (seeds × items) percentile bootstrap interval of strategy − baseline.

    Parameters
    ----------
    baseline, strategy
        Arrays of shape (seeds, items): the per-item metric of each arm, row s from
        seed s of both arms and column i from test item i of both (paired by seed and
        item). Values must be finite.
    n_boot, seed
        Bootstrap replicates and the seed of ``numpy.random.default_rng``.
    alpha
        The interval is the (1 − alpha) percentile interval.

    Returns
    -------
    ``n_seeds, n_items, mean_diff`` (the mean of all differences), ``ci`` ([low, high]
    of the mean difference), ``se`` (sd of the replicate means), ``alpha``,
    ``confidence``, ``n_boot``, ``boot_seed`` and ``method`` (a label for the report).
    """
    b = np.asarray(baseline, dtype=float)
    s = np.asarray(strategy, dtype=float)
    if b.ndim != 2 or b.shape != s.shape:
        raise ValueError(
            f"baseline and strategy must be (seeds, items) arrays of one shape, "
            f"got {b.shape} and {s.shape}"
        )
    if b.size == 0 or not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError("per-item records must be non-empty and finite")
    if not 0 < alpha < 1 or int(n_boot) < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got {alpha}, {n_boot}")
    d = s - b
    means = two_level_bootstrap_means(d, int(n_boot), seed)
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {
        "n_seeds": int(d.shape[0]),
        "n_items": int(d.shape[1]),
        "mean_diff": float(d.mean()),
        "ci": [float(low), float(high)],
        "se": float(means.std(ddof=1)) if means.size > 1 else float("nan"),
        "alpha": float(alpha),
        "confidence": 1.0 - float(alpha),
        "n_boot": int(n_boot),
        "boot_seed": seed,
        "method": "two-level percentile bootstrap (seeds, then items shared across seeds)",
    }
