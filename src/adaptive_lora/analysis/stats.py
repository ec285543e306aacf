"""Paired statistics for comparing rank-allocation strategies with a uniform baseline.

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
import warnings as _warnings
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = [
    "compare_family",
    "compare_paired",
    "describe",
    "fmt_num",
    "fmt_p",
    "fmt_sig",
    "holm",
    "iqm",
    "to_jsonable",
    "wilcoxon_floor_p",
]

NAN = float("nan")
POWER = 0.8
MINUS = "\u2212"  # typographic minus sign used in verdict sentences
_EXACT_DP_MAX_N = 1000  # above this many nonzero differences use the normal approximation


# ----------------------------------------------------------------------------- helpers


def _f(x: Any) -> float:
    """A plain Python float (NaN for None)."""
    return NAN if x is None else float(x)


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


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


def wilcoxon_floor_p(n: int) -> float:
    """Smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs.

    The most extreme outcome (all n differences of one sign) has probability 2**-n under
    the null, so the two-sided floor is ``2 / 2**n`` (capped at 1): 0.0625 for n = 5,
    0.03125 for n = 6. A two-sided test at alpha = 0.05 needs n >= 6.
    """
    if n <= 1:
        return 1.0
    return min(1.0, 2.0 / 2.0**n)


def _normalise_seed(k: Any) -> Any:
    """Seeds as ints where possible, so that ``{"3": x}`` (from JSON) pairs with ``{3: y}``."""
    if isinstance(k, (bool, np.bool_)):
        return k
    if isinstance(k, (int, np.integer)):
        return int(k)
    if isinstance(k, str):
        s = k.strip()
        if s.lstrip("+-").isdigit():
            return int(s)
    return k


def _seed_sort_key(k: Any) -> tuple[int, Any]:
    return (0, k) if isinstance(k, int) else (1, str(k))


def _normalise_runs(d: Mapping[Any, Any], what: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for k, v in d.items():
        key = _normalise_seed(k)
        if key in out:
            raise ValueError(f"{what}: seed {k!r} appears twice")
        out[key] = _f(v)
    return out


# ------------------------------------------------------------------------------ Holm


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order.

    With the m non-NaN p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted
    value of p_(i) is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: monotone in the
    ordering and capped at 1. NaN (a comparison without a test) passes through untouched
    and is not counted in the family size m. Equals
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]`` on non-NaN input.
    """
    p = np.asarray([_f(x) for x in pvalues], dtype=float)
    out = p.copy()
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return [float(x) for x in out]
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1]: {list(pvalues)}")
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[ok], kind="stable")]
    factors = m - np.arange(m)  # m, m-1, ..., 1
    adj = np.minimum(1.0, np.maximum.accumulate(factors * p[order]))
    out[order] = adj
    return [float(x) for x in out]


# -------------------------------------------------------------------------- Wilcoxon


def _signed_rank_exact_p(d: np.ndarray) -> float:
    """Exact two-sided p of the signed-rank statistic, conditional on the observed |d|.

    Zeros must already be removed. Mid-ranks handle ties; under the null each difference
    is + or - with probability 1/2 independently, and the distribution of R+ (a sum of a
    random subset of the ranks) is built by dynamic programming on the doubled ranks,
    which are integers. p = 2 * min(P(R+ <= r), P(R+ >= r)), capped at 1 (the
    two-sided convention of ``scipy.stats.wilcoxon``).
    """
    ranks2 = np.rint(2.0 * _st.rankdata(np.abs(d))).astype(np.int64)
    r_obs = int(ranks2[d > 0].sum())
    total = int(ranks2.sum())
    dist = np.zeros(total + 1)
    dist[0] = 1.0
    for r in ranks2:
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[: total + 1 - r]
        dist = 0.5 * (dist + shifted)
    cdf = float(dist[: r_obs + 1].sum())
    sf = float(dist[r_obs:].sum())
    return min(1.0, 2.0 * min(cdf, sf))


