"""Paired comparisons of rank-allocation strategies with a uniform baseline.

Owns ``compare_paired`` (one strategy against the baseline) and ``compare_family``
(every strategy, Holm-corrected, with a verdict). The pieces live in ``pairing``,
``descriptive``, ``bootstrap``, ``signed_rank``, ``power``, ``corrections``, ``verdict``
and ``formatting``; ``jsonable.to_jsonable`` makes a result strict JSON.

Every comparison is paired by seed: strategy *s* run with seed *k* is compared with the
uniform baseline run with the same seed *k* (the seed fixes data order and adapter
initialisation), and the analysis works on the per-seed differences
``diff_k = strategy_k - baseline_k``. With the default ``lower_is_better=True`` (test
loss) a negative difference means the strategy is better.

What is computed (see ``compare_paired``):

* mean, median and interquartile mean (IQM) of the differences. The IQM is the mean of
  the middle 50 % of the values, ``scipy.stats.trim_mean(x, 0.25)``, as recommended by
  Agarwal et al. (2021), "Deep reinforcement learning at the edge of the statistical
  precipice", NeurIPS.
* a t interval of the mean difference, and paired bootstrap intervals (percentile and
  bias-corrected and accelerated, BCa, with jackknife acceleration: Efron 1987, "Better
  bootstrap confidence intervals", JASA 82:171-185; Efron & Tibshirani 1993, ch. 14).
  Resampling whole seeds keeps the pairs together.
* the paired t-test and the Wilcoxon signed-rank test (Wilcoxon 1945, "Individual
  comparisons by ranking methods", Biometrics Bulletin 1:80-83), exact wherever
  possible.
* the standardised effect size for paired designs d_z = mean(diff) / sd(diff)
  (Cohen 1988, "Statistical power analysis for the behavioral sciences", 2nd ed.;
  Lakens 2013, "Calculating and reporting effect sizes ...", Frontiers in Psychology
  4:863), and the minimum detectable effect at 80 % power for this number of seeds.
* Holm's step-down correction across the comparisons of a family (Holm 1979, "A simple
  sequentially rejective multiple test procedure", Scand. J. Statistics 6:65-70).
* one-sided tests, when a study declares its alternative before the runs
  (``alternative="less"``: strategy − baseline < 0; ``"greater"``), in scipy's words:
  the t-test and the Wilcoxon test then give one-sided p-values; the intervals stay
  two-sided (1 − alpha) intervals of the estimate.

Nothing here hides a small sample: the floor of the exact Wilcoxon p-value (2 / 2**n
two-sided, 1 / 2**n one-sided) is always reported, and in a family the floor after Holm
(floor × the family's size: the smallest Holm-adjusted p any comparison can get) decides
``can_reach_significance``. Every undefined quantity is NaN with a sentence in ``warnings``.
A result is a ``PairedComparison`` (``compare_paired``) or a ``FamilyComparison``
(``compare_family``: the same fields, then the family's), read by attribute; its fields
hold plain Python values (NaN allowed) in the order ``stats.json`` lists them, and
``to_jsonable`` writes it with NaN/inf as ``None`` for strict JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
from scipy import stats as _st
from statsmodels.stats.power import TTestPower

from adaptive_lora.analysis.bootstrap import paired_bootstrap
from adaptive_lora.analysis.comparison import FamilyComparison, PairedComparison
from adaptive_lora.analysis.corrections import holm
from adaptive_lora.analysis.descriptive import describe
from adaptive_lora.analysis.formatting import fmt_g
from adaptive_lora.analysis.pairing import Pairs, pair_by_seed
from adaptive_lora.analysis.planning import ALTERNATIVES, wilcoxon_reach
from adaptive_lora.analysis.power import POWER, minimum_detectable_d_z
from adaptive_lora.analysis.signed_rank import one_sided_signed_rank_test, signed_rank_test
from adaptive_lora.analysis.values import NAN, is_nan
from adaptive_lora.analysis.verdict import verdict

__all__ = ["FamilyComparison", "PairedComparison", "compare_family", "compare_paired"]


def compare_paired(
    strategy: Mapping[Any, float],
    baseline: Mapping[Any, float],
    *,
    lower_is_better: bool = True,
    n_boot: int = 10000,
    seed: int | None = 0,
    alpha: float = 0.05,
    alternative: str = "two-sided",
) -> PairedComparison:
    """Compare one strategy with the baseline, paired by seed.

    Parameters
    ----------
    strategy, baseline
        ``{seed: metric value}``. Seeds are paired on the intersection of the keys
        (string seeds such as ``"3"`` from JSON are read as ints); seeds present on one
        side only, or with a non-finite value on either side, are dropped and listed.
    lower_is_better
        Direction of the metric (True for loss/perplexity). It affects ``prob_better``
        only; every difference is ``strategy - baseline`` whatever the direction.
    n_boot, seed
        Bootstrap resamples and the seed of ``numpy.random.default_rng``.
    alpha
        Level: intervals are two-sided (1 - alpha) intervals and the minimum detectable
        effect is for a test at ``alpha``.
    alternative
        ``"two-sided"``, ``"less"`` (strategy − baseline < 0) or ``"greater"`` (scipy's
        words), as declared before the runs: the tests, floor and MDE follow it.

    Returns a ``PairedComparison`` (NaN where undefined; ``mde_d_z`` from statsmodels'
    ``TTestPower``, Cohen 1988). Alone, a comparison is a family of one.
    """
    n_boot = _checked(alpha, alternative, n_boot)
    pairs = pair_by_seed(strategy, baseline)
    out = _blank_result(pairs, lower_is_better, alpha, n_boot, seed, alternative)
    warns = out.warnings
    n = pairs.n
    if n == 0:
        warns.append("no seeds in common between strategy and baseline: nothing to compare")
        warns.append("n < 2: no test possible")
        return out
    d = _add_location(out, pairs.diffs, lower_is_better)
    if n < 2:
        warns.append(
            f"n < 2: no test possible (n = {n}); intervals, tests, d_z and power "
            "need at least 2 paired seeds"
        )
        return out
    if not out.can_reach_significance:
        warns.append(_floor_warning(out))
    out.df = float(n - 1)
    _add_minimum_detectable_effect(out, n, alpha, alternative)
    if d["std"] > pairs.tol:
        _add_t_test(out, n, d["mean"], d["std"], alpha)
        _add_bootstrap(out, pairs.diffs, n_boot, seed, alpha)
    else:
        _add_constant_difference(out, pairs.diffs, d["mean"])
    _add_signed_rank_test(out, pairs.diffs, alternative)
    return out


def _checked(alpha: float, alternative: str, n_boot: int) -> int:
    """Validate the settings; return ``n_boot`` as an int."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return int(n_boot)


