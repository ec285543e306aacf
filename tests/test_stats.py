"""Tests of adaptive_lora.analysis.stats: every number against scipy/statsmodels, plus hand-worked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from adaptive_lora.analysis.corrections import holm
from adaptive_lora.analysis.descriptive import describe, iqm
from adaptive_lora.analysis.formatting import fmt_num, fmt_p, fmt_sig
from adaptive_lora.analysis.jsonable import to_jsonable
from adaptive_lora.analysis.paired import compare_family, compare_paired
from adaptive_lora.analysis.signed_rank import _signed_rank_exact_p, wilcoxon_floor_p

PAIRED_KEYS = {
    "n",
    "n_pairs",
    "seeds",
    "seeds_only_in_strategy",
    "seeds_only_in_baseline",
    "seeds_non_finite",
    "lower_is_better",
    "alpha",
    "confidence",
    "n_boot",
    "boot_seed",
    "strategy_summary",
    "baseline_summary",
    "diffs",
    "mean_diff",
    "median_diff",
    "iqm_diff",
    "sd_diff",
    "ci_t",
    "ci_boot_percentile",
    "ci_boot_bca",
    "iqm_ci_boot_percentile",
    "iqm_ci_boot_bca",
    "t",
    "df",
    "p_t",
    "wilcoxon_stat",
    "p_wilcoxon",
    "wilcoxon_method",
    "wilcoxon_n",
    "d_z",
    "mde_d_z",
    "mde_metric",
    "mde_power",
    "prob_better",
    "wilcoxon_floor_p",
    "wilcoxon_holm_floor_p",
    "family_size",
    "can_reach_significance",
    "alternative",
    "warnings",
}
FAMILY_EXTRA = {
    "strategy",
    "baseline",
    "metric",
    "primary_test",
    "p_t_holm",
    "p_wilcoxon_holm",
    "significant",
    "verdict",
}


def _runs(diffs, base=None, seeds=None):
    """Strategy/baseline dicts whose per-seed differences are exactly ``diffs``."""
    diffs = np.asarray(diffs, dtype=float)
    seeds = list(range(len(diffs))) if seeds is None else seeds
    if base is None:
        base = np.linspace(1.0, 2.0, len(diffs))  # small integers/halves keep sums exact
        base = np.round(base * 8) / 8
    b = {k: float(v) for k, v in zip(seeds, base)}
    s = {k: float(b[k] + d) for k, d in zip(seeds, diffs)}
    return s, b


def _strict_json(obj):
    return json.loads(json.dumps(to_jsonable(obj), allow_nan=False))


# ------------------------------------------------------------------------- describe / IQM


def test_describe_hand_worked():
    # [1, 2, 3, 4, 100]: mean 110/5 = 22, median 3, IQM cuts int(0.25*5) = 1 from each
    # end -> mean(2, 3, 4) = 3; min 1, max 100.
    d = describe([1, 2, 3, 4, 100])
    assert d["n"] == 5
    assert d["mean"] == pytest.approx(22.0)
    assert d["median"] == 3.0
    assert d["iqm"] == pytest.approx(3.0)
    assert d["std"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))
    assert (d["min"], d["max"]) == (1.0, 100.0)
    assert set(d) == {"n", "mean", "median", "iqm", "std", "min", "max"}


def test_iqm_matches_agarwal_definition():
    rng = np.random.default_rng(3)
    for n in (4, 5, 8, 10, 13):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))
    # n = 8: the middle 4 of the sorted values.
    x = np.array([8, 1, 7, 2, 6, 3, 5, 4], dtype=float)
    assert iqm(x) == pytest.approx(np.mean([3, 4, 5, 6]))


def test_describe_degenerate():
    d0 = describe([])
    assert d0["n"] == 0 and all(math.isnan(d0[k]) for k in d0 if k != "n")
    d1 = describe([2.5])
    assert d1["n"] == 1 and d1["mean"] == d1["median"] == d1["iqm"] == 2.5
    assert math.isnan(d1["std"])


# ------------------------------------------------------------------------------- Holm


def test_holm_hand_worked():
    # sorted: 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 = 0.04 -> the running
    # maximum makes the last 0.06. Back in input order: [0.03, 0.06, 0.06].
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_matches_statsmodels_and_caps():
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 12):
        p = rng.uniform(0, 0.3, size=m)
        expected = multipletests(p, method="holm")[1]
        got = holm(list(p))
        assert got == pytest.approx(list(expected), abs=1e-12)
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


def test_holm_nan_passes_through_and_is_not_counted():
    got = holm([0.01, float("nan"), 0.04])
    # family of 2: 2*0.01 = 0.02, 1*0.04 = 0.04
    assert got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.04)
    assert math.isnan(got[1])
    assert all(math.isnan(x) for x in holm([float("nan")] * 3))
    with pytest.raises(ValueError):
        holm([1.5])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=15))
def test_holm_properties(p):
    adj = holm(p)
    # Holm's definition written out directly (O(m^2)), independent of the implementation.
    m = len(p)
    srt = sorted(p)
    naive = [max(min(1.0, (m - j) * srt[j]) for j in range(srt.index(x) + srt.count(x))) for x in p]
    assert adj == pytest.approx(naive, abs=1e-12)
    order = np.argsort(p, kind="stable")
    sorted_adj = np.asarray(adj)[order]
    assert np.all(np.diff(sorted_adj) >= -1e-15)
    assert all(a >= x - 1e-15 and a <= 1.0 for a, x in zip(adj, p))


# ------------------------------------------------------------------ hand-worked compare


def test_compare_paired_hand_worked_example():
    # diffs [1, 2, 3, 4]:
    #   mean 2.5, median 2.5, IQM = mean(2, 3) = 2.5
    #   sd = sqrt((1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 3) = sqrt(5/3) = 1.29099
    #   d_z = 2.5 / 1.29099 = 1.93649; se = 1.29099 / 2 = 0.645497
    #   t = 2.5 / 0.645497 = 3.87298 (= sqrt(15)), df = 3, two-sided p = 0.030466
    #   t_0.975,3 = 3.182446 -> CI 2.5 -/+ 3.182446 * 0.645497 = 2.5 -/+ 2.054260
    #   = [0.445740, 4.554260]
    #   Wilcoxon: all 4 positive, R- = 0; P(R+ = 10) = 1/16, two-sided p = 2/16 = 0.125,
    #   which is also the floor 2 / 2**4 -> cannot reach p < 0.05.
    s, b = _runs([1, 2, 3, 4])
    r = compare_paired(s, b)
    assert set(_strict_json(r)) == PAIRED_KEYS  # the keys stats.json gets
    with pytest.raises(AttributeError):  # a misspelt statistic fails, never reads as absent
        r.mean_dif  # noqa: B018
    assert r.n == r.n_pairs == 4
    assert r.mean_diff == pytest.approx(2.5)
    assert r.median_diff == pytest.approx(2.5)
    assert r.iqm_diff == pytest.approx(2.5)
    assert r.sd_diff == pytest.approx(1.290994, abs=1e-6)
    assert r.d_z == pytest.approx(1.936492, abs=1e-6)
    assert r.t == pytest.approx(3.872983, abs=1e-6)
    assert r.df == 3
    assert r.p_t == pytest.approx(0.030466, abs=1e-6)
    assert r.ci_t == pytest.approx([0.445740, 4.554260], abs=1e-6)
    assert r.p_wilcoxon == pytest.approx(0.125)
    assert r.wilcoxon_stat == 0.0
    assert r.wilcoxon_method == "exact"
    assert r.wilcoxon_floor_p == pytest.approx(0.125)
    assert r.can_reach_significance is False
    # lower is better and every difference is positive: the strategy never wins.
    assert r.prob_better == 0.0
    assert compare_paired(s, b, lower_is_better=False).prob_better == 1.0
    # MDE at 80% power, n = 4, alpha 0.05: d_z = 2.12795; in metric units x sd.
    assert r.mde_d_z == pytest.approx(2.127949, abs=1e-5)
    assert r.mde_metric == pytest.approx(2.127949 * 1.290994, abs=1e-5)
    _strict_json(r)


def test_wilcoxon_with_ties_and_zero_hand_worked():
    # diffs [1, 2, 2, -4, 0, 3]: the 0 is dropped -> m = 5; ranks of |d| = 1, 2.5, 2.5, 5, 4.
    # R+ = 1 + 2.5 + 2.5 + 4 = 10, R- = 5, statistic min = 5. Under the null each of the
    # 2**5 = 32 sign patterns is equally likely; the subsets of the ranks {1, 2.5, 2.5, 4, 5}
    # summing to <= 5 are {}, {1}, {2.5}, {2.5'}, {1,2.5}, {1,2.5'}, {4}, {2.5,2.5'}, {1,4},
    # {5}: 10 of 32. Two-sided p = 2 * 10/32 = 0.625.
    s, b = _runs([1, 2, 2, -4, 0, 3])
    r = compare_paired(s, b)
    assert r.wilcoxon_stat == 5.0
    assert r.p_wilcoxon == pytest.approx(0.625)
    assert r.wilcoxon_n == 5
    assert r.wilcoxon_method.startswith("exact conditional")
    assert "zero" in r.wilcoxon_method and "ties" in r.wilcoxon_method
    ref = stats.wilcoxon([1, 2, 2, -4, 0, 3], method=stats.PermutationMethod())
    assert r.p_wilcoxon == pytest.approx(ref.pvalue)
    assert any("zero difference dropped" in w for w in r.warnings)
    # prob_better with a tie: wins at -4 (1), the 0 counts half -> 1.5 / 6
    assert r.prob_better == pytest.approx(1.5 / 6)


# ----------------------------------------------------------------- against scipy/statsmodels


@pytest.mark.parametrize("n", [2, 3, 5, 8, 12])
def test_compare_paired_matches_scipy(n):
    rng = np.random.default_rng(n)
    b = {k: float(v) for k, v in enumerate(2 + 0.1 * rng.normal(size=n))}
    s = {k: float(v - 0.02 + 0.03 * rng.normal()) for k, v in b.items()}
    xs = np.array([s[k] for k in range(n)])
    xb = np.array([b[k] for k in range(n)])
    d = xs - xb
    r = compare_paired(s, b, alpha=0.05, n_boot=4000, seed=7)

    tt = stats.ttest_rel(xs, xb)
    assert r.t == pytest.approx(tt.statistic, rel=1e-10)
    assert r.p_t == pytest.approx(tt.pvalue, rel=1e-10)
    assert r.df == n - 1
    se = stats.sem(d)
    assert r.ci_t == pytest.approx(
        list(stats.t.interval(0.95, n - 1, loc=d.mean(), scale=se)), rel=1e-10
    )
    w = stats.wilcoxon(xs, xb, method="exact")
    assert r.p_wilcoxon == pytest.approx(w.pvalue, rel=1e-12)
    assert r.wilcoxon_stat == pytest.approx(w.statistic)
    assert r.d_z == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
    mde = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided"
    )
    assert r.mde_d_z == pytest.approx(float(mde), rel=1e-8)
    assert r.mde_metric == pytest.approx(float(mde) * d.std(ddof=1), rel=1e-8)
    assert r.median_diff == pytest.approx(np.median(d))
    assert r.iqm_diff == pytest.approx(stats.trim_mean(d, 0.25))
    assert r.prob_better == pytest.approx(np.mean(d < 0))
    assert r.wilcoxon_floor_p == pytest.approx(min(1.0, 2 / 2**n))


def _scipy_bca(samples, statistic, n_boot, seed, **kw):
    res = stats.bootstrap(
        samples, statistic, method="BCa", n_resamples=n_boot, rng=np.random.default_rng(seed), **kw
    )
    return [res.confidence_interval.low, res.confidence_interval.high]


def test_bca_matches_scipy_bootstrap():
    rng = np.random.default_rng(11)
    n = 10
    xb = 2 + 0.1 * rng.normal(size=n)
    xs = xb - 0.02 + 0.02 * rng.exponential(size=n)  # skewed differences
    s = dict(enumerate(xs.tolist()))
    b = dict(enumerate(xb.tolist()))
    d = xs - xb
    r = compare_paired(s, b, n_boot=5000, seed=123)

    # Paired bootstrap of mean(s - b), resampling pairs; same rng stream -> same resamples.
    def mean_diff(x, y, axis=-1):
        return np.mean(x - y, axis=axis)

    ref = _scipy_bca((xs, xb), mean_diff, 5000, 123, paired=True, vectorized=True)
    assert r.ci_boot_bca == pytest.approx(ref, abs=1e-9)
    ref1 = _scipy_bca((d,), np.mean, 5000, 123, vectorized=True)
    assert r.ci_boot_bca == pytest.approx(ref1, abs=1e-9)

    # Independent streams: agreement up to Monte Carlo error (small tolerance).
    ref2 = _scipy_bca((d,), np.mean, 20000, 999, vectorized=True)
    width = ref2[1] - ref2[0]
    assert r.ci_boot_bca == pytest.approx(ref2, abs=0.1 * width)

    # Percentile interval and the IQM intervals.
    pct = stats.bootstrap(
        (d,), np.mean, method="percentile", n_resamples=5000, rng=np.random.default_rng(123)
    ).confidence_interval
    assert r.ci_boot_percentile == pytest.approx([pct.low, pct.high], abs=1e-9)

    def tm(x, axis=-1):
        return stats.trim_mean(x, 0.25, axis=axis)

    ref_iqm = _scipy_bca((d,), tm, 5000, 123, vectorized=True)
    assert r.iqm_ci_boot_bca == pytest.approx(ref_iqm, abs=1e-9)
    lo, hi = r.iqm_ci_boot_percentile
    assert lo <= r.iqm_diff <= hi


def test_exact_signed_rank_distribution_matches_scipy_without_ties():
    rng = np.random.default_rng(5)
    for n in (1, 2, 6, 9, 15):
        d = rng.normal(size=n)
        assert _signed_rank_exact_p(d) == pytest.approx(
            stats.wilcoxon(d, method="exact").pvalue, rel=1e-10
        )


@pytest.mark.parametrize(
    "d", [[1, 1, 2, 2, -3, 0], [0.5, 0.5, 0.5, -0.5, 1, 2, 0, 0], [1, 2, 3, 3, 3, 4, -1]]
)
def test_wilcoxon_ties_zeros_match_scipy_permutation(d):
    s, b = _runs(d)
    r = compare_paired(s, b, n_boot=200)
    # n <= 13: 2**n < 9999 resamples, so scipy enumerates every sign pattern (exact).
    ref = stats.wilcoxon(d, method=stats.PermutationMethod())
    assert r.p_wilcoxon == pytest.approx(ref.pvalue, rel=1e-10)


# ---------------------------------------------------------------- small n, degenerate input


def test_five_seeds_floor_warning():
    s, b = _runs([-1, -2, -3, -4, -5])
    r = compare_paired(s, b, n_boot=500)
    assert r.wilcoxon_floor_p == pytest.approx(0.0625)
    assert r.can_reach_significance is False
    assert (
        "with 5 seeds a two-sided Wilcoxon test cannot reach p < 0.05 (floor 0.0625)" in r.warnings
    )
    assert r.p_wilcoxon == pytest.approx(0.0625)  # best possible, still not < 0.05
    # 6 seeds: floor 2/64 = 0.03125 < 0.05, no warning
    s6, b6 = _runs([-1, -2, -3, -4, -5, -6])
    r6 = compare_paired(s6, b6, n_boot=500)
    assert r6.can_reach_significance is True
    assert not any("cannot reach" in w for w in r6.warnings)
    assert wilcoxon_floor_p(0) == wilcoxon_floor_p(1) == 1.0


def _assert_nan(*xs):
    for x in xs:
        if isinstance(x, list):
            _assert_nan(*x)
        else:
            assert math.isnan(x), x


def test_n0_no_common_seeds():
    r = compare_paired({1: 1.0}, {2: 1.0})
    assert r.n == 0 and r.seeds == []
    assert r.seeds_only_in_strategy == [1] and r.seeds_only_in_baseline == [2]
    _assert_nan(
        r.mean_diff,
        r.sd_diff,
        r.t,
        r.p_t,
        r.p_wilcoxon,
        r.d_z,
        r.ci_t,
        r.ci_boot_bca,
        r.mde_d_z,
        r.prob_better,
    )
    assert "n < 2: no test possible" in r.warnings
    assert compare_paired({}, {}).n == 0
    _strict_json(r)


def test_n1():
    r = compare_paired({0: 1.5, 1: 9.0}, {0: 2.0})
    assert r.n == 1 and r.mean_diff == pytest.approx(-0.5)
    assert r.prob_better == 1.0
    _assert_nan(
        r.sd_diff,
        r.t,
        r.p_t,
        r.p_wilcoxon,
        r.d_z,
        r.ci_t,
        r.ci_boot_percentile,
        r.mde_d_z,
    )
    assert any(w.startswith("n < 2: no test possible") for w in r.warnings)
    assert r.wilcoxon_floor_p == 1.0
    _strict_json(r)


def test_all_differences_zero():
    b = {k: 1.0 + k / 8 for k in range(6)}
    r = compare_paired(dict(b), b)
    assert r.mean_diff == 0.0 and r.sd_diff == 0.0
    _assert_nan(r.t, r.p_t, r.d_z, r.ci_t, r.p_wilcoxon)
    assert r.ci_boot_bca == [0.0, 0.0]
    assert r.prob_better == 0.5  # every seed a tie
    assert any("sd of differences is 0" in w for w in r.warnings)
    assert r.wilcoxon_n == 0
    _strict_json(r)


def test_constant_nonzero_difference_with_rounding_noise():
    # x + 0.01 - x is not exactly 0.01 in floating point; treat the spread as zero.
    b = {k: 2.0 + 0.123456789 * k for k in range(7)}
    s = {k: v + 0.01 for k, v in b.items()}
    r = compare_paired(s, b, n_boot=300)
    assert r.sd_diff == 0.0
    assert r.mean_diff == pytest.approx(0.01)
    _assert_nan(r.t, r.p_t, r.d_z, r.ci_t)
    # all 7 of one sign: Wilcoxon p = 2 / 2**7
    assert r.p_wilcoxon == pytest.approx(2 / 2**7)
    assert any("sd of differences is 0" in w for w in r.warnings)
    fam = compare_family({"uniform": b, "plus": s}, "uniform", n_boot=300)
    v = fam["plus"].verdict
    assert "raises test loss by 0.010 on every one of the 7 seeds" in v
    assert "a deterioration" in v and "Wilcoxon signed-rank significant" in v


def test_pairing_by_seed_with_missing_and_nonfinite_seeds():
    base = {0: 1.0, 1: 1.5, 2: 2.0, 3: 2.5, 4: 3.0, 7: 9.0}
    strat = {"0": 0.5, 1: 1.0, 2: 1.75, 3: float("nan"), 4: 2.0, 5: 1.0}
    r = compare_paired(strat, base, n_boot=200)
    # paired seeds 0, 1, 2, 4 ("0" read as 0; 3 dropped for NaN): diffs -0.5, -0.5, -0.25, -1
    assert r.seeds == [0, 1, 2, 4]
    assert r.n_pairs == 4
    assert r.seeds_only_in_strategy == [5]
    assert r.seeds_only_in_baseline == [7]
    assert r.seeds_non_finite == [3]
    assert r.diffs == pytest.approx([-0.5, -0.5, -0.25, -1.0])
    assert r.mean_diff == pytest.approx(-0.5625)
    assert any("[5]" in w for w in r.warnings) and any("[7]" in w for w in r.warnings)
    assert any("[3]" in w for w in r.warnings)
    # the order of the dicts does not matter
    r2 = compare_paired(dict(reversed(list(strat.items()))), base, n_boot=200)
    assert r2.mean_diff == r.mean_diff and r2.p_t == r.p_t
    with pytest.raises(ValueError):
        compare_paired({0: 1.0, "0": 2.0}, base)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        compare_paired({0: 1.0}, {0: 1.0}, alpha=0)
    with pytest.raises(ValueError):
        compare_paired({0: 1.0}, {0: 1.0}, n_boot=0)
    with pytest.raises(KeyError):
        compare_family({"a": {0: 1.0}}, "uniform")
    with pytest.raises(ValueError):
        compare_family({"uniform": {0: 1.0}}, "uniform", primary="z")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]), max_size=9))
def test_never_crashes_and_is_json(diffs):
    s, b = _runs(diffs)
    r = compare_paired(s, b, n_boot=50)
    out = _strict_json(r)
    assert out["n"] == len(diffs)
    if len(diffs) >= 1:
        assert 0.0 <= r.prob_better <= 1.0
    p = r.p_wilcoxon
    if not math.isnan(p):
        assert wilcoxon_floor_p(r.wilcoxon_n) - 1e-12 <= p <= 1.0


# ------------------------------------------------------------------------ family, verdicts


def _family_data():
    rng = np.random.default_rng(42)
    base = {k: float(2 + 0.05 * rng.normal()) for k in range(8)}
    return {
        "uniform": base,
        "linear_decay": {k: v - 0.012 + 0.004 * rng.normal() for k, v in base.items()},
        "noise": {k: v + 0.01 * rng.normal() for k, v in base.items()},
        "three": {k: v + 0.01 * rng.normal() for k, v in list(base.items())[:3]},
        "one": {0: base[0] - 0.1},
    }


def test_compare_family_holm_and_keys():
    data = _family_data()
    fam = compare_family(data, "uniform", n_boot=1000)
    assert list(fam) == ["linear_decay", "noise", "three", "one"]
    for r in fam.values():
        assert set(_strict_json(r)) == PAIRED_KEYS | FAMILY_EXTRA
        assert isinstance(r.verdict, str) and r.verdict
    pt = [fam[k].p_t for k in fam]
    tested = [k for k in fam if not math.isnan(fam[k].p_t)]
    ref = multipletests([fam[k].p_t for k in tested], method="holm")[1]
    assert [fam[k].p_t_holm for k in tested] == pytest.approx(list(ref))
    refw = multipletests([fam[k].p_wilcoxon for k in tested], method="holm")[1]
    assert [fam[k].p_wilcoxon_holm for k in tested] == pytest.approx(list(refw))
    assert math.isnan(fam["one"].p_t_holm) and math.isnan(pt[3])
    _strict_json(fam)


def test_verdicts():
    fam = compare_family(_family_data(), "uniform", n_boot=1000)
    v = fam["linear_decay"].verdict
    assert v.startswith("linear_decay lowers test loss by 0.01")
    assert "95% CI \u2212" in v and "vs uniform, an improvement" in v
    assert "significant after Holm correction" in v and "8 seeds" in v
    assert "d_z = \u2212" in v
    assert fam["linear_decay"].significant is True

    v3 = fam["three"].verdict
    assert v3.startswith("No detectable difference between three and uniform in test loss")
    mde3 = TTestPower().solve_power(effect_size=None, nobs=3, alpha=0.05, power=0.8)
    assert f"with 3 seeds the smallest effect detectable at 80% power is d_z = {mde3:.1f}" in v3
    # Holm corrects the 3 comparisons with a Wilcoxon p ("one" has a single seed).
    assert (
        "With 3 seeds and Holm over 3 comparisons the two-sided Wilcoxon test cannot reach "
        "p < 0.05 (its smallest possible Holm p is 0.75)." in v3
    )
    assert fam["three"].significant is False

    assert "too few seeds for a test" in fam["one"].verdict


def test_lower_is_better_flips_direction():
    data = _family_data()
    up = compare_family(data, "uniform", lower_is_better=False, n_boot=500, metric="ROUGE-L")
    down = compare_family(data, "uniform", n_boot=500)
    r_up, r_down = up["linear_decay"], down["linear_decay"]
    assert r_down.prob_better == 1.0 and r_up.prob_better == 0.0
    assert r_up.mean_diff == r_down.mean_diff  # always strategy - baseline
    assert "an improvement" in r_down.verdict
    assert "lowers ROUGE-L" in r_up.verdict and "a deterioration" in r_up.verdict


def test_verdict_not_significant_after_holm():
    # Two strategies with nominal p between 0.025 and 0.05 -> Holm pushes both above 0.05.
    diffs_a = [-2.0, 0.5, -2.4, -0.7, -0.7, -1.5, 0.1, -0.7]
    s, b = _runs(diffs_a)
    p = compare_paired(s, b, n_boot=200).p_t
    assert 0.025 < p < 0.05
    fam = compare_family({"uniform": b, "a": s, "b": dict(s)}, "uniform", n_boot=200)
    v = fam["a"].verdict
    assert "but not significant after Holm correction" in v
    assert f"uncorrected {fmt_p(p)}" in v


def test_primary_wilcoxon():
    fam = compare_family(_family_data(), "uniform", n_boot=300, primary="wilcoxon")
    r = fam["linear_decay"]
    assert r.primary_test == "wilcoxon"
    assert r.significant == (r.p_wilcoxon_holm < 0.05)
    assert "paired t-test gives Holm-adjusted" in r.verdict


# ------------------------------------------------------------------------------ formatting


def test_fmt_p():
    assert fmt_p(0.43) == "0.43"
    assert fmt_p(0.0625) == "0.063"  # rounds half up
    assert fmt_p(0.01) == "0.010"
    assert fmt_p(0.0004) == "< 0.001"
    assert fmt_p(0.0496) == "0.0496"  # "0.050" would contradict p < 0.05
    assert fmt_p(float("nan")) == "n/a" and fmt_p(None) == "n/a"
    assert fmt_p(0.43, label="p") == "p = 0.43"
    assert fmt_p(1e-9, label="p") == "p < 0.001"
    assert fmt_p(1.0) == "1.0"


def test_fmt_num_and_sig():
    assert fmt_num(-0.0123, 3) == "\u22120.012"
    assert fmt_num(-0.0123, 3, unicode_minus=False) == "-0.012"
    assert fmt_num(0.0125, 3) == "0.013"
    assert fmt_num(0.004, 3, plus=True) == "+0.004"
    assert fmt_num(-0.0001, 3) == "0.000"
    assert fmt_num(float("nan")) == "n/a" and fmt_num(float("-inf")) == "\u2212inf"
    assert fmt_sig(-1.234) == "\u22121.2"
    assert fmt_sig(2.9) == "2.9" and fmt_sig(0.347) == "0.35" and fmt_sig(12.3) == "12"


def test_to_jsonable():
    obj = {
        "a": np.float64(1.5),
        "b": float("nan"),
        "c": [np.int64(3), float("inf")],
        "d": np.bool_(True),
        "e": (1, 2),
        np.int64(4): np.array([1.0, np.nan]),
    }
    out = to_jsonable(obj)
    assert out == {"a": 1.5, "b": None, "c": [3, None], "d": True, "e": [1, 2], 4: [1.0, None]}
    assert type(out["a"]) is float and type(out["c"][0]) is int
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_mean_ci_t_matches_scipy():
    from scipy import stats as st

    from adaptive_lora.analysis.descriptive import mean_ci_t

    x = [1.0, 2.0, 4.0, 7.0]
    low, high = mean_ci_t(x)
    expected = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert low == pytest.approx(expected[0]) and high == pytest.approx(expected[1])
    assert all(math.isnan(v) for v in mean_ci_t([3.0]))


# ------------------------------------------------------------ one-sided tests, Holm floors


@pytest.mark.parametrize("alternative", ["less", "greater"])
@pytest.mark.parametrize("n", [3, 6, 9, 14])
def test_one_sided_tests_match_scipy(n, alternative):
    rng = np.random.default_rng(100 + n)
    b = {k: float(v) for k, v in enumerate(2 + 0.1 * rng.normal(size=n))}
    s = {k: float(v - 0.01 + 0.03 * rng.normal()) for k, v in b.items()}
    xs, xb = np.array([s[k] for k in range(n)]), np.array([b[k] for k in range(n)])
    r = compare_paired(s, b, n_boot=200, alternative=alternative)
    tt = stats.ttest_rel(xs, xb, alternative=alternative)
    assert r.p_t == pytest.approx(tt.pvalue, rel=1e-10)
    w = stats.wilcoxon(xs, xb, method="exact", alternative=alternative)
    assert r.p_wilcoxon == pytest.approx(w.pvalue, rel=1e-12)
    assert r.wilcoxon_stat == pytest.approx(w.statistic)  # R+, scipy's one-sided statistic
    assert r.wilcoxon_floor_p == pytest.approx(1 / 2**n)
    # The interval stays the two-sided 95% t interval of the mean difference.
    d = xs - xb
    ref = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
    assert r.ci_t == pytest.approx(list(ref), rel=1e-10)
    mde = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="larger"
    )
    assert r.mde_d_z == pytest.approx(float(mde), rel=1e-8)


@pytest.mark.parametrize("alternative", ["less", "greater"])
@pytest.mark.parametrize(
    "d", [[1, 1, 2, 2, -3, 0], [0.5, 0.5, 0.5, -0.5, 1, 2, 0, 0], [-1, -2, -3, -3, -3, -4, 1]]
)
def test_one_sided_wilcoxon_with_ties_and_zeros_matches_scipy_permutation(d, alternative):
    s, b = _runs(d)
    r = compare_paired(s, b, n_boot=200, alternative=alternative)
    # n <= 13: scipy enumerates every sign pattern of the nonzero differences (exact).
    ref = stats.wilcoxon(d, method=stats.PermutationMethod(), alternative=alternative)
    assert r.p_wilcoxon == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.wilcoxon_method.startswith("exact conditional")


def _best_case_family(n, m, alternative="two-sided"):
    """m strategies, each better than the baseline on every one of n seeds (distinct |d|)."""
    base = {k: 2.0 + 0.01 * k for k in range(n)}
    data = {"uniform": base}
    for j in range(m):
        data[f"s{j}"] = {k: v - 0.001 * (k + 1) * (j + 2) for k, v in base.items()}
    return compare_family(data, "uniform", n_boot=100, alternative=alternative)


@pytest.mark.parametrize(
    ("n", "m", "alternative", "reach"),
    [(8, 8, "two-sided", False), (8, 6, "two-sided", True), (8, 8, "less", True),
     (5, 1, "two-sided", False), (6, 1, "two-sided", True), (9, 8, "two-sided", True)],
)  # fmt: skip
def test_can_reach_significance_counts_the_holm_family(n, m, alternative, reach):
    fam = _best_case_family(n, m, alternative)
    # Every comparison is at its floor: statsmodels' Holm of those p-values is the best
    # any data could do, and it decides whether the family can reach 0.05.
    raw = [r.p_wilcoxon for r in fam.values()]
    best = multipletests(raw, method="holm")[1]
    tails = 2 if alternative == "two-sided" else 1
    assert raw == pytest.approx([min(1.0, tails / 2**n)] * m)
    for r, adjusted in zip(fam.values(), best):
        assert r.family_size == m
        assert r.wilcoxon_holm_floor_p == pytest.approx(adjusted)
        assert r.p_wilcoxon_holm == pytest.approx(adjusted)
        assert r.can_reach_significance is reach is bool(adjusted < 0.05)
        said = [w for w in r.warnings if "cannot reach" in w]
        assert len(said) == (0 if reach else 1)
        assert ("cannot reach" in r.verdict) is (not reach)


def test_eight_pairs_in_a_family_of_eight_say_the_holm_floor():
    r = next(iter(_best_case_family(8, 8).values()))
    assert (
        "with 8 seeds and Holm over 8 comparisons a two-sided Wilcoxon test cannot reach "
        "p < 0.05 (floor 0.0078125, × 8 = 0.0625)" in r.warnings
    )
    assert r.verdict.endswith(
        " With 8 seeds and Holm over 8 comparisons the two-sided Wilcoxon test cannot reach "
        "p < 0.05 (its smallest possible Holm p is 0.0625)."
    )


def test_one_sided_family_and_its_verdicts():
    data = _family_data()
    fam = compare_family(
        data, "uniform", n_boot=300, alternative={"linear_decay": "less", "noise": "greater"}
    )
    assert fam["linear_decay"].alternative == "less"
    assert fam["three"].alternative == "two-sided"  # not named: two-sided
    assert "significant after Holm correction (one-sided p" in fam["linear_decay"].verdict
    x = np.array([data["noise"][k] - data["uniform"][k] for k in range(8)])
    assert fam["noise"].p_t == pytest.approx(stats.ttest_1samp(x, 0, alternative="greater").pvalue)
    if not fam["noise"].significant:
        assert fam["noise"].verdict.startswith(
            "No evidence that noise raises test loss vs uniform (one-sided test)"
        )
    with pytest.raises(ValueError, match="alternative"):
        compare_paired(data["noise"], data["uniform"], alternative="smaller")
