"""Seed planning against statsmodels, scipy, a published PowerTOST result and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from adaptive_lora.analysis.planning import (
    _tost_power_exact,
    plan_comparison,
    seeds_for_t_test,
    seeds_for_tost,
    t_test_power,
    tost_power,
    wilcoxon_floor,
    wilcoxon_reach,
)

SM_ALTERNATIVE = {"two-sided": "two-sided", "greater": "larger", "less": "larger"}


@pytest.mark.parametrize(
    ("n", "d", "alpha", "family", "alternative"),
    [
        (5, 0.8, 0.05, 1, "two-sided"),
        (12, 0.5, 0.05, 8, "two-sided"),
        (30, 0.3, 0.01, 1, "greater"),
        (9, 1.2, 0.05, 4, "less"),
    ],
)
def test_t_test_power_matches_statsmodels(n, d, alpha, family, alternative):
    sd = 0.004  # in metric units: the power depends on effect / sd only
    ours = t_test_power(n, d * sd, sd, alpha=alpha, family_size=family, alternative=alternative)
    ref = TTestPower().power(d, n, alpha / family, alternative=SM_ALTERNATIVE[alternative])
    assert ours == pytest.approx(float(ref), rel=1e-9)


def test_a_clear_effects_power_is_near_one_not_nan():
    """effect/sd = 3.75 at 20 pairs (the Gemma replication's linear_decay at r4): scipy's
    noncentral-t cdf (and so statsmodels) gives NaN for the far tail; the power is the
    simulated rejection rate of the paired t-test at α/7, i.e. all but certain."""
    n, d, level = 20, 3.75, 0.05 / 7
    assert math.isnan(TTestPower().power(d, n, level, alternative="two-sided"))
    ours = t_test_power(n, d * 0.0008, 0.0008, family_size=7)
    rng = np.random.default_rng(0)
    diffs = rng.normal(d, 1.0, size=(4000, n))
    p = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert ours == pytest.approx(float(np.mean(p < level)), abs=1e-3)
    assert ours >= t_test_power(10, d * 0.0008, 0.0008, family_size=7)
    plan = plan_comparison(0.0008, n, smallest_effect=0.003, family_size=7)
    assert not any("t-test" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("d", "power", "family", "alternative"),
    [(0.5, 0.8, 1, "two-sided"), (0.8, 0.9, 8, "two-sided"), (0.3, 0.8, 3, "greater")],
)
def test_seeds_for_t_test_is_statsmodels_solution_rounded_up(d, power, family, alternative):
    n = seeds_for_t_test(d, 1.0, power=power, family_size=family, alternative=alternative)
    solved = TTestPower().solve_power(
        d, None, 0.05 / family, power, alternative=SM_ALTERNATIVE[alternative]
    )
    assert n == math.ceil(float(solved))
    assert TTestPower().power(d, n, 0.05 / family, alternative=SM_ALTERNATIVE[alternative]) >= power
    assert (
        TTestPower().power(d, n - 1, 0.05 / family, alternative=SM_ALTERNATIVE[alternative]) < power
    )


def test_no_effect_needs_infinitely_many_seeds():
    assert seeds_for_t_test(0.0, 1.0) is None


def test_tost_power_matches_a_published_powertost_example():
    # PowerTOST (Labes, Schütz & Lang; exact power via Owen's Q):
    # sampleN.TOST(theta0 = 0.95, CV = 0.20, design = "2x2") gives 20 subjects with
    # achieved power 0.8346802 (the printed output is quoted in the BEBA forum,
    # forum.bebac.at entry 23749). A 2x2 crossover on the log scale: limits log(0.8),
    # log(1.25), true difference log(0.95), sigma_w^2 = log(1 + CV^2),
    # se = sigma_w * sqrt(2 / n), df = n - 2.
    n = 20
    sigma_w = math.sqrt(math.log(1 + 0.20**2))
    power = _tost_power_exact(
        math.log(0.8), math.log(1.25), math.log(0.95), sigma_w * math.sqrt(2 / n), n - 2, 0.05
    )
    assert power == pytest.approx(0.8346802, abs=5e-7)


def _simulated_tost_power(n, margin, sd, true_diff, level, sims, seed):
    """TOST decided by scipy's one-sample t-tests on simulated paired differences."""
    rng = np.random.default_rng(seed)
    d = true_diff + sd * rng.standard_normal((sims, n))
    p_low = stats.ttest_1samp(d, -margin, axis=1, alternative="greater").pvalue
    p_high = stats.ttest_1samp(d, margin, axis=1, alternative="less").pvalue
    return float(np.mean((p_low < level) & (p_high < level)))


@pytest.mark.parametrize(
    ("n", "margin", "true_diff", "family"),
    [(10, 0.8, 0.0, 1), (16, 0.6, 0.2, 1), (24, 0.7, 0.0, 4)],
)
def test_tost_power_matches_simulation(n, margin, true_diff, family):
    sims = 100_000
    ours = tost_power(n, margin, 1.0, true_diff=true_diff, family_size=family)
    sim = _simulated_tost_power(n, margin, 1.0, true_diff, 0.05 / family, sims, seed=n)
    assert abs(ours - sim) < 4 * math.sqrt(0.25 / sims)


def test_tost_power_of_the_reference_study_is_tiny():
    # The numbers: margin 0.0005, sd of differences 0.0015-0.0062, 8 seeds.
    assert tost_power(8, 0.0005, 0.0015) < 0.004
    assert tost_power(8, 0.0005, 0.0062) < 1e-4


def test_seeds_for_tost_is_the_smallest_n_reaching_the_power():
    n = seeds_for_tost(0.5, 1.0, power=0.8, true_diff=0.1)
    assert (
        tost_power(n, 0.5, 1.0, true_diff=0.1) >= 0.8 > tost_power(n - 1, 0.5, 1.0, true_diff=0.1)
    )
    assert seeds_for_tost(0.5, 1.0, true_diff=0.5) is None  # at the margin: power <= alpha


@pytest.mark.parametrize("n", range(2, 21))
def test_wilcoxon_floor_is_scipy_exact_p_of_all_positive_differences(n):
    d = np.arange(1.0, n + 1.0)  # all of one sign, no ties
    two = stats.wilcoxon(d, method="exact", alternative="two-sided").pvalue
    one = stats.wilcoxon(d, method="exact", alternative="greater").pvalue
    assert wilcoxon_floor(n) == pytest.approx(two, rel=1e-12)
    assert wilcoxon_floor(n, "greater") == pytest.approx(one, rel=1e-12)


def test_eight_pairs_cannot_reach_significance_after_holm_over_eight():
    reach = wilcoxon_reach(8, alpha=0.05, family_size=8)
    assert reach.floor == 1 / 128
    assert reach.holm_floor == pytest.approx(0.0625)
    assert reach.can_reach is False
    assert reach.min_seeds == 9


@pytest.mark.parametrize(
    ("alpha", "family", "alternative"),
    [(0.05, 1, "two-sided"), (0.05, 8, "two-sided"), (0.05, 8, "less"), (0.01, 3, "two-sided")],
)
def test_min_seeds_is_where_scipy_floor_first_passes_holm(alpha, family, alternative):
    reach = wilcoxon_reach(2, alpha=alpha, family_size=family, alternative=alternative)
    scipy_alt = "greater" if alternative != "two-sided" else "two-sided"

    def holm_floor(n):
        p = stats.wilcoxon(np.arange(1.0, n + 1), method="exact", alternative=scipy_alt).pvalue
        return p * family

    n = reach.min_seeds
    assert holm_floor(n) < alpha <= holm_floor(n - 1)


def test_plan_warns_for_every_test_the_seeds_cannot_decide():
    plan = plan_comparison(0.0015, 8, smallest_effect=0.002, margin=0.0005, family_size=8)
    assert plan.level == pytest.approx(0.05 / 8)
    assert plan.t_seeds == seeds_for_t_test(0.002, 0.0015, family_size=8)
    text = " | ".join(plan.warnings)
    assert "TOST at ±0.0005" in text and "8 planned" in text
    assert "Wilcoxon" in text and "0.0625" in text
    assert plan.tost_seeds > 100


def test_a_sufficient_plan_has_no_warnings():
    plan = plan_comparison(1.0, 40, smallest_effect=1.0, margin=1.0)
    assert plan.t_power > 0.99 and plan.tost_power > 0.8
    assert plan.warnings == []


def test_a_plan_reads_by_attribute_and_by_its_json_key_for_study():
    """`study/power_plan.py` indexes plans and ladders by key; a misspelt key still fails."""
    from adaptive_lora.analysis.ladder import gain_per_doubling

    plan = plan_comparison(1.0, 8, smallest_effect=1.0)
    assert (
        plan["t_seeds"] == plan.t_seeds and plan["wilcoxon"]["can_reach"] is plan.wilcoxon.can_reach
    )
    assert plan.get("warnings", []) == plan.warnings
    with pytest.raises(KeyError):
        plan["t_seed"]
    with pytest.raises(AttributeError):
        plan.t_seed  # noqa: B018
    series = [{"budget": b, "params": p, "test_loss": {"values": {0: loss, 1: loss + 0.01}}}
              for b, p, loss in (("r1", 100.0, 2.0), ("r2", 200.0, 1.9))]  # fmt: skip
    [step] = gain_per_doubling(series)["steps"]
    assert (step["from"], step["to"]) == (step.from_, step.to) == ("r1", "r2")