def _wilcoxon(diffs: np.ndarray) -> tuple[float, float, str, int]:
    """Two-sided Wilcoxon signed-rank test of the differences (Wilcoxon 1945).

    Returns ``(statistic, p, method, n_used)``; the statistic is min(R+, R-) as in scipy.
    Zeros are dropped (Wilcoxon's own convention, scipy's ``zero_method="wilcox"``).
    Without ties or zeros: ``scipy.stats.wilcoxon(method="exact")``. With ties or zeros:
    the exact conditional (permutation) distribution with mid-ranks, which is what
    ``scipy.stats.wilcoxon(method=PermutationMethod())`` approximates; beyond
    1000 nonzero differences, the tie-corrected normal approximation.
    """
    nz = diffs[diffs != 0]
    m = int(nz.size)
    n_zero = int(diffs.size - m)
    if m == 0:
        return NAN, NAN, "none (all differences are zero)", 0
    ranks = _st.rankdata(np.abs(nz))
    r_plus = float(ranks[nz > 0].sum())
    r_minus = float(ranks[nz < 0].sum())
    stat = min(r_plus, r_minus)
    has_ties = bool(np.unique(np.abs(nz)).size < m)
    if not has_ties and n_zero == 0 and m <= 50:
        res = _st.wilcoxon(nz, method="exact", alternative="two-sided")
        return float(res.statistic), float(res.pvalue), "exact", m
    if m <= _EXACT_DP_MAX_N:
        why = []
        if n_zero:
            why.append(f"{n_zero} zero difference{'s' if n_zero > 1 else ''} dropped")
        if has_ties:
            why.append("mid-ranks for ties")
        label = "exact conditional" + (f" ({', '.join(why)})" if why else "")
        return stat, _signed_rank_exact_p(nz), label, m
    res = _st.wilcoxon(nz, method="asymptotic", correction=False, alternative="two-sided")
    return float(res.statistic), float(res.pvalue), "normal approximation (tie-corrected)", m


# ------------------------------------------------------------------------- bootstrap


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


