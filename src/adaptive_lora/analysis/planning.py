"""Planning seeds before the runs: power of the paired t-test and of TOST, Wilcoxon's floor.

Every number here is for a *paired* comparison (strategy − baseline, paired by seed) with
an a-priori sd of the paired differences (from a pilot), in the metric's own units, and
at the **first Holm step**: a family of ``family_size`` comparisons is corrected by Holm
(Holm 1979), whose smallest p-value is compared with ``alpha / family_size``; a design
that cannot succeed there cannot succeed at all, and it is the level every comparison
gets in the sequential design (``analysis.sequential``).

* ``t_test_power`` / ``seeds_for_t_test``: the paired t-test's power from the noncentral
  t distribution (df = n − 1, noncentrality δ√n/σ; Cohen 1988, ch. 2) and the smallest
  number of seeds reaching a target power (default 0.8) at the smallest effect of
  interest δ. Two-sided power counts both tails, as statsmodels' ``TTestPower`` does.
* ``tost_power`` / ``seeds_for_tost``: the exact power of two one-sided t-tests
  (Schuirmann 1987) at an equivalence margin ±Δ, with a true difference of 0 (or a
  given one). Equivalence is declared when d̄ − Δ < −c·s/√n and d̄ + Δ > c·s/√n with
  c = t_{1−a, n−1}; given s, d̄ ~ N(μ, σ²/n), and (n − 1)s²/σ² ~ χ²_{n−1} independently,
  so the power is a one-dimensional integral over the χ² variable (Owen 1965,
  "A special case of a bivariate non-central t-distribution", Biometrika 52:437-446;
  Phillips 1990, J. Pharmacokin. Biopharm. 18:137-144) computed here with
  ``scipy.integrate.quad``. It is exact, where a noncentral-t shortcut is not.
* ``wilcoxon_floor`` / ``wilcoxon_reach``: the smallest p the exact signed-rank test can
  give with n pairs (all differences of one sign: 1/2ⁿ one-sided, 2/2ⁿ two-sided) and
  whether that floor, times the family size, is below alpha (e.g. n = 8, two-sided:
  1/128 × 8 = 0.0625 ≥ 0.05, so it cannot reach significance).
* ``plan_comparison``: all of the above for one comparison (a ``ComparisonPlan``, its
  Wilcoxon part a ``WilcoxonReach``), with one warning sentence for each test the
  planned seeds cannot decide (for ``plan`` and ``run --dry-run``).

As elsewhere in the package a test is significant when p < alpha (strictly).
``alternative`` uses scipy's words for the mean difference: ``"two-sided"``, ``"less"``
(strategy − baseline < 0) or ``"greater"``; effects and margins are positive magnitudes,
and a one-sided power is the power against a true difference of that magnitude in the
alternative's direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from scipy import integrate
from scipy import stats as st

from adaptive_lora.analysis.jsonable import KeyedRecord

__all__ = [
    "ALTERNATIVES",
    "ComparisonPlan",
    "WilcoxonReach",
    "plan_comparison",
    "seeds_for_t_test",
    "seeds_for_tost",
    "t_test_power",
    "tost_power",
    "wilcoxon_floor",
    "wilcoxon_reach",
]

ALTERNATIVES = ("two-sided", "less", "greater")
N_MAX = 100_000  # a search gives up here: such a design is not a plan


def _check(alternative: str, alpha: float, family_size: int) -> float:
    """Validate the common arguments; return the first-Holm-step level alpha / m."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if int(family_size) < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    return alpha / int(family_size)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def t_test_power(
    n: int,
    effect: float,
    sd: float,
    *,
    alpha: float = 0.05,
    family_size: int = 1,
    alternative: str = "two-sided",
) -> float:
    """Power of the paired t-test with n pairs against a true mean difference ``effect``.

    The test runs at ``alpha / family_size`` (first Holm step). ``effect`` is the
    magnitude of the smallest effect of interest, ``sd`` the sd of the paired
    differences (same units). Equals statsmodels'
    ``TTestPower().power(effect / sd, n, alpha / family_size, alternative=...)``.
    """
    level = _check(alternative, alpha, family_size)
    sd = _positive("sd", sd)
    if n < 2:
        return math.nan
    df = n - 1
    ncp = abs(effect) * math.sqrt(n) / sd
    if alternative == "two-sided":
        crit = st.t.isf(level / 2, df)
        wrong_side = st.nct.cdf(-crit, df, ncp)
        if math.isnan(wrong_side) and st.norm.cdf(-ncp) < 1e-12:
            # scipy's nct.cdf gives NaN far into the tail (ncp ≳ 15; statsmodels too), where
            # the term is below P(T < 0) = Φ(−ncp): a clear effect's power, not a NaN.
            wrong_side = 0.0
        return float(st.nct.sf(crit, df, ncp) + wrong_side)
    return float(st.nct.sf(st.t.isf(level, df), df, ncp))


