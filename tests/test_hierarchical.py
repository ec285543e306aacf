"""The two-level (seeds × items) bootstrap against closed forms and simulated coverage."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive_lora.analysis.hierarchical import hierarchical_bootstrap, two_level_bootstrap_means


def _exact_bootstrap_variance(d: np.ndarray) -> float:
    """Var of the two-level bootstrap mean, in closed form.

    Decompose d = m + r_s + c_i + e (two-way ANOVA, e doubly centred). Seed counts are
    Multinomial(S, 1/S), item counts Multinomial(I, 1/I), independent; with
    E[c cᵀ] = (1 − 1/S) J + Id and every effect summing to 0, the mean of the resample
    has variance sum(r²)/S² + sum(c²)/I² + sum(e²)/(S I)².
    """
    s, i = d.shape
    m = d.mean()
    r = d.mean(axis=1) - m
    c = d.mean(axis=0) - m
    e = d - m - r[:, None] - c[None, :]
    return float((r**2).sum() / s**2 + (c**2).sum() / i**2 + (e**2).sum() / (s * i) ** 2)


@pytest.mark.parametrize("shape", [(5, 7), (3, 40), (12, 2)])
def test_bootstrap_variance_and_mean_match_the_closed_form(shape):
    rng = np.random.default_rng(sum(shape))
    d = rng.standard_normal(shape) * rng.uniform(0.2, 2.0, shape) + rng.standard_normal(shape[1])
    reps = 60_000
    means = two_level_bootstrap_means(d, reps, seed=1)
    exact = _exact_bootstrap_variance(d)
    # sd of a sample variance of ~normal values: var * sqrt(2 / reps); allow 4 of those
    assert means.var() == pytest.approx(exact, rel=4 * np.sqrt(2 / reps) + 0.01)
    assert means.mean() == pytest.approx(d.mean(), abs=4 * np.sqrt(exact / reps))


def test_items_shared_across_seeds_keep_the_item_variance():
    # every seed sees the same item effects: the resample must move them together, so
    # the variance is var(c)/I, not var(c)/(S I) as when items were drawn per seed
    items = np.linspace(-1.0, 1.0, 20)
    d = np.tile(items, (10, 1))
    means = two_level_bootstrap_means(d, 40_000, seed=2)
    assert means.var() == pytest.approx(items.var() / 20, rel=0.05)


def test_interval_pairs_the_arms_and_is_seeded():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 30))
    strat = base + 0.1 + 0.05 * rng.standard_normal((6, 30))
    a = hierarchical_bootstrap(base, strat, n_boot=2000, seed=3)
    b = hierarchical_bootstrap(base, strat, n_boot=2000, seed=3)
    flipped = hierarchical_bootstrap(strat, base, n_boot=2000, seed=3)
    assert a == b
    assert flipped["ci"] == pytest.approx([-a["ci"][1], -a["ci"][0]])
    # pairing: the large shared base variation cancels, the interval is narrow
    assert a["ci"][1] - a["ci"][0] < 0.1
    assert a["ci"][0] < a["mean_diff"] < a["ci"][1]
    constant = hierarchical_bootstrap(base, base + 0.25, n_boot=500, seed=0)
    assert constant["ci"] == pytest.approx([0.25, 0.25])


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        hierarchical_bootstrap(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError):
        hierarchical_bootstrap(np.zeros((3, 4)), np.full((3, 4), np.nan))


def _coverage(interval_fn, truth=0.3, datasets=400, seeds=20, items=50):
    """Share of simulated studies whose 95% interval holds the true mean difference.

    Differences follow truth + a_s + b_i + e_si with sd 0.5 (seed), 1.0 (item) and
    1.0 (interaction): the true variance of the mean is 0.0125 + 0.02 + 0.001.
    """
    rng = np.random.default_rng(77)
    hits = 0
    for k in range(datasets):
        d = (
            truth
            + 0.5 * rng.standard_normal((seeds, 1))
            + 1.0 * rng.standard_normal((1, items))
            + 1.0 * rng.standard_normal((seeds, items))
        )
        low, high = interval_fn(d, k)
        hits += low <= truth <= high
    return hits / datasets


def test_coverage_is_near_95_percent_by_simulation():
    def two_level(d, k):
        return hierarchical_bootstrap(np.zeros_like(d), d, n_boot=1000, seed=k)["ci"]

    coverage = _coverage(two_level)
    assert 0.92 <= coverage <= 0.98  # 400 studies: MC sd about 0.011


def test_the_coverage_check_catches_a_seeds_only_bootstrap():
    # the same check fails an interval that ignores the items (rows resampled only)
    def seeds_only(d, k):
        rng = np.random.default_rng(k)
        rows = d.mean(axis=1)
        means = rows[rng.integers(0, rows.size, (1000, rows.size))].mean(axis=1)
        return np.percentile(means, [2.5, 97.5])

    assert _coverage(seeds_only) < 0.85
