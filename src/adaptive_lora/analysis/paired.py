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

Nothing here hides a small sample: the floor of the exact Wilcoxon p-value (2 / 2**n) is
always reported, and every undefined quantity is NaN with a sentence in ``warnings``.
All returned values are plain Python types (NaN allowed); ``to_jsonable`` turns
NaN/inf into ``None`` for strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats as _st

from adaptive_lora.analysis.bootstrap import paired_bootstrap
from adaptive_lora.analysis.corrections import holm
from adaptive_lora.analysis.descriptive import describe
from adaptive_lora.analysis.formatting import fmt_g
from adaptive_lora.analysis.pairing import Pairs, pair_by_seed
from adaptive_lora.analysis.power import POWER, minimum_detectable_d_z
from adaptive_lora.analysis.signed_rank import signed_rank_test, wilcoxon_floor_p
from adaptive_lora.analysis.values import NAN, is_nan
from adaptive_lora.analysis.verdict import verdict

__all__ = ["compare_family", "compare_paired"]


def compare_paired(
    strategy: Mapping[Any, float],
    baseline: Mapping[Any, float],
    *,
    lower_is_better: bool = True,
    n_boot: int = 10000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
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
        Two-sided level: intervals are (1 - alpha) intervals and the minimum detectable
        effect is for a test at ``alpha``.

    Returns
    -------
    A dict of plain Python values (NaN where undefined) with the keys
    ``n, n_pairs, seeds, seeds_only_in_strategy, seeds_only_in_baseline,
    seeds_non_finite, lower_is_better, alpha, confidence, n_boot, boot_seed,
    strategy_summary, baseline_summary, diffs,
    mean_diff, median_diff, iqm_diff, sd_diff,
    ci_t, ci_boot_percentile, ci_boot_bca, iqm_ci_boot_percentile, iqm_ci_boot_bca,
    t, df, p_t, wilcoxon_stat, p_wilcoxon, wilcoxon_method, wilcoxon_n,
    d_z, mde_d_z, mde_metric, mde_power, prob_better,
    wilcoxon_floor_p, can_reach_significance, warnings``.
    Intervals are ``[low, high]`` for the difference. ``mde_d_z`` is the smallest |d_z|
    a two-sided paired t-test at ``alpha`` detects with 80 % power for this n
    (statsmodels ``TTestPower().solve_power``; Cohen 1988); ``mde_metric`` is
    ``mde_d_z * sd_diff``. ``prob_better`` is the fraction of seeds where the strategy
    beats the baseline, ties counting half. ``wilcoxon_floor_p = 2 / 2**n`` is the
    smallest exact two-sided Wilcoxon p possible with n pairs.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_boot = int(n_boot)
    pairs = pair_by_seed(strategy, baseline)
    out = _blank_result(pairs, lower_is_better, alpha, n_boot, seed)
    warns = out["warnings"]
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
    if not out["can_reach_significance"]:
        warns.append(
            f"with {n} seeds a two-sided Wilcoxon test cannot reach "
            f"p < {fmt_g(alpha)} (floor {fmt_g(out['wilcoxon_floor_p'])})"
        )
    out["df"] = float(n - 1)
    _add_minimum_detectable_effect(out, n, alpha)
    if d["std"] > pairs.tol:
        _add_t_test(out, n, d["mean"], d["std"], alpha)
        _add_bootstrap(out, pairs.diffs, n_boot, seed, alpha)
    else:
        _add_constant_difference(out, pairs.diffs, d["mean"])
    _add_signed_rank_test(out, pairs.diffs)
    return out


def _blank_result(
    pairs: Pairs, lower_is_better: bool, alpha: float, n_boot: int, seed: int | None
) -> dict[str, Any]:
    """Every key of the result: the pairing, the settings, and NaN for what needs n >= 2."""
    n = pairs.n
    floor = wilcoxon_floor_p(n)
    return {
        "n": n,
        "n_pairs": n,
        "seeds": pairs.seeds,
        "seeds_only_in_strategy": pairs.only_in_strategy,
        "seeds_only_in_baseline": pairs.only_in_baseline,
        "seeds_non_finite": pairs.non_finite,
        "lower_is_better": bool(lower_is_better),
        "alpha": float(alpha),
        "confidence": 1.0 - float(alpha),
        "n_boot": n_boot,
        "boot_seed": seed,
        "strategy_summary": describe(pairs.strategy),
        "baseline_summary": describe(pairs.baseline),
        "diffs": [float(v) for v in pairs.diffs],
        "mean_diff": NAN,
        "median_diff": NAN,
        "iqm_diff": NAN,
        "sd_diff": NAN,
        "ci_t": [NAN, NAN],
        "ci_boot_percentile": [NAN, NAN],
        "ci_boot_bca": [NAN, NAN],
        "iqm_ci_boot_percentile": [NAN, NAN],
        "iqm_ci_boot_bca": [NAN, NAN],
        "t": NAN,
        "df": NAN,
        "p_t": NAN,
        "wilcoxon_stat": NAN,
        "p_wilcoxon": NAN,
        "wilcoxon_method": "none",
        "wilcoxon_n": 0,
        "d_z": NAN,
        "mde_d_z": NAN,
        "mde_metric": NAN,
        "mde_power": POWER,
        "prob_better": NAN,
        "wilcoxon_floor_p": floor,
        "can_reach_significance": bool(floor < alpha),
        "warnings": pairs.dropped_warnings(),
    }


def _add_location(out: dict[str, Any], diffs: np.ndarray, lower_is_better: bool) -> dict:
    """Mean, median, IQM and sd of the differences, and the share of seeds won."""
    d = describe(diffs)
    out.update(mean_diff=d["mean"], median_diff=d["median"], iqm_diff=d["iqm"], sd_diff=d["std"])
    better = diffs < 0 if lower_is_better else diffs > 0
    out["prob_better"] = float((np.sum(better) + 0.5 * np.sum(diffs == 0)) / diffs.size)
    return d


def _add_minimum_detectable_effect(out: dict[str, Any], n: int, alpha: float) -> None:
    """The minimum detectable d_z (Cohen 1988): depends on n and alpha only."""
    warns = out["warnings"]
    try:
        out["mde_d_z"] = minimum_detectable_d_z(n, alpha)
    except Exception as exc:  # report it; never crash the report
        warns.append(f"minimum detectable effect could not be computed ({exc})")
    if math.isnan(out["mde_d_z"]):
        if not any("minimum detectable" in w for w in warns):
            warns.append("minimum detectable effect could not be computed")


def _add_t_test(out: dict[str, Any], n: int, mean: float, sd: float, alpha: float) -> None:
    """Paired t-test, t interval, d_z and the minimum detectable effect in metric units."""
    df = n - 1
    se = sd / math.sqrt(n)
    tcrit = float(_st.t.ppf(1 - alpha / 2, df))
    t_stat = mean / se
    out.update(
        t=float(t_stat),
        p_t=float(min(1.0, 2 * _st.t.sf(abs(t_stat), df))),
        ci_t=[float(mean - tcrit * se), float(mean + tcrit * se)],
        d_z=float(mean / sd),
        mde_metric=float(out["mde_d_z"] * sd),
    )


def _add_bootstrap(
    out: dict[str, Any], diffs: np.ndarray, n_boot: int, seed: int | None, alpha: float
) -> None:
    """Percentile and BCa bootstrap intervals of the mean and IQM difference."""
    warns = out["warnings"]
    boot = paired_bootstrap(diffs, n_boot, seed, alpha)
    out["ci_boot_percentile"] = boot["mean_percentile"]
    out["ci_boot_bca"] = boot["mean_bca"]
    out["iqm_ci_boot_percentile"] = boot["iqm_percentile"]
    out["iqm_ci_boot_bca"] = boot["iqm_bca"]
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


def _add_constant_difference(out: dict[str, Any], diffs: np.ndarray, mean: float) -> None:
    """Every difference is the same number c: there is no spread to test against."""
    c = float(mean)
    out["sd_diff"] = 0.0
    out["ci_boot_percentile"] = [c, c]
    out["ci_boot_bca"] = [c, c]
    out["iqm_ci_boot_percentile"] = [c, c]
    out["iqm_ci_boot_bca"] = [c, c]
    if bool(np.all(diffs == 0)):
        out["warnings"].append(
            "sd of differences is 0: all differences are 0 (strategy and "
            "baseline identical on every seed); no test possible"
        )
    else:
        out["warnings"].append(
            f"sd of differences is 0: every difference equals {c:g}; the "
            "t-test, t interval and d_z are undefined"
        )


def _add_signed_rank_test(out: dict[str, Any], diffs: np.ndarray) -> None:
    """The Wilcoxon signed-rank test, and what its zeros and ties mean for it."""
    n = int(diffs.size)
    w_stat, w_p, w_method, w_n = signed_rank_test(diffs)
    out.update(wilcoxon_stat=w_stat, p_wilcoxon=w_p, wilcoxon_method=w_method, wilcoxon_n=w_n)
    if 0 < w_n < n:
        wf = wilcoxon_floor_p(w_n)
        out["warnings"].append(
            f"{n - w_n} zero difference{'s' if n - w_n > 1 else ''} dropped from "
            f"the Wilcoxon test (Wilcoxon 1945); it uses {w_n} pairs "
            f"(floor {fmt_g(wf)})"
        )
    if w_method.startswith("exact conditional") and "ties" in w_method:
        out["warnings"].append(
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
) -> dict[str, dict[str, Any]]:
    """Every strategy against the baseline, with Holm correction across the family.

    ``results`` maps strategy name -> ``{seed: metric value}`` and must contain
    ``baseline``. Each other strategy gets ``compare_paired(results[s], results[baseline])``
    plus ``strategy``, ``baseline``, ``metric``, ``primary_test``, ``p_t_holm``,
    ``p_wilcoxon_holm`` (Holm 1979 over the comparisons of this family, NaN ignored),
    ``significant`` (the ``primary`` test's Holm p < alpha) and ``verdict``, a sentence
    saying in plain words what the data support. ``primary`` is ``"t"`` (paired t-test,
    matching the t interval quoted in the verdict) or ``"wilcoxon"``; the other test is
    quoted too. Output order follows ``results`` without the baseline.
    """
    if primary not in ("t", "wilcoxon"):
        raise ValueError(f"primary must be 't' or 'wilcoxon', got {primary!r}")
    if baseline not in results:
        raise KeyError(f"baseline {baseline!r} not in results (have {sorted(results)})")
    names = [k for k in results if k != baseline]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        out[name] = compare_paired(
            results[name],
            results[baseline],
            lower_is_better=lower_is_better,
            n_boot=n_boot,
            seed=seed,
            alpha=alpha,
        )
    p_t_holm = holm([out[k]["p_t"] for k in names])
    p_w_holm = holm([out[k]["p_wilcoxon"] for k in names])
    for name, pt, pw in zip(names, p_t_holm, p_w_holm):
        r = out[name]
        r["strategy"] = name
        r["baseline"] = baseline
        r["metric"] = metric
        r["primary_test"] = primary
        r["p_t_holm"] = pt
        r["p_wilcoxon_holm"] = pw
        p_primary = pt if primary == "t" else pw
        r["significant"] = bool(not is_nan(p_primary) and p_primary < alpha)
        r["verdict"] = verdict(name, baseline, r, metric=metric, primary=primary)
    return out