def _smallest_n(power_at, target: float, n_max: int) -> int | None:
    """Smallest n >= 2 with power_at(n) >= target, for power increasing in n.

    Doubling then bisection keeps the search to ~2 log2(n) evaluations (TOST power is an
    integral, and margins far below the sd need thousands of seeds). None above n_max.
    """
    if not 0 < target < 1:
        raise ValueError(f"power must lie in (0, 1), got {target}")
    lo, hi = 1, 2  # invariant: power_at(lo) < target (n = 1 has no test)
    while power_at(hi) < target:
        if hi >= n_max:
            return None
        lo, hi = hi, min(2 * hi, n_max)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def seeds_for_t_test(
    effect: float,
    sd: float,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    family_size: int = 1,
    alternative: str = "two-sided",
    n_max: int = N_MAX,
) -> int | None:
    """Smallest number of seeds (pairs) whose paired t-test reaches ``power``.

    Arguments as in ``t_test_power``; None when more than ``n_max`` seeds are needed
    (for example an effect of 0).
    """
    _check(alternative, alpha, family_size)
    _positive("sd", sd)
    if effect == 0:
        return None
    return _smallest_n(
        lambda n: t_test_power(
            n, effect, sd, alpha=alpha, family_size=family_size, alternative=alternative
        ),
        power,
        n_max,
    )


def _tost_power_exact(
    lower: float, upper: float, true_diff: float, se: float, df: int, level: float
) -> float:
    """Exact power of TOST for equivalence limits (lower, upper) around a true difference.

    ``se`` is the true standard error of the estimate (σ/√n for paired differences) and
    the test uses a t with ``df`` degrees of freedom and an estimated se whose square is
    se²·V/df, V ~ χ²_df. Given V = v, both one-sided tests reject when
    lower + c·ŝe < d̄ < upper − c·ŝe, a normal probability; integrate it over V.
    Written for any (se, df) so that published crossover examples can check it.
    """
    crit = st.t.isf(level, df)
    # The interval is empty once c·ŝe exceeds half the width: v beyond v_max adds nothing.
    v_max = df * ((upper - lower) / (2 * crit * se)) ** 2
    v_lo, v_hi = st.chi2.ppf(1e-14, df), min(v_max, st.chi2.isf(1e-14, df))
    if v_hi <= v_lo:
        return 0.0

    def integrand(v: float) -> float:
        half = crit * se * math.sqrt(v / df)
        p = st.norm.cdf((upper - half - true_diff) / se) - st.norm.cdf(
            (lower + half - true_diff) / se
        )
        return max(p, 0.0) * st.chi2.pdf(v, df)

    value, _ = integrate.quad(integrand, v_lo, v_hi, limit=200, epsabs=1e-12, epsrel=1e-10)
    return float(min(max(value, 0.0), 1.0))


