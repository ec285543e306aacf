"""The group-sequential design against published boundaries, scipy and simulation.

Simulations here use seeds other than the design's calibration seed, so they check
the boundaries independently of how they were computed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from adaptive_lora.analysis.sequential import (
    DECISIONS,
    SequentialDesign,
    boundaries,
    decide_matrix,
    looks_from_seeds,
    sequential_decisions,
    spent_alpha,
    z_boundaries,
)

LOOKS = looks_from_seeds(4, 24, 4)
CLAIMS = (DECISIONS.index("superior"), DECISIONS.index("inferior"))


def test_looks_from_seeds():
    assert looks_from_seeds(4, 24, 4) == (4, 8, 12, 16, 20, 24)
    assert looks_from_seeds(3, 10, 4) == (3, 7, 10)  # the maximum is always a look


def test_obrien_fleming_boundaries_match_published_values():
    # Lan-DeMets O'Brien-Fleming-type spending, five equally spaced looks, two-sided
    # alpha = 0.05: 4.877, 3.357, 2.680, 2.290, 2.031 (Reboussin, DeMets, Kim & Lan 2000,
    # Controlled Clinical Trials 21:190-207; the same in ldbounds and gsDesign).
    z = z_boundaries([0.2, 0.4, 0.6, 0.8, 1.0], 0.05, "obrien-fleming", two_sided=True)
    assert z == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=1.5e-3)


def test_one_look_is_the_fixed_test():
    assert z_boundaries([1.0], 0.05)[0] == pytest.approx(stats.norm.isf(0.025), abs=1e-9)
    design = SequentialDesign(looks=(10,))
    assert boundaries(design).t_diff[0] == pytest.approx(stats.t.isf(0.025, 9), rel=1e-9)
    rng = np.random.default_rng(11)
    diffs = rng.standard_normal((400, 10)) + 0.6
    got = decide_matrix(diffs, design, 1)["code"]
    p = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert np.array_equal(np.isin(got, CLAIMS), p < 0.05)


@pytest.mark.parametrize("spending", ["obrien-fleming", "pocock"])
@pytest.mark.parametrize("two_sided", [True, False])
def test_z_boundaries_spend_as_planned_in_simulated_brownian_motion(spending, two_sided):
    looks = np.array([3, 5, 9, 12])  # uneven on purpose
    fractions = looks / looks[-1]
    alpha = 0.05
    z = z_boundaries(fractions, alpha, spending, two_sided)
    rng = np.random.default_rng(5)
    paths = 200_000
    increments = rng.standard_normal((paths, looks[-1]))
    zs = np.cumsum(increments, axis=1)[:, looks - 1] / np.sqrt(looks)
    hit = (np.abs(zs) >= z) if two_sided else (zs >= z)
    crossed_by = np.cumsum(hit, axis=1) > 0
    simulated = crossed_by.mean(axis=0)
    planned = spent_alpha(fractions, alpha / 2 if two_sided else alpha, spending)
    planned = planned * (2 if two_sided else 1)
    se = np.sqrt(planned * (1 - planned) / paths)
    assert np.all(np.abs(simulated - planned) < 4 * se + 1e-5)


def _null_error(design, family_size, rows, seed):
    rng = np.random.default_rng(seed)
    res = decide_matrix(rng.standard_normal((rows, design.looks[-1])), design, family_size)
    return float(np.isin(res["code"], CLAIMS).mean())


@pytest.mark.parametrize(
    ("spending", "alternative", "family"),
    [
        ("obrien-fleming", "two-sided", 1),
        ("pocock", "two-sided", 1),
        ("pocock", "greater", 1),
        ("obrien-fleming", "less", 4),
    ],
)
def test_type_one_error_of_the_t_design_by_simulation(spending, alternative, family):
    design = SequentialDesign(looks=LOOKS, spending=spending, alternative=alternative)
    rows = 150_000
    level = 0.05 / family
    measured = _null_error(design, family, rows, seed=99)
    # MC error of this check plus ~2% of the level for the design's own calibration
    assert abs(measured - level) < 4 * math.sqrt(level / rows) + 0.02 * level


def test_family_wise_error_with_a_shared_baseline_by_simulation():
    # 4 null strategies against one baseline (correlated differences), every rule on
    design = SequentialDesign(looks=LOOKS, margin=0.5, smallest_effect=0.7)
    rng = np.random.default_rng(21)
    studies, m = 40_000, 4
    base = rng.standard_normal((studies, 1, LOOKS[-1]))
    arms = rng.standard_normal((studies, m, LOOKS[-1]))
    res = decide_matrix((arms - base).reshape(studies * m, -1), design, m)
    fwer = np.isin(res["code"], CLAIMS).reshape(studies, m).any(axis=1).mean()
    assert fwer <= 0.05 + 4 * math.sqrt(0.05 / studies)


def test_equivalence_is_rarely_claimed_at_the_margin():
    # true difference exactly at the margin: an equivalence claim is a type I error
    design = SequentialDesign(looks=LOOKS, margin=0.5)
    rng = np.random.default_rng(8)
    rows = 100_000
    res = decide_matrix(0.5 + rng.standard_normal((rows, LOOKS[-1])), design, 1)
    claimed = (res["code"] == DECISIONS.index("equivalent")).mean()
    assert claimed <= 0.05 + 4 * math.sqrt(0.05 / rows)


def test_statistics_and_decisions_agree_with_scipy_t_tests():
    design = SequentialDesign(looks=LOOKS, margin=0.8, smallest_effect=1.0)
    b = boundaries(design, 3)
    rng = np.random.default_rng(3)
    diffs = {
        "clear": rng.normal(-1.5, 1.0, 24),
        "null": rng.normal(0.0, 0.1, 24),  # equivalence and futility at one look
        "noisy": rng.normal(0.2, 2.0, 24),
    }
    for name, dec in sequential_decisions(diffs, len(LOOKS) - 1, design).items():
        d = diffs[name][: dec.n]
        assert dec.t == pytest.approx(stats.ttest_1samp(d, 0.0).statistic, rel=1e-10)
        k = LOOKS.index(dec.n)
        p_diff = stats.ttest_1samp(d, 0.0).pvalue
        if dec.decision in ("superior", "inferior"):
            assert p_diff <= b.nominal_diff[k]
        else:
            assert p_diff > b.nominal_diff[k]
        if dec.decision == "equivalent":
            p_low = stats.ttest_1samp(d, -0.8, alternative="greater").pvalue
            p_high = stats.ttest_1samp(d, 0.8, alternative="less").pvalue
            assert max(p_low, p_high) <= b.nominal_one[k]
    decided = sequential_decisions(diffs, len(LOOKS) - 1, design)
    assert decided["clear"].decision == "superior" and decided["clear"].n < 24
    assert decided["null"].decision == "equivalent"


def test_history_is_replayed_and_later_seeds_are_ignored():
    design = SequentialDesign(looks=LOOKS)
    rng = np.random.default_rng(4)
    strong = rng.normal(-3.0, 0.5, 24)
    first = sequential_decisions({"s": strong[:8]}, 1, design)["s"]
    later = sequential_decisions({"s": strong}, 5, design)["s"]
    assert first.decision == "superior" and first.look == 1 and first.n == 8
    assert dataclasses.asdict(later) == dataclasses.asdict(first)
    assert "look 2 of 6" in first.reason and "n = 8" in first.reason


def test_open_and_waiting_comparisons_say_what_they_need():
    design = SequentialDesign(looks=LOOKS)
    rng = np.random.default_rng(6)
    out = sequential_decisions(
        {"open": rng.normal(0, 1, 8), "short": rng.normal(0, 1, 5), "none": []}, 1, design
    )
    assert out["open"].decision == "continue" and out["open"].next_n == 12
    assert out["short"].decision == "continue" and out["short"].next_n == 8
    assert out["short"].n == 4
    assert out["none"].next_n == 4 and out["none"].n == 0
    assert all(d.level == pytest.approx(0.05 / 3) for d in out.values())  # family = 3 given


def test_direction_and_sidedness():
    strong_gain = np.full(8, -1.0) + np.linspace(-0.1, 0.1, 8)  # strategy lower (better loss)
    looks = (8,)
    assert sequential_decisions({"s": strong_gain}, 0, SequentialDesign(looks))["s"].decision == (
        "superior"
    )
    accuracy = SequentialDesign(looks, lower_is_better=False)
    assert sequential_decisions({"s": strong_gain}, 0, accuracy)["s"].decision == "inferior"
    # one-sided "greater": a strong negative difference cannot be claimed, only futile
    greater = SequentialDesign(looks, alternative="greater", smallest_effect=0.5)
    got = sequential_decisions({"s": strong_gain}, 0, greater)["s"]
    assert got.decision == "futile" and "non-binding" in got.reason
    greater_no_futility = SequentialDesign(looks, alternative="greater")
    assert sequential_decisions({"s": strong_gain}, 0, greater_no_futility)["s"].decision == (
        "inconclusive"
    )


def test_an_early_effect_stops_early_more_often_with_pocock():
    rng = np.random.default_rng(12)
    diffs = rng.standard_normal((20_000, 24)) - 0.8
    mean_n = {}
    for spending in ("obrien-fleming", "pocock"):
        res = decide_matrix(diffs, SequentialDesign(looks=LOOKS, spending=spending), 1)
        assert (res["code"] == DECISIONS.index("superior")).mean() > 0.85
        mean_n[spending] = res["n"].mean()
    assert mean_n["pocock"] < mean_n["obrien-fleming"] < 24
