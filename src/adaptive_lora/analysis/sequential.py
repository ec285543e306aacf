"""Sequential seeds: a group-sequential design for paired differences, looked at in blocks.

A study runs seeds in blocks (``seeds: {min: 4, max: 24, step: 4}`` gives looks at
n = 4, 8, ..., 24 seeds) and, after each block, asks of every comparison (strategy −
baseline, paired by seed) whether it is decided. This module answers that question
from the differences seen so far; a runner gives more seeds only to the comparisons
still open, and a report says at which look each one stopped and why.

**Spending.** Each comparison's test of "no difference" is a Lan–DeMets α-spending
design (Lan & DeMets 1983, "Discrete sequential boundaries for clinical trials",
Biometrika 70:659-663): with information fraction t = n_k / n_max, the cumulative type I
error spent by look k is α(t), either the O'Brien–Fleming type (default)
``α(t) = 2 − 2Φ(z_{1−α/2} / √t)``, which spends almost nothing early and keeps the final
boundary close to the fixed design's, or the Pocock type ``α(t) = α·ln(1 + (e − 1)t)``,
which spends evenly and stops earlier at the price of a higher final boundary. A
two-sided design spends α/2 on each side by the same function.

**Boundaries: numerical integration, then the t scale.** On the z scale (known variance)
the statistics Z_k = S_k/√n_k have independent increments, and the boundary c_k that
spends exactly α(t_k) − α(t_{k−1}) at look k is found by the recursive numerical
integration of Armitage, McPherson & Rowe (1969, JRSS A 132:235-244; Jennison & Turnbull
2000, "Group Sequential Methods with Applications to Clinical Trials", ch. 19): the
sub-density of Z_{k−1} on the continuation region is carried to look k by a normal
kernel on a fine Simpson grid, and c_k is a root of the crossing probability.

The variance of seed differences is unknown, so the z boundaries are carried to the
paired t statistic (df n_k − 1) by their tail probabilities (the "significance level
approach" to an estimated variance, Jennison & Turnbull 2000): look k's nominal level
per side is λ·Φ̄(c_k). With λ = 1 each look's marginal level is exact but the joint
error across looks is not: with looks at 4, 8, ..., 24 seeds and α = 0.05 it measures
0.053 (O'Brien–Fleming) and 0.056 (Pocock), because t statistics with few degrees of
freedom are less correlated between looks than z statistics. So λ (≈ 0.95 and 0.91
there) is calibrated once per design by a seeded simulation of 400,000 null paths (the
null t statistics are pivotal: their law depends on the look sizes only, not on σ):
the one factor that makes the simulated error across looks equal the level, while the
shape of the spending (what each look gets relative to the others) stays the
integral's. Why not calibrate every boundary by simulation: O'Brien–Fleming spends
~1e-7 at a first look of 4 of 24 seeds (less at α/m), far below what a simulation
resolves, whereas the integral is accurate to ~1e-9; one common factor is resolved by
400,000 paths to ~1% of α (~2% at α/8). The seed is fixed, so the boundaries are a
deterministic function of the design; ``bench/sequential_error.py`` checks the result
with independent simulations.

**Decisions** at a look, in this order (the first that holds stops the comparison):

* ``superior`` / ``inferior``: the paired t statistic of the mean difference crosses
  the spending boundary (two-sided: either side; ``alternative="less"`` or
  ``"greater"``: only the declared side can be claimed). Which sign is "superior"
  follows ``lower_is_better`` (True for a loss: strategy − baseline < 0 is better).
* ``equivalent`` (only with a declared ``margin``): TOST at ±margin, each one-sided test
  against its own one-sided O'Brien–Fleming/Pocock boundary at the comparison's level
  (a group-sequential TOST: each one-sided null is tested by a spending design).
* ``futile`` (only with a declared ``smallest_effect``): the data exclude the smallest
  effect of interest in the alternative's direction(s) by the same one-sided test. This
  rule is **non-binding**: the superiority boundaries are computed as if it did not
  exist, so stopping for it can only lower the type I error. It is a reason to stop
  giving seeds, not a claim that the strategies are the same.
* ``inconclusive``: the last look was reached without any of the above.
* ``continue``: not decided; ``next_n`` says how many seeds the next look needs.

**Family-wise error: α/m per comparison for the whole design (provably ≤ α).** Each of
the m comparisons of a Holm family gets the level a = α/m (Holm's first step, the
level ``analysis.planning`` plans seeds for), and every claim about it is a
group-sequential test at level a. A comparison has at most one true null — "no
difference" (μ = 0) and "not equivalent" (|μ| ≥ margin) are disjoint — so the chance
that it makes a false claim at any look is at most a (stopping for another reason only
removes chances to cross); by the union bound the family-wise error is at most m·a = α,
whatever the correlation between comparisons that share the baseline (exactly so on
the z scale; on the t scale up to the calibration's ~2% Monte-Carlo error in a).
Holm's later steps (giving a decided comparison's α to the open ones, as Maurer & Bretz 2013, Stat.
Biopharm. Res. 5:311-320, allow for superiority claims alone) are deliberately not
used: a comparison closed by a correct superiority claim may still hold a true
"not equivalent" null, so its α would be counted twice and the argument above would
bound the error only by 1.5α (m = 2, μ₁ at the margin). The price is some power at
Holm's later steps.

Inputs are differences ``strategy − baseline`` in seed order; a comparison's first n_k
values are its data at look k (values beyond the current look are ignored, and a
non-finite value ends the usable prefix). The functions are pure: the history is
replayed from look 0 on every call, so a runner and a report get the same answers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special
from scipy import stats as st

from adaptive_lora.analysis.item_variance import item_share_by_look

__all__ = [
    "ALTERNATIVES",
    "DECISIONS",
    "SPENDINGS",
    "Boundaries",
    "SequentialDecision",
    "SequentialDesign",
    "boundaries",
    "decide_matrix",
    "looks_from_seeds",
    "sequential_decisions",
    "spent_alpha",
    "z_boundaries",
]

ALTERNATIVES = ("two-sided", "less", "greater")
SPENDINGS = ("obrien-fleming", "pocock")
# Codes of decide_matrix, indexes into this tuple.
DECISIONS = ("continue", "superior", "inferior", "equivalent", "futile", "inconclusive")
CONTINUE, SUPERIOR, INFERIOR, EQUIVALENT, FUTILE, INCONCLUSIVE = range(6)

Z_CAP = 8.5  # grid edge: N(0, 1) mass beyond it is ~1e-17, below every spent increment
GRID_STEP = 0.01  # z units; refined when looks are so close that the kernel is narrow
CALIBRATION_SEED = 20_230_983  # fixed: the t boundaries are a deterministic function of the design
CALIBRATION_PATHS = 400_000  # MC error of the calibrated level: ~0.7% (α = 0.05) to 2% (α/8)
CALIBRATION_CHUNK = 50_000


def looks_from_seeds(minimum: int, maximum: int, step: int) -> tuple[int, ...]:
    """Cumulative seed counts of the looks: ``{min: 4, max: 24, step: 4}`` → (4, 8, ..., 24).

    ``maximum`` is always the last look, even when it is off the step grid.
    """
    if not (2 <= minimum <= maximum and step >= 1):
        raise ValueError(f"need 2 <= min <= max and step >= 1, got {minimum}, {maximum}, {step}")
    looks = list(range(minimum, maximum + 1, step))
    if looks[-1] != maximum:
        looks.append(maximum)
    return tuple(looks)


@dataclass(frozen=True)
class SequentialDesign:
    """A group-sequential design, declared in the study file before any run.

    looks: cumulative seed counts, strictly increasing, the first >= 2.
    alpha: family-wise level; each comparison gets ``alpha / family_size``.
    alternative: "two-sided", "less" or "greater", about strategy − baseline.
    spending: "obrien-fleming" (default) or "pocock" (Lan & DeMets 1983).
    margin: equivalence margin (metric units, > 0) or None: no equivalence stop.
    smallest_effect: smallest effect of interest (metric units, > 0) or None: no futility.
    lower_is_better: True when a negative difference means the strategy is better.
    family_size: the Holm family's size m; None means "the comparisons passed in".
    """

    looks: tuple[int, ...]
    alpha: float = 0.05
    alternative: str = "two-sided"
    spending: str = "obrien-fleming"
    margin: float | None = None
    smallest_effect: float | None = None
    lower_is_better: bool = True
    family_size: int | None = None

    def __post_init__(self) -> None:
        looks = tuple(int(n) for n in self.looks)
        object.__setattr__(self, "looks", looks)
        if not looks or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise ValueError(f"looks must increase strictly from at least 2 seeds, got {looks}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"alternative must be one of {ALTERNATIVES}")
        if self.spending not in SPENDINGS:
            raise ValueError(f"spending must be one of {SPENDINGS}")
        for name in ("margin", "smallest_effect"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number or None, got {value}")
        if self.family_size is not None and int(self.family_size) < 1:
            raise ValueError(f"family_size must be >= 1, got {self.family_size}")


def spent_alpha(fraction: Any, alpha: float, spending: str = "obrien-fleming") -> np.ndarray:
    """Cumulative type I error spent by information fraction t (Lan & DeMets 1983).

    O'Brien–Fleming type ``2 − 2Φ(z_{1−α/2}/√t)``; Pocock type ``α ln(1 + (e − 1)t)``.
    Both are 0 at t = 0 and α at t = 1.
    """
    t = np.clip(np.asarray(fraction, dtype=float), 0.0, 1.0)
    if spending == "obrien-fleming":
        with np.errstate(divide="ignore"):
            return 2.0 * st.norm.sf(st.norm.isf(alpha / 2) / np.sqrt(t))
    if spending == "pocock":
        return alpha * np.log1p((math.e - 1.0) * t)
    raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")


def _simpson(lo: float, hi: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and Simpson weights on [lo, hi] with spacing at most ``step``."""
    intervals = max(2, 2 * math.ceil((hi - lo) / (2 * step)))
    x = np.linspace(lo, hi, intervals + 1)
    w = np.ones(intervals + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (x[1] - x[0]) / 3.0


def _crossing(c: float, x: np.ndarray, wf: np.ndarray, r: float, s: float) -> float:
    """P(first crossing of the upper boundary c at this look, having continued so far).

    ``wf`` is the weighted sub-density of the previous Z on nodes x; given Z_prev = x,
    Z ~ N(r x, s²) with r = √(n_prev/n), s = √(1 − r²) (independent increments).
    """
    return float(np.dot(wf, st.norm.sf((c - r * x) / s)))


def _solve_boundary(target: float, x, wf, r: float, s: float) -> float:
    """The c whose upper crossing probability is ``target`` (inf when nothing is spent)."""
    if target <= 0.0:
        return math.inf
    if _crossing(Z_CAP, x, wf, r, s) >= target:
        return Z_CAP  # cannot be resolved beyond the grid; spends at most ~1e-17 less
    return float(
        optimize.brentq(
            lambda c: _crossing(c, x, wf, r, s) - target, 0.0, Z_CAP, xtol=1e-10, rtol=1e-12
        )
    )


@functools.lru_cache(maxsize=256)
def _z_boundaries_cached(
    fractions: tuple[float, ...], alpha: float, spending: str, two_sided: bool
) -> tuple[float, ...]:
    # A symmetric two-sided design spends alpha/2 on each side (the convention of
    # ldbounds, gsDesign and rpact); the lower side mirrors the upper one.
    per_side = alpha / 2.0 if two_sided else alpha
    spent = spent_alpha(np.asarray(fractions), per_side, spending)
    increments = np.diff(np.concatenate([[0.0], spent]))
    bounds = [float(st.norm.isf(increments[0])) if increments[0] > 0 else math.inf]
    kernels = [math.sqrt(1.0 - a / b) for a, b in zip(fractions, fractions[1:])]
    step = min([GRID_STEP] + [s / 10.0 for s in kernels])
    c = min(bounds[0], Z_CAP)
    x, w = _simpson(-c if two_sided else -Z_CAP, c, step)
    wf = w * st.norm.pdf(x)  # sub-density of Z_1 on the continuation region
    for k in range(1, len(fractions)):
        r = math.sqrt(fractions[k - 1] / fractions[k])
        s = kernels[k - 1]
        ck = _solve_boundary(float(increments[k]), x, wf, r, s)
        bounds.append(ck)
        c = min(ck, Z_CAP)
        y, wy = _simpson(-c if two_sided else -Z_CAP, c, step)
        density = st.norm.pdf((y[:, None] - r * x[None, :]) / s) @ wf / s
        x, wf = y, wy * density
    return tuple(bounds)


def z_boundaries(
    fractions: Sequence[float],
    alpha: float,
    spending: str = "obrien-fleming",
    two_sided: bool = True,
) -> np.ndarray:
    """Lan–DeMets boundaries on the z scale by recursive numerical integration.

    ``fractions`` are the information fractions of the looks (increasing, the last 1);
    ``alpha`` the total to spend: one-sided, an upper boundary c_k spending
    ``spent_alpha(t, alpha)``; two-sided, symmetric boundaries ±c_k, each side spending
    ``spent_alpha(t, alpha / 2)`` (the convention of ldbounds, gsDesign and rpact), with
    the continuation region (−c_k, c_k) carried between looks. Returns c_k per look
    (inf where nothing is spent). Known values: five equally spaced looks, O'Brien–
    Fleming type, two-sided α = 0.05: 4.877, 3.357, 2.680, 2.290, 2.031 (Reboussin,
    DeMets, Kim & Lan 2000, "Computations for group sequential boundaries using the
    Lan-DeMets spending function method", Controlled Clinical Trials 21:190-207).
    """
    fr = tuple(float(f) for f in fractions)
    if not fr or fr[0] <= 0 or any(b <= a for a, b in zip(fr, fr[1:])) or fr[-1] > 1:
        raise ValueError(f"fractions must increase strictly within (0, 1], got {fr}")
    return np.asarray(_z_boundaries_cached(fr, float(alpha), spending, bool(two_sided)))


@dataclass(frozen=True)
class Boundaries:
    """The design's boundaries at one comparison's level (for tables and decisions).

    Per look: ``n`` seeds, ``fraction`` n/n_max, ``spent`` the cumulative α spent by
    the difference test, ``z_diff``/``t_diff`` its boundary on the z and the paired-t
    scale and ``nominal_diff`` its nominal level there (two-sided total when the design
    is two-sided); ``z_one``/``t_one``/``nominal_one`` the one-sided boundary used by
    each side of TOST and by the futility rule. ``level`` is alpha / family size;
    ``lambda_diff``/``lambda_one`` the calibrated factors on the per-side nominal levels
    (see the module doc). ``spent`` is the z-scale spending the shape comes from.
    """

    level: float
    n: tuple[int, ...]
    fraction: tuple[float, ...]
    spent: tuple[float, ...]
    z_diff: tuple[float, ...]
    t_diff: tuple[float, ...]
    nominal_diff: tuple[float, ...]
    lambda_diff: float
    z_one: tuple[float, ...]
    t_one: tuple[float, ...]
    nominal_one: tuple[float, ...]
    lambda_one: float


def _null_t_tails(looks: tuple[int, ...]):
    """Chunks of simulated null paths: per path and look, P(T >= |t|) and whether t >= 0.

    Standard normal differences, seeded by ``CALIBRATION_SEED``; t is the paired t
    statistic of the first n_k differences (df n_k − 1).
    """
    rng = np.random.default_rng(CALIBRATION_SEED)
    n = np.asarray(looks)
    starts = np.concatenate([[0], n[:-1]])
    for _ in range(CALIBRATION_PATHS // CALIBRATION_CHUNK):
        x = rng.standard_normal((CALIBRATION_CHUNK, int(n[-1])))
        # sums up to each look from the sums of the blocks between looks
        s1 = np.cumsum(np.add.reduceat(x, starts, axis=1), axis=1)
        s2 = np.cumsum(np.add.reduceat(x * x, starts, axis=1), axis=1)
        mean = s1 / n
        t = mean / np.sqrt((s2 - n * mean**2) / ((n - 1) * n))
        yield special.stdtr(n - 1, -np.abs(t)), t >= 0


def _calibrated(ratios: list[np.ndarray], level: float) -> float:
    """The ``level``-quantile of the paths' smallest tail/p ratio, at most 1."""
    ordered = np.sort(np.concatenate(ratios))
    rank = max(1, round(level * ordered.size))
    return float(min(1.0, ordered[rank - 1]))


@functools.lru_cache(maxsize=128)
def _t_calibration(
    looks: tuple[int, ...], p_diff: tuple[float, ...], p_one: tuple[float, ...], level: float
) -> tuple[float, float]:
    """λ for the difference test (per-side levels ``p_diff``, two-sided) and the one-sided.

    Under the null the paired t statistics at the looks are pivotal (their joint law
    depends on the look sizes only, not on σ), so a seeded simulation gives it. A path
    crosses at look k when its t statistic's tail probability (of |t|, per side, for
    the two-sided test) is at most λ·p_k; it crosses somewhere iff min_k tail_k / p_k
    <= λ, so the λ whose error is ``level`` is that ratio's ``level``-quantile.
    ``p_diff`` empty: the difference test is one-sided and shares λ with ``p_one``.
    A single look needs no calibration: its t test is exact at λ = 1.
    """
    if len(looks) == 1:
        return 1.0, 1.0
    two, one = [], []
    with np.errstate(divide="ignore"):
        for tail_abs, positive in _null_t_tails(looks):
            if p_diff:
                two.append(np.min(tail_abs / np.asarray(p_diff), axis=1))
            # a negative t never crosses an upper boundary (its tail is >= 1/2)
            upper = np.where(positive, tail_abs, 1.0)
            one.append(np.min(upper / np.asarray(p_one), axis=1))
    lam_one = _calibrated(one, level)
    return (_calibrated(two, level) if p_diff else lam_one), lam_one


# Cached: a study's status and runner judge every comparison at every look, and each
# judgement asks for the same few designs' boundaries (both are immutable).
@functools.lru_cache(maxsize=512)
def boundaries(design: SequentialDesign, family_size: int | None = None) -> Boundaries:
    """The boundaries of ``design`` for a family of ``family_size`` (default: the design's)."""
    m = int(family_size or design.family_size or 1)
    level = design.alpha / m
    n = np.asarray(design.looks, dtype=float)
    fraction = n / n[-1]
    two = design.alternative == "two-sided"
    z_diff = z_boundaries(fraction, level, design.spending, two_sided=two)
    z_one = z_boundaries(fraction, level, design.spending, two_sided=False)
    # per side: the tail probability of each z boundary, then one common factor λ
    p_diff, p_one = st.norm.sf(z_diff), st.norm.sf(z_one)
    lam_diff, lam_one = _t_calibration(
        design.looks,
        tuple(float(v) for v in p_diff) if two else (),
        tuple(float(v) for v in p_one),
        level,
    )
    nom_diff, nom_one = lam_diff * p_diff, lam_one * p_one
    t_diff, t_one = st.t.isf(nom_diff, n - 1), st.t.isf(nom_one, n - 1)
    tails = 2.0 if two else 1.0
    return Boundaries(
        level=level,
        n=design.looks,
        fraction=tuple(float(f) for f in fraction),
        spent=tuple(
            float(a) for a in spent_alpha(fraction, level / tails, design.spending) * tails
        ),
        z_diff=tuple(float(z) for z in z_diff),
        t_diff=tuple(float(t) for t in t_diff),
        nominal_diff=tuple(float(tails * v) for v in nom_diff),
        lambda_diff=lam_diff,
        z_one=tuple(float(z) for z in z_one),
        t_one=tuple(float(t) for t in t_one),
        nominal_one=tuple(float(v) for v in nom_one),
        lambda_one=lam_one,
    )


@dataclass(frozen=True)
class SequentialDecision:
    """Where one comparison stands after a look (see ``sequential_decisions``).

    decision: one of ``DECISIONS``; ``stopped`` is False only for "continue".
    look: index into ``design.looks`` of the look that decided it (None while open).
    n: seeds behind the numbers below (the deciding look's, or the last look evaluated).
    next_n: seeds the next look needs (None once stopped).
    mean, t: mean difference and its paired t statistic (against 0) at that look.
    statistic, boundary, nominal: the statistic of the test that decided it, the t
    boundary it met and that boundary's nominal level (two-sided for a two-sided
    difference test, one-sided for TOST and futility); while open, those of the
    difference test at the last evaluated look.
    level: the comparison's level alpha / family size. reason: one sentence for a report.
    unit, other_unit_decision: set by the caller that knows the study
    (`study/sequential_seeds`): the inference unit, and the other unit's decision where
    it differs.
    tightest_margin: the smallest margin at which that look's TOST (its one-sided
    boundary t_one, the design's level there) would declare equivalence: |mean| +
    t_one · se, the larger absolute end of the interval mean ± t_one · se (NaN below 2
    finite differences or without spread).
    """

    name: str
    decision: str
    stopped: bool
    look: int | None
    n: int
    next_n: int | None
    mean: float
    t: float
    statistic: float
    boundary: float
    nominal: float
    level: float
    reason: str = field(default="")
    tightest_margin: float = math.nan
    # The inference unit it was judged in (`seeds` or `seeds_x_items`), and where the
    # other unit could be judged too and decided otherwise, that decision ("" if not).
    unit: str = "seeds"
    other_unit_decision: str = ""


def _look_statistics(
    d: np.ndarray, design: SequentialDesign, item_var: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Mean, se, the t against 0 and the one-sided t statistics the rules compare.

    ``d`` is (rows, n_k). ``eq_low``/``eq_high`` test mean <= −margin / mean >= +margin;
    ``fut_low``/``fut_high`` the same against the smallest effect of interest.
    ``item_var`` (rows,), when the unit is seeds × items: the test items' part of the
    mean's variance (`item_variance.item_variance_of_mean`), added to the seeds' s²/n.
    """
    n = d.shape[1]
    mean = d.mean(axis=1)
    var = d.var(axis=1, ddof=1) / n
    if item_var is not None:
        var = var + item_var
    se = np.sqrt(var)
    out = {"mean": mean, "se": se}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["t"] = mean / se
        for key, bound in (("eq", design.margin), ("fut", design.smallest_effect)):
            if bound is not None:
                out[f"{key}_low"] = (mean + bound) / se  # large: mean > −bound
                out[f"{key}_high"] = (mean - bound) / se  # very negative: mean < +bound
    return out


def _rules(stats: dict[str, np.ndarray], design: SequentialDesign, b: Boundaries, k: int):
    """Which rule fires for each row at look k, as (code array, test statistic array).

    Priority: a difference claim, then equivalence, then futility.
    """
    t, td, t1 = stats["t"], b.t_diff[k], b.t_one[k]
    rows = t.shape[0]
    code = np.full(rows, CONTINUE)
    used = np.full(rows, np.nan)
    alt = design.alternative
    with np.errstate(invalid="ignore"):
        low = (t <= -td) if alt != "greater" else np.zeros(rows, bool)
        high = (t >= td) if alt != "less" else np.zeros(rows, bool)
        better_low = design.lower_is_better
        for fired, is_low in ((low, True), (high, False)):
            code[fired] = SUPERIOR if is_low == better_low else INFERIOR
            used[fired] = t[fired]
        if design.margin is not None:
            eq = (stats["eq_low"] >= t1) & (stats["eq_high"] <= -t1) & (code == CONTINUE)
            code[eq] = EQUIVALENT
            used[eq] = np.minimum(stats["eq_low"][eq], -stats["eq_high"][eq])
        if design.smallest_effect is not None:
            excl_low = stats["fut_low"] >= t1  # mean > −effect shown
            excl_high = stats["fut_high"] <= -t1  # mean < +effect shown
            if alt == "two-sided":
                fut, val = excl_low & excl_high, np.minimum(stats["fut_low"], -stats["fut_high"])
            elif alt == "less":
                fut, val = excl_low, stats["fut_low"]
            else:
                fut, val = excl_high, -stats["fut_high"]
            fut &= code == CONTINUE
            code[fut] = FUTILE
            used[fut] = val[fut]
    return code, used


def decide_matrix(
    diffs: np.ndarray,
    design: SequentialDesign,
    family_size: int,
    look: int | None = None,
    item_var: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The vectorised core of ``sequential_decisions``: one row per comparison.

    ``diffs`` is (rows, columns) of differences in seed order, NaN-padded on the right
    (a row's usable data are its leading finite values); every row is judged at the
    level ``design.alpha / family_size``. Looks 0..``look`` (default: the last) are
    replayed in order. Returns arrays over rows: ``code`` (index into ``DECISIONS``),
    ``look`` (deciding look, −1 while open), ``n``, ``next_n`` (0 once stopped),
    ``mean``, ``t``, ``statistic``, ``boundary``, ``nominal``, ``tightest`` (the
    smallest margin the look's TOST would pass, ``SequentialDecision.tightest_margin``).

    ``item_var`` (rows, looks), for the unit seeds × items (one test set for every seed):
    the test items' part of each look's mean variance, added to the seeds' part; the
    boundaries stay the seeds' t boundaries, so the items' share, which more seeds do not
    shrink, makes every look stricter rather than looser.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=float))
    b = boundaries(design, family_size)
    last = len(design.looks) - 1 if look is None else int(look)
    if not 0 <= last < len(design.looks):
        raise ValueError(f"look must index design.looks (0..{len(design.looks) - 1}), got {look}")
    rows = d.shape[0]
    finite = np.isfinite(d)
    avail = np.where(finite.all(axis=1), d.shape[1], np.argmin(finite, axis=1))
    keys = ("mean", "t", "statistic", "boundary", "nominal", "tightest")
    out = {k: np.full(rows, np.nan) for k in keys}
    out.update(code=np.full(rows, CONTINUE), look=np.full(rows, -1), n=np.zeros(rows, int))
    out["next_n"] = np.full(rows, design.looks[0])
    for k in range(last + 1):
        nk = design.looks[k]
        active = (out["code"] == CONTINUE) & (avail >= nk)
        if not active.any():
            continue
        extra = None if item_var is None else np.asarray(item_var, dtype=float)[active, k]
        _judge_look(out, d[active, :nk], active, design, b, k, extra)
    return out


def _judge_look(
    out, d, active, design: SequentialDesign, b: Boundaries, k: int, item_var=None
) -> None:
    """Apply look k's rules to the active rows of ``out`` (in place)."""
    idx = np.flatnonzero(active)
    stats = _look_statistics(d, design, item_var)
    code, used = _rules(stats, design, b, k)
    final = k == len(design.looks) - 1
    if final:
        code[code == CONTINUE] = INCONCLUSIVE
    one_sided_rule = (code == EQUIVALENT) | (code == FUTILE)
    out["code"][idx] = code
    out["n"][idx] = design.looks[k]
    out["mean"][idx], out["t"][idx] = stats["mean"], stats["t"]
    out["tightest"][idx] = np.abs(stats["mean"]) + b.t_one[k] * stats["se"]
    out["statistic"][idx] = np.where(np.isnan(used), stats["t"], used)
    out["boundary"][idx] = np.where(one_sided_rule, b.t_one[k], b.t_diff[k])
    out["nominal"][idx] = np.where(one_sided_rule, b.nominal_one[k], b.nominal_diff[k])
    stopped = code != CONTINUE
    out["look"][idx[stopped]] = k
    out["next_n"][idx] = np.where(stopped, 0, 0 if final else design.looks[k + 1])


def sequential_decisions(
    diffs: Mapping[str, Sequence[float]],
    look: int,
    design: SequentialDesign,
    item_tables: Mapping[str, Any] | None = None,
) -> dict[str, SequentialDecision]:
    """Where every comparison of one Holm family stands after look ``look``.

    ``diffs`` maps a comparison's name to its paired differences strategy − baseline in
    seed order (all seen so far; only the first ``design.looks[look]`` count). ``look``
    indexes ``design.looks`` (0 is the first block). The family size is
    ``design.family_size`` or, when None, ``len(diffs)``. The history is replayed from
    look 0, so a comparison that stopped earlier reports that look (and ignores seeds
    it was given afterwards); one whose data do not yet reach a look waits there
    (``decision == "continue"``, ``next_n`` that look's seed count).

    ``item_tables``, for the inference unit seeds × items: a comparison's per-seed,
    per-item differences (seeds in the order of ``diffs``, one shared test set), whose
    items' share of each look's variance joins the seeds' (`item_variance`); a
    comparison without a table is judged on seeds alone.

    A runner gives ``next_n`` seeds to every comparison with ``stopped`` False; a report
    prints ``reason``. ``dataclasses.asdict`` turns a decision into plain values.
    """
    names = list(diffs)
    if not names:
        return {}
    m = int(design.family_size or len(names))
    arrays = [np.asarray(diffs[name], dtype=float).ravel() for name in names]
    width = max(design.looks[min(int(look), len(design.looks) - 1)], *(a.size for a in arrays))
    matrix = np.full((len(names), width), np.nan)
    for row, a in zip(matrix, arrays):
        row[: min(a.size, width)] = a[:width]
    item_var = None
    if item_tables:
        item_var = np.zeros((len(names), len(design.looks)))
        for row, name in zip(item_var, names):
            if name in item_tables:
                row[:] = item_share_by_look(item_tables[name], design.looks)
    res = decide_matrix(matrix, design, m, look, item_var)
    level = design.alpha / m
    return {
        name: _decision(name, {key: res[key][i] for key in res}, design, level)
        for i, name in enumerate(names)
    }


def _decision(name: str, r: dict[str, Any], design: SequentialDesign, level: float):
    code, look = int(r["code"]), int(r["look"])
    decision = SequentialDecision(
        name=name,
        decision=DECISIONS[code],
        stopped=code != CONTINUE,
        look=look if look >= 0 else None,
        n=int(r["n"]),
        next_n=int(r["next_n"]) or None,
        mean=float(r["mean"]),
        t=float(r["t"]),
        statistic=float(r["statistic"]),
        boundary=float(r["boundary"]),
        nominal=float(r["nominal"]),
        level=level,
        tightest_margin=_finite_or_nan(float(r["tightest"])),
    )
    return _with_reason(decision, design)


def _finite_or_nan(value: float) -> float:
    """A margin from a look without spread (se 0 or NaN) is no margin: NaN."""
    return value if math.isfinite(value) and value > 0 else math.nan


def _with_reason(dec: SequentialDecision, design: SequentialDesign) -> SequentialDecision:
    """The decision with its one-sentence reason (what a report prints)."""
    return SequentialDecision(**{**dec.__dict__, "reason": _reason(dec, design)})


def _reason(dec: SequentialDecision, design: SequentialDesign) -> str:
    """Why a comparison stopped, or what it waits for, in one sentence."""
    spend = f"{design.spending} spending of α = {design.alpha:g}"
    spend += f"/{round(design.alpha / dec.level)}" if dec.level < design.alpha else ""
    where = f"at look {(dec.look or 0) + 1} of {len(design.looks)} (n = {dec.n})"
    sign = {"two-sided": "±", "less": "−", "greater": ""}[design.alternative]
    rule = f"{dec.statistic:.3g} vs boundary {dec.boundary:.3g}, nominal level {dec.nominal:.3g}"
    if dec.decision in ("superior", "inferior"):
        return (
            f"{dec.decision} {where}: mean difference {dec.mean:+.4g}, t = {dec.statistic:.3g} "
            f"beyond {sign}{dec.boundary:.3g}, nominal level {dec.nominal:.3g}; {spend}"
        )
    if dec.decision == "equivalent":
        return (
            f"equivalent {where}: TOST at ±{design.margin:g} passed (smaller one-sided "
            f"t = {rule}); {spend}; equivalent within ±{dec.tightest_margin:.4f}, the tightest "
            "margin the data support at this look's boundary"
        )
    if dec.decision == "futile":
        return (
            f"futile {where}: the data exclude the smallest effect of interest "
            f"{design.smallest_effect:g} (one-sided t = {rule}); a non-binding stop, "
            "not a claim of no difference"
        )
    if dec.decision == "inconclusive":
        return (
            f"inconclusive {where}: the last look, no boundary crossed "
            f"(t = {dec.t:.3g}, boundary {sign}{dec.boundary:.3g}); {spend}"
        )
    if dec.n:
        return (
            f"open after n = {dec.n}: t = {dec.t:.3g} within the boundary "
            f"{sign}{dec.boundary:.3g}; the next look needs {dec.next_n} seeds"
        )
    return f"waiting: the first look needs {dec.next_n} seeds"