def tost_power(
    n: int,
    margin: float,
    sd: float,
    *,
    true_diff: float = 0.0,
    alpha: float = 0.05,
    family_size: int = 1,
) -> float:
    """Exact power of the paired TOST at ±``margin`` with n pairs (see module doc).

    Each one-sided test runs at ``alpha / family_size`` (the (1 − 2a) interval must lie
    inside ±margin, as ``analysis.equivalence.tost_paired`` decides). ``true_diff`` is
    the true mean difference (0: the strategies are the same).
    """
    level = _check("two-sided", alpha, family_size)
    margin, sd = _positive("margin", margin), _positive("sd", sd)
    if n < 2:
        return math.nan
    return _tost_power_exact(-margin, margin, true_diff, sd / math.sqrt(n), n - 1, level)


def seeds_for_tost(
    margin: float,
    sd: float,
    *,
    power: float = 0.8,
    true_diff: float = 0.0,
    alpha: float = 0.05,
    family_size: int = 1,
    n_max: int = N_MAX,
) -> int | None:
    """Smallest number of seeds whose TOST at ±``margin`` reaches ``power``.

    None when ``|true_diff| >= margin`` (TOST's power then stays below its level) or
    when more than ``n_max`` seeds are needed.
    """
    _check("two-sided", alpha, family_size)
    margin, sd = _positive("margin", margin), _positive("sd", sd)
    if abs(true_diff) >= margin:
        return None
    return _smallest_n(
        lambda n: tost_power(
            n, margin, sd, true_diff=true_diff, alpha=alpha, family_size=family_size
        ),
        power,
        n_max,
    )


def wilcoxon_floor(n: int, alternative: str = "two-sided") -> float:
    """Smallest p the exact Wilcoxon signed-rank test can give with n nonzero pairs.

    All n differences of one sign is the most extreme outcome, probability 2⁻ⁿ under the
    null: the floor is 2⁻ⁿ one-sided and 2·2⁻ⁿ two-sided (capped at 1). Equals
    ``scipy.stats.wilcoxon(d, method="exact")`` with every d > 0.
    """
    _check(alternative, 0.5, 1)
    if n < 1:
        return 1.0
    tails = 2.0 if alternative == "two-sided" else 1.0
    return float(min(1.0, tails * 0.5 ** int(n)))


@dataclass(frozen=True)
class WilcoxonReach(KeyedRecord):
    """Whether the exact Wilcoxon test with ``n`` pairs can pass the first Holm step."""

    n: int
    alternative: str
    floor: float  # ``wilcoxon_floor``
    holm_floor: float  # floor × family size, capped at 1: the smallest Holm-adjusted p
    level: float  # alpha / family size
    can_reach: bool  # holm_floor < alpha
    min_seeds: int  # the fewest pairs that can reach it


def wilcoxon_reach(
    n: int, *, alpha: float = 0.05, family_size: int = 1, alternative: str = "two-sided"
) -> WilcoxonReach:
    """Can the exact Wilcoxon test with n pairs be significant at the first Holm step?"""
    m = int(family_size)
    level = _check(alternative, alpha, m)
    floor = wilcoxon_floor(n, alternative)
    tails = 2.0 if alternative == "two-sided" else 1.0
    # floor * m < alpha  <=>  2^n > tails * m / alpha
    min_seeds = max(1, math.floor(math.log2(tails * m / alpha)) + 1)
    return WilcoxonReach(
        n=int(n),
        alternative=alternative,
        floor=floor,
        holm_floor=float(min(1.0, floor * m)),
        level=level,
        can_reach=bool(floor * m < alpha),
        min_seeds=int(min_seeds),
    )


@dataclass(frozen=True)
class ComparisonPlan(KeyedRecord):
    """Everything a plan says about one comparison (NaN/None where a part was not asked
    for), with one warning sentence per test the planned seeds cannot decide."""

    sd: float  # the (pilot) sd of the paired differences
    n_planned: int
    alpha: float
    family_size: int
    level: float  # alpha / family size: the first Holm step
    alternative: str
    target_power: float
    smallest_effect: float | None
    t_power: float
    t_seeds: int | None  # None: not asked, or beyond ``N_MAX``
    margin: float | None
    true_diff: float
    tost_power: float
    tost_seeds: int | None
    wilcoxon: WilcoxonReach
    warnings: list[str] = field(default_factory=list)