def _bootstrap(
    diffs: np.ndarray, n_boot: int, seed: int | None, alpha: float
) -> dict[str, list[float]]:
    """Paired bootstrap of the mean and IQM of the differences.

    Whole seeds are resampled with replacement (``rng.integers(0, n, (n_boot, n))``, the
    same draw as ``scipy.stats.bootstrap`` with ``rng=np.random.default_rng(seed)``), so
    strategy and baseline values stay paired.
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


# ------------------------------------------------------------------------ formatting


def _round_half_up(x: float, decimals: int) -> str:
    q = Decimal(1).scaleb(-decimals)
    return str(Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP))


def _sig_decimals(x: float, sig: int) -> int:
    if x == 0 or not math.isfinite(x):
        return max(0, sig - 1)
    return max(0, sig - 1 - math.floor(math.log10(abs(x)) + 1e-9))


def fmt_num(x: Any, decimals: int = 3, *, plus: bool = False, unicode_minus: bool = True) -> str:
    """A number with fixed decimals, a typographic minus (U+2212) and "n/a" for NaN/None.

    ``plus=True`` writes a leading "+" on positive numbers. Rounds half up.
    """
    if _isnan(x) or math.isnan(float(x)):
        return "n/a"
    if math.isinf(float(x)):
        return ((MINUS if unicode_minus else "-") + "inf") if float(x) < 0 else "inf"
    s = _round_half_up(float(x), decimals)
    if s.startswith("-"):
        body = s[1:]
        if float(body) == 0:  # "-0.000" -> "0.000"
            return body
        return (MINUS if unicode_minus else "-") + body
    return ("+" + s) if (plus and float(s) != 0) else s


def fmt_sig(x: Any, sig: int = 2, *, unicode_minus: bool = True) -> str:
    """A number to ``sig`` significant figures (at least), e.g. d_z: 1.2, 0.35, 12."""
    if _isnan(x) or not math.isfinite(float(x)):
        return fmt_num(x, unicode_minus=unicode_minus)
    return fmt_num(float(x), _sig_decimals(float(x), sig), unicode_minus=unicode_minus)


def fmt_p(p: Any, *, alpha: float = 0.05, label: str | None = None) -> str:
    """A p-value for prose and tables: two significant figures, "< 0.001" below 0.001.

    If rounding to two figures would move p across ``alpha`` (0.0496 -> "0.050"), three
    figures are written instead ("0.0496"), so the text never contradicts the decision.
    NaN/None gives "n/a". With ``label="p"`` the result reads "p = 0.43" / "p < 0.001".
    """
    if _isnan(p):
        s = "n/a"
        return f"{label} = {s}" if label else s
    p = float(p)
    if p < 0.001:
        s = "< 0.001"
        return f"{label} {s}" if label else s
    s = _round_half_up(p, _sig_decimals(p, 2))
    if (float(s) < alpha) != (p < alpha):
        s = _round_half_up(p, _sig_decimals(p, 3))
    return f"{label} = {s}" if label else s


def _fmt_g(x: float) -> str:
    return f"{x:g}"


def _metric_decimals(*values: float) -> int:
    finite = [abs(v) for v in values if not _isnan(v) and math.isfinite(v)]
    scale = max(finite) if finite else 0.0
    if scale == 0:
        return 3
    return min(10, max(0, 1 - math.floor(math.log10(scale) + 1e-9)))


# -------------------------------------------------------------------- compare_paired


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
    pairs = _pair_up(strategy, baseline)
    diffs, n, warns = pairs["diffs"], pairs["diffs"].size, pairs["warnings"]
    out = _empty_comparison(pairs, lower_is_better, alpha, int(n_boot), seed)
    if n == 0:
        warns.append("no seeds in common between strategy and baseline: nothing to compare")
        warns.append("n < 2: no test possible")
        return out
    d = describe(diffs)
    out.update(mean_diff=d["mean"], median_diff=d["median"], iqm_diff=d["iqm"], sd_diff=d["std"])
    better = diffs < 0 if lower_is_better else diffs > 0
    out["prob_better"] = float((np.sum(better) + 0.5 * np.sum(diffs == 0)) / n)
    if n < 2:
        warns.append(
            f"n < 2: no test possible (n = {n}); intervals, tests, d_z and power "
            "need at least 2 paired seeds"
        )
        return out
    if not out["can_reach_significance"]:
        warns.append(
            f"with {n} seeds a two-sided Wilcoxon test cannot reach "
            f"p < {_fmt_g(alpha)} (floor {_fmt_g(out['wilcoxon_floor_p'])})"
        )
    out["df"] = float(n - 1)
    _add_mde(out, n, alpha, warns)
    if d["std"] > pairs["tol"]:
        _add_t_and_bootstrap(out, diffs, d["mean"], d["std"], int(n_boot), seed, alpha, warns)
    else:
        _note_no_spread(out, diffs, d["mean"], warns)
    _add_wilcoxon(out, diffs, warns)
    return out


def _pair_up(strategy: Mapping[Any, float], baseline: Mapping[Any, float]) -> dict[str, Any]:
    """Pair the two samples by seed; the differences and what was dropped, and why."""
    s = _normalise_runs(strategy, "strategy")
    b = _normalise_runs(baseline, "baseline")
    common = sorted(set(s) & set(b), key=_seed_sort_key)
    only_s = sorted(set(s) - set(b), key=_seed_sort_key)
    only_b = sorted(set(b) - set(s), key=_seed_sort_key)
    non_finite = [k for k in common if not (math.isfinite(s[k]) and math.isfinite(b[k]))]
    seeds = [k for k in common if k not in non_finite]
    xs = np.array([s[k] for k in seeds], dtype=float)
    xb = np.array([b[k] for k in seeds], dtype=float)
    diffs = xs - xb
    # Differences at the level of floating-point rounding of the raw values count as 0
    # (e.g. x + 0.01 - x is not exactly 0.01), so "all equal" and "zero" are robust.
    tol = 64 * np.finfo(float).eps * float(np.max(np.abs(np.r_[xs, xb]))) if diffs.size else 0.0
    diffs = np.where(np.abs(diffs) <= tol, 0.0, diffs)
    warns: list[str] = []
    if only_s:
        warns.append(f"seeds only in the strategy, dropped: {only_s}")
    if only_b:
        warns.append(f"seeds only in the baseline, dropped: {only_b}")
    if non_finite:
        warns.append(f"seeds with a non-finite value (failed run?), dropped: {non_finite}")
    return {
        "seeds": seeds, "only_s": only_s, "only_b": only_b, "non_finite": non_finite,
        "xs": xs, "xb": xb, "diffs": diffs, "tol": tol, "warnings": warns,
    }  # fmt: skip


def _empty_comparison(
    pairs: dict[str, Any], lower_is_better: bool, alpha: float, n_boot: int, seed: int | None
) -> dict[str, Any]:
    """Every key of a comparison, NaN where a later step fills it in."""
    n = int(pairs["diffs"].size)
    floor = wilcoxon_floor_p(n)
    return {
        "n": n,
        "n_pairs": n,
        "seeds": pairs["seeds"],
        "seeds_only_in_strategy": pairs["only_s"],
        "seeds_only_in_baseline": pairs["only_b"],
        "seeds_non_finite": pairs["non_finite"],
        "lower_is_better": bool(lower_is_better),
        "alpha": float(alpha),
        "confidence": 1.0 - float(alpha),
        "n_boot": n_boot,
        "boot_seed": seed,
        "strategy_summary": describe(pairs["xs"]),
        "baseline_summary": describe(pairs["xb"]),
        "diffs": [float(v) for v in pairs["diffs"]],
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
        "warnings": pairs["warnings"],
    }


def _add_mde(out: dict[str, Any], n: int, alpha: float, warns: list[str]) -> None:
    """Minimum detectable effect (Cohen 1988): depends on n and alpha only."""
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            # Imported here: statsmodels takes about a second to import and only this needs it.
            from statsmodels.stats.power import TTestPower

            mde = float(
                np.asarray(
                    TTestPower().solve_power(
                        effect_size=None, nobs=n, alpha=alpha, power=POWER, alternative="two-sided"
                    )
                ).item()
            )
        out["mde_d_z"] = mde if math.isfinite(mde) and mde > 0 else NAN
    except Exception as exc:  # report it; never crash the report
        warns.append(f"minimum detectable effect could not be computed ({exc})")
    if math.isnan(out["mde_d_z"]):
        if not any("minimum detectable" in w for w in warns):
            warns.append("minimum detectable effect could not be computed")


def _add_t_and_bootstrap(
    out: dict[str, Any],
    diffs: np.ndarray,
    mean: float,
    sd: float,
    n_boot: int,
    seed: int | None,
    alpha: float,
    warns: list[str],
) -> None:
    """Paired t-test, t interval, d_z and the bootstrap intervals of mean and IQM."""
    n = diffs.size
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
    boot = _bootstrap(diffs, n_boot, seed, alpha)
    out["ci_boot_percentile"] = boot["mean_percentile"]
    out["ci_boot_bca"] = boot["mean_bca"]
    out["iqm_ci_boot_percentile"] = boot["iqm_percentile"]
    out["iqm_ci_boot_bca"] = boot["iqm_bca"]
    if any(math.isnan(v) for v in boot["mean_bca"] + boot["iqm_bca"]):
        warns.append(
            "BCa interval undefined (the bootstrap distribution lies on one "
            "side of the estimate); use the percentile or t interval"
        )
    if n < 10:
        warns.append(
            f"with only {n} pairs the bootstrap intervals are too narrow "
            "(no small-sample correction); prefer the t interval"
        )


def _note_no_spread(out: dict[str, Any], diffs: np.ndarray, mean: float, warns: list[str]) -> None:
    """Every difference is the same number c: there is no spread to test against."""
    c = float(mean)
    out["sd_diff"] = 0.0
    out["ci_boot_percentile"] = [c, c]
    out["ci_boot_bca"] = [c, c]
    out["iqm_ci_boot_percentile"] = [c, c]
    out["iqm_ci_boot_bca"] = [c, c]
    if bool(np.all(diffs == 0)):
        warns.append(
            "sd of differences is 0: all differences are 0 (strategy and "
            "baseline identical on every seed); no test possible"
        )
    else:
        warns.append(
            f"sd of differences is 0: every difference equals {c:g}; the "
            "t-test, t interval and d_z are undefined"
        )


def _add_wilcoxon(out: dict[str, Any], diffs: np.ndarray, warns: list[str]) -> None:
    n = diffs.size
    w_stat, w_p, w_method, w_n = _wilcoxon(diffs)
    out.update(wilcoxon_stat=w_stat, p_wilcoxon=w_p, wilcoxon_method=w_method, wilcoxon_n=w_n)
    if 0 < w_n < n:
        wf = wilcoxon_floor_p(w_n)
        warns.append(
            f"{n - w_n} zero difference{'s' if n - w_n > 1 else ''} dropped from "
            f"the Wilcoxon test (Wilcoxon 1945); it uses {w_n} pairs "
            f"(floor {_fmt_g(wf)})"
        )
    if w_method.startswith("exact conditional") and "ties" in w_method:
        warns.append(
            "tied |differences|: Wilcoxon p from the exact conditional distribution with mid-ranks"
        )


# -------------------------------------------------------------------- compare_family


def _verdict(name: str, base: str, r: dict[str, Any], *, metric: str, primary: str) -> str:
    """One sentence (or two) that says what a comparison found, in plain words."""
    n, mean = r["n"], r["mean_diff"]
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n == 0:
        return f"{name} vs {base}: no seeds in common, nothing to compare."
    if n < 2:
        dec = _metric_decimals(mean)
        return (
            f"{name} vs {base}: too few seeds for a test (1 paired seed; difference "
            f"{fmt_num(mean, dec, plus=True)} in {metric})."
        )
    if all(v == 0 for v in r["diffs"]):
        return f"{name} and {base} give identical {metric} on all {seeds}; no test possible."
    verb = "lowers" if mean < 0 else "raises"
    judgement = "an improvement" if (mean < 0) == r["lower_is_better"] else "a deterioration"
    if r["sd_diff"] == 0:
        return _verdict_no_spread(name, base, r, metric, verb, judgement, seeds)
    p_key = "p_t" if primary == "t" else "p_wilcoxon"
    text = _verdict_main(name, base, r, metric, verb, judgement, seeds, p_key)
    return text + _verdict_secondary(r, seeds, p_key)


def _verdict_no_spread(name, base, r, metric, verb, judgement, seeds) -> str:
    alpha, mean = r["alpha"], r["mean_diff"]
    dec = _metric_decimals(mean)
    head = (
        f"{name} {verb} {metric} by {fmt_num(abs(mean), dec)} on every one of the "
        f"{seeds} vs {base} ({judgement}); with zero spread the t-test and d_z "
        "are undefined"
    )
    pw = r["p_wilcoxon_holm"]
    if _isnan(pw):
        return head + "."
    sig = pw < alpha
    tail = (
        f"; Wilcoxon signed-rank {'significant' if sig else 'not significant'} "
        f"after Holm correction ({fmt_p(pw, alpha=alpha, label='p')}"
    )
    if not r["can_reach_significance"]:
        tail += (
            f"; it cannot reach p < {_fmt_g(alpha)} with {seeds}, floor "
            f"{_fmt_g(r['wilcoxon_floor_p'])}"
        )
    return head + tail + ")."


def _verdict_main(name, base, r, metric, verb, judgement, seeds, p_key) -> str:
    """Significant after Holm, significant only uncorrected, or no detectable difference."""
    alpha, mean, ci = r["alpha"], r["mean_diff"], r["ci_t"]
    p_raw, p_adj = r[p_key], r[p_key + "_holm"]
    level = f"{_fmt_g(round(100 * r['confidence'], 6))}%"
    dec = _metric_decimals(mean, *ci)
    ci_txt = f"{level} CI {fmt_num(ci[0], dec)} to {fmt_num(ci[1], dec)}"
    dz_txt = f"d_z = {fmt_sig(r['d_z'])}"
    if not _isnan(p_adj) and p_adj < alpha:
        return (
            f"{name} {verb} {metric} by {fmt_num(abs(mean), dec)} ({ci_txt}) vs {base}, "
            f"{judgement}; significant after Holm correction "
            f"({fmt_p(p_adj, alpha=alpha, label='p')}, {dz_txt}, {seeds})."
        )
    if not _isnan(p_raw) and p_raw < alpha:
        return (
            f"{name} {verb} {metric} by {fmt_num(abs(mean), dec)} ({ci_txt}) vs {base}, "
            f"{judgement}, but not significant after Holm correction "
            f"({fmt_p(p_adj, alpha=alpha, label='p')}; uncorrected "
            f"{fmt_p(p_raw, alpha=alpha)}; {dz_txt}, {seeds})."
        )
    mde = r["mde_d_z"]
    mde_txt = ""
    if not _isnan(mde):
        mde_txt = (
            f"; with {seeds} the smallest effect detectable at 80% power is d_z = {fmt_sig(mde)}"
        )
        if not _isnan(r["mde_metric"]):
            mde_txt += f" (about {fmt_num(r['mde_metric'], dec)} in {metric})"
    return (
        f"No detectable difference between {name} and {base} in {metric}: mean "
        f"difference {fmt_num(mean, dec, plus=True)} ({ci_txt}; Holm-adjusted "
        f"{fmt_p(p_adj, alpha=alpha, label='p')}, {dz_txt}){mde_txt}."
    )


def _verdict_secondary(r: dict[str, Any], seeds: str, p_key: str) -> str:
    """The other test, and the Wilcoxon floor, are always stated."""
    alpha, p_adj = r["alpha"], r[p_key + "_holm"]
    other_key = "p_wilcoxon" if p_key == "p_t" else "p_t"
    test_name = {"p_t": "paired t-test", "p_wilcoxon": "Wilcoxon signed-rank test"}
    p_other = r[other_key + "_holm"]
    extra = ""
    if not _isnan(p_other):
        extra = (
            f" The {test_name[other_key]} gives Holm-adjusted "
            f"{fmt_p(p_other, alpha=alpha, label='p')}"
        )
        if not _isnan(p_adj) and (p_other < alpha) != (p_adj < alpha):
            extra += " and disagrees"
        extra += "."
    if not r["can_reach_significance"]:
        extra += (
            f" With {seeds} a two-sided Wilcoxon test cannot reach p < "
            f"{_fmt_g(alpha)} (floor {_fmt_g(r['wilcoxon_floor_p'])})."
        )
    return extra


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
        r["significant"] = bool(not _isnan(p_primary) and p_primary < alpha)
        r["verdict"] = _verdict(name, baseline, r, metric=metric, primary=primary)
    return out


# ------------------------------------------------------------------------------ JSON


def to_jsonable(obj: Any) -> Any:
    """A strict-JSON copy: NaN/inf -> None, numpy scalars/arrays -> Python numbers/lists.

    Dict keys become ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` as ``json`` allows;
    tuples and sets become lists.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                k = str(k)
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