def _sidedness(alternative: str) -> str:
    return "two-sided" if alternative == "two-sided" else "one-sided"


def _floor_warning(out: PairedComparison) -> str:
    """Why the Wilcoxon test cannot reach alpha: its floor, and Holm's factor in a family."""
    n, m, alpha = out.n, out.family_size, out.alpha
    test = f"a {_sidedness(out.alternative)} Wilcoxon test cannot reach p < {fmt_g(alpha)}"
    if m == 1:
        return f"with {n} seeds {test} (floor {fmt_g(out.wilcoxon_floor_p)})"
    return (
        f"with {n} seeds and Holm over {m} comparisons {test} (floor "
        f"{fmt_g(out.wilcoxon_floor_p)}, × {m} = {fmt_g(out.wilcoxon_holm_floor_p)})"
    )


def _set_reach(out: PairedComparison, family_size: int) -> None:
    """The Wilcoxon floor of this comparison and whether it can pass Holm's first step.

    Every Holm-adjusted p is at least the family's size times the smallest raw p, so a
    floor that times the family's size is not below alpha can never be significant,
    whatever the data (``planning.wilcoxon_reach``).
    """
    reach = wilcoxon_reach(
        out.n, alpha=out.alpha, family_size=family_size, alternative=out.alternative
    )
    out.family_size = int(family_size)
    out.wilcoxon_floor_p = reach.floor
    out.wilcoxon_holm_floor_p = reach.holm_floor
    out.can_reach_significance = reach.can_reach


def _blank_result(
    pairs: Pairs,
    lower_is_better: bool,
    alpha: float,
    n_boot: int,
    seed: int | None,
    alternative: str,
) -> PairedComparison:
    """The pairing and the settings, with NaN (the defaults) for what needs n >= 2."""
    out = PairedComparison(
        n=pairs.n,
        n_pairs=pairs.n,
        seeds=pairs.seeds,
        seeds_only_in_strategy=pairs.only_in_strategy,
        seeds_only_in_baseline=pairs.only_in_baseline,
        seeds_non_finite=pairs.non_finite,
        lower_is_better=bool(lower_is_better),
        alpha=float(alpha),
        confidence=1.0 - float(alpha),
        n_boot=n_boot,
        boot_seed=seed,
        strategy_summary=describe(pairs.strategy),
        baseline_summary=describe(pairs.baseline),
        diffs=[float(v) for v in pairs.diffs],
        alternative=alternative,
        warnings=pairs.dropped_warnings(),
    )
    _set_reach(out, 1)
    return out