def plan_comparison(
    sd: float,
    n_planned: int,
    *,
    smallest_effect: float | None = None,
    margin: float | None = None,
    alpha: float = 0.05,
    family_size: int = 1,
    alternative: str = "two-sided",
    power: float = 0.8,
    true_diff: float = 0.0,
) -> ComparisonPlan:
    """Everything a plan says about one comparison, with a warning per undecidable test.

    ``sd`` is the (pilot) sd of the paired differences; ``n_planned`` the seeds the
    study will run. Warnings are sentences such as "TOST at ±0.0005 needs 120 seeds for
    80% power; 8 planned: power 0.4%".
    """
    level = _check(alternative, alpha, family_size)
    _positive("sd", sd)
    common = {"alpha": alpha, "family_size": family_size}
    t_power, t_seeds, tost, tost_seeds = math.nan, None, math.nan, None
    if smallest_effect is not None:
        t_power = t_test_power(n_planned, smallest_effect, sd, alternative=alternative, **common)
        t_seeds = seeds_for_t_test(
            smallest_effect, sd, power=power, alternative=alternative, **common
        )
    if margin is not None:
        tost = tost_power(n_planned, margin, sd, true_diff=true_diff, **common)
        tost_seeds = seeds_for_tost(margin, sd, power=power, true_diff=true_diff, **common)
    plan = ComparisonPlan(
        sd=float(sd),
        n_planned=int(n_planned),
        alpha=float(alpha),
        family_size=int(family_size),
        level=level,
        alternative=alternative,
        target_power=float(power),
        smallest_effect=smallest_effect,
        t_power=t_power,
        t_seeds=t_seeds,
        margin=margin,
        true_diff=float(true_diff),
        tost_power=tost,
        tost_seeds=tost_seeds,
        wilcoxon=wilcoxon_reach(n_planned, alternative=alternative, **common),
    )
    return replace(plan, warnings=_plan_warnings(plan))


def _needs(seeds: int | None, power: float) -> str:
    if seeds is None:
        return f"cannot reach {power:.0%} power with any number of seeds up to {N_MAX:,}"
    return f"needs {seeds} seeds for {power:.0%} power"


def _pct(p: float) -> str:
    """A power as a percentage; tiny ones say so instead of rounding to 0.0%."""
    return f"{p:.1%}" if not p < 0.001 else "< 0.1%"


def _plan_warnings(plan: ComparisonPlan) -> list[str]:
    """One sentence for each test the planned seeds cannot decide."""
    n, target, warns = plan.n_planned, plan.target_power, []
    level_text = f"α = {plan.alpha:g}" + (
        f" / {plan.family_size} (first Holm step)" if plan.family_size > 1 else ""
    )
    if plan.smallest_effect is not None and not plan.t_power >= target:
        warns.append(
            f"t-test at an effect of {plan.smallest_effect:g} ({level_text}) "
            f"{_needs(plan.t_seeds, target)}; {n} planned: power {_pct(plan.t_power)}"
        )
    if plan.margin is not None and not plan.tost_power >= target:
        warns.append(
            f"TOST at ±{plan.margin:g} ({level_text}) "
            f"{_needs(plan.tost_seeds, target)}; {n} planned: power {_pct(plan.tost_power)}"
        )
    w = plan.wilcoxon
    if not w.can_reach:
        warns.append(
            f"Wilcoxon signed-rank ({w.alternative}) cannot reach significance with {n} "
            f"seeds: its floor {w.floor:.4g} × {plan.family_size} = {w.holm_floor:.4g}"
            f" ≥ α = {plan.alpha:g}; it needs at least {w.min_seeds} seeds"
        )
    return warns