def _add_location(out: PairedComparison, diffs: np.ndarray, lower_is_better: bool) -> dict:
    """Mean, median, IQM and sd of the differences, and the share of seeds won."""
    d = describe(diffs)
    out.mean_diff, out.median_diff, out.iqm_diff = d["mean"], d["median"], d["iqm"]
    out.sd_diff = d["std"]
    better = diffs < 0 if lower_is_better else diffs > 0
    out.prob_better = float((np.sum(better) + 0.5 * np.sum(diffs == 0)) / diffs.size)
    return d


def _one_sided_mde(n: int, alpha: float, power: float = POWER) -> float:
    """Smallest |d_z| a one-sided paired t-test at ``alpha`` detects with ``power``.

    statsmodels' ``TTestPower`` with ``alternative="larger"`` (the power against an effect
    in the tested direction; the "smaller" case is its mirror image).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mde = TTestPower().solve_power(
            effect_size=None, nobs=n, alpha=alpha, power=power, alternative="larger"
        )
    mde = float(np.asarray(mde).item())
    return mde if math.isfinite(mde) and mde > 0 else NAN


def _add_minimum_detectable_effect(
    out: PairedComparison, n: int, alpha: float, alternative: str
) -> None:
    """The minimum detectable d_z (Cohen 1988): depends on n, alpha and the sidedness."""
    warns = out.warnings
    try:
        if alternative == "two-sided":
            out.mde_d_z = minimum_detectable_d_z(n, alpha)
        else:
            out.mde_d_z = _one_sided_mde(n, alpha)
    except Exception as exc:  # report it; never crash the report
        warns.append(f"minimum detectable effect could not be computed ({exc})")
    if math.isnan(out.mde_d_z):
        if not any("minimum detectable" in w for w in warns):
            warns.append("minimum detectable effect could not be computed")


def _add_t_test(out: PairedComparison, n: int, mean: float, sd: float, alpha: float) -> None:
    """Paired t-test, t interval, d_z and the minimum detectable effect in metric units."""
    df = n - 1
    se = sd / math.sqrt(n)
    tcrit = float(_st.t.ppf(1 - alpha / 2, df))
    t_stat = mean / se
    out.t = float(t_stat)
    out.p_t = _t_p_value(float(t_stat), df, out.alternative)
    out.ci_t = [float(mean - tcrit * se), float(mean + tcrit * se)]
    out.d_z = float(mean / sd)
    out.mde_metric = float(out.mde_d_z * sd)


def _t_p_value(t_stat: float, df: int, alternative: str) -> float:
    """The t-test's p in scipy's convention (``ttest_rel(..., alternative=...)``)."""
    if alternative == "less":
        return float(_st.t.cdf(t_stat, df))
    if alternative == "greater":
        return float(_st.t.sf(t_stat, df))
    return float(min(1.0, 2 * _st.t.sf(abs(t_stat), df)))


def _add_bootstrap(
    out: PairedComparison, diffs: np.ndarray, n_boot: int, seed: int | None, alpha: float
) -> None:
    """Percentile and BCa bootstrap intervals of the mean and IQM difference."""
    warns = out.warnings
    boot = paired_bootstrap(diffs, n_boot, seed, alpha)
    out.ci_boot_percentile = boot["mean_percentile"]
    out.ci_boot_bca = boot["mean_bca"]
    out.iqm_ci_boot_percentile = boot["iqm_percentile"]
    out.iqm_ci_boot_bca = boot["iqm_bca"]
    if any(math.isnan(v) for v in boot["mean_bca"] + boot["iqm_bca"]):
        warns.append(
            "BCa interval undefined (the bootstrap distribution lies on one "
            "side of the estimate); use the percentile or t interval"
        )
    n = int(diffs.size)
    if n < 10:
        warns.append(
            f"with only {n} pairs the bootstrap intervals are too narrow "
            "(no small-sample correction); prefer the t interval"
        )


def _add_constant_difference(out: PairedComparison, diffs: np.ndarray, mean: float) -> None:
    """Every difference is the same number c: there is no spread to test against."""
    c = float(mean)
    out.sd_diff = 0.0
    out.ci_boot_percentile = [c, c]
    out.ci_boot_bca = [c, c]
    out.iqm_ci_boot_percentile = [c, c]
    out.iqm_ci_boot_bca = [c, c]
    if bool(np.all(diffs == 0)):
        out.warnings.append(
            "sd of differences is 0: all differences are 0 (strategy and "
            "baseline identical on every seed); no test possible"
        )
    else:
        out.warnings.append(
            f"sd of differences is 0: every difference equals {c:g}; the "
            "t-test, t interval and d_z are undefined"
        )


def _add_signed_rank_test(out: PairedComparison, diffs: np.ndarray, alternative: str) -> None:
    """The Wilcoxon signed-rank test, and what its zeros and ties mean for it."""
    n = int(diffs.size)
    if alternative == "two-sided":
        w_stat, w_p, w_method, w_n = signed_rank_test(diffs)
    else:
        w_stat, w_p, w_method, w_n = one_sided_signed_rank_test(diffs, alternative)
    out.wilcoxon_stat, out.p_wilcoxon = w_stat, w_p
    out.wilcoxon_method, out.wilcoxon_n = w_method, w_n
    if 0 < w_n < n:
        wf = wilcoxon_reach(w_n, alpha=out.alpha, alternative=alternative).floor
        out.warnings.append(
            f"{n - w_n} zero difference{'s' if n - w_n > 1 else ''} dropped from "
            f"the Wilcoxon test (Wilcoxon 1945); it uses {w_n} pairs "
            f"(floor {fmt_g(wf)})"
        )
    if w_method.startswith("exact conditional") and "ties" in w_method:
        out.warnings.append(
            "tied |differences|: Wilcoxon p from the exact conditional distribution with mid-ranks"
        )


def compare_family(
    results: Mapping[str, Mapping[Any, float]],
    baseline: str,
    *,
    lower_is_better: bool = True,
    n_boot: int = 10000,
    seed: int | None = 0,
    alpha: float = 0.05,
    metric: str = "test loss",
    primary: str = "t",
    alternative: str | Mapping[str, str] = "two-sided",
) -> dict[str, FamilyComparison]:
    """Every strategy against the baseline, with Holm correction across the family.

    ``results`` maps strategy name -> ``{seed: metric value}`` and must contain
    ``baseline``. Each other strategy gets ``compare_paired(results[s], results[baseline])``
    as a ``FamilyComparison`` with ``strategy``, ``baseline``, ``metric``,
    ``primary_test``, ``p_t_holm``, ``p_wilcoxon_holm`` (Holm 1979 over the comparisons of
    this family, NaN ignored), ``significant`` (the ``primary`` test's Holm p < alpha) and
    ``verdict``, a sentence saying in plain words what the data support. ``primary`` is
    ``"t"`` (paired t-test, matching the t interval quoted in the verdict) or
    ``"wilcoxon"``; the other test is quoted too. Output order follows ``results``
    without the baseline.

    ``alternative`` is one for every comparison, or ``{strategy: alternative}`` (missing
    ones two-sided): what a study declared before its runs. The family's size for
    ``can_reach_significance`` is the number of comparisons Holm corrects (those with a
    Wilcoxon p), so 8 pairs two-sided in a family of 8 cannot reach 0.05: 2/2**8 × 8 =
    0.0625.
    """
    if primary not in ("t", "wilcoxon"):
        raise ValueError(f"primary must be 't' or 'wilcoxon', got {primary!r}")
    if baseline not in results:
        raise KeyError(f"baseline {baseline!r} not in results (have {sorted(results)})")
    names = [k for k in results if k != baseline]
    sides = (
        {name: alternative for name in names}
        if isinstance(alternative, str)
        else {name: alternative.get(name, "two-sided") for name in names}
    )
    each = {
        name: compare_paired(
            results[name],
            results[baseline],
            lower_is_better=lower_is_better,
            n_boot=n_boot,
            seed=seed,
            alpha=alpha,
            alternative=sides[name],
        )
        for name in names
    }
    p_t_holm = holm([each[k].p_t for k in names])
    p_w_holm = holm([each[k].p_wilcoxon for k in names])
    family = max(1, sum(not is_nan(each[k].p_wilcoxon) for k in names))
    return {
        name: _in_family(each[name], name, baseline, metric, primary, (pt, pw), family)
        for name, pt, pw in zip(names, p_t_holm, p_w_holm)
    }


def _in_family(
    r: PairedComparison,
    name: str,
    baseline: str,
    metric: str,
    primary: str,
    holm_ps: tuple[float, float],
    family_size: int,
) -> FamilyComparison:
    """One comparison with its Holm p-values (t, Wilcoxon), reach and verdict."""
    pt, pw = holm_ps
    p_primary = pt if primary == "t" else pw
    out = FamilyComparison(
        **{f.name: getattr(r, f.name) for f in fields(PairedComparison)},
        strategy=name,
        baseline=baseline,
        metric=metric,
        primary_test=primary,
        p_t_holm=pt,
        p_wilcoxon_holm=pw,
        significant=bool(not is_nan(p_primary) and p_primary < r.alpha),
    )
    _family_reach(out, family_size)
    out.verdict = verdict(name, baseline, out, metric=metric, primary=primary)
    return out


def _family_reach(r: PairedComparison, family_size: int) -> None:
    """Recompute the Wilcoxon reach for the family's size, and its warning with it."""
    old = _floor_warning(r) if not r.can_reach_significance else None
    _set_reach(r, family_size)
    warns = [w for w in r.warnings if w != old]
    if r.n >= 2 and not r.can_reach_significance:
        warns.append(_floor_warning(r))
    r.warnings = warns
