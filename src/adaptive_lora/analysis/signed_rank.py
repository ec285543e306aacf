"""The Wilcoxon signed-rank test of paired differences, exact wherever possible.

Wilcoxon 1945, "Individual comparisons by ranking methods", Biometrics Bulletin 1:80-83.
Owns the test itself (``signed_rank_test``), its exact conditional distribution with
mid-ranks for ties, and the smallest p-value n pairs can give (``wilcoxon_floor_p``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

from adaptive_lora.analysis.values import NAN

__all__ = [
    "EXACT_DP_MAX_N", "one_sided_signed_rank_test", "signed_rank_test", "wilcoxon_floor_p",
]  # fmt: skip

EXACT_DP_MAX_N = 1000  # above this many nonzero differences use the normal approximation


def wilcoxon_floor_p(n: int) -> float:
    """Smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs.

    The most extreme outcome (all n differences of one sign) has probability 2**-n under
    the null, so the two-sided floor is ``2 / 2**n`` (capped at 1): 0.0625 for n = 5,
    0.03125 for n = 6. A two-sided test at alpha = 0.05 needs n >= 6.
    """
    if n <= 1:
        return 1.0
    return min(1.0, 2.0 / 2.0**n)


def _null_distribution(d: np.ndarray) -> tuple[np.ndarray, int]:
    """(P(2·R+ = k) for k = 0 … 2·Σranks, the observed 2·R+) of nonzero differences `d`.

    Under the null each difference is + or − with probability 1/2 independently; R+ is
    a sum of a random subset of the ranks, built by dynamic programming on the doubled
    (integer) mid-ranks.
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
    return dist, r_obs


def _signed_rank_exact_p(d: np.ndarray) -> float:
    """Exact two-sided p of the signed-rank statistic, conditional on the observed |d|.

    Zeros must already be removed. Mid-ranks handle ties; under the null each difference
    is + or - with probability 1/2 independently, and the distribution of R+ (a sum of a
    random subset of the ranks) is built by dynamic programming on the doubled ranks,
    which are integers. p = 2 * min(P(R+ <= r), P(R+ >= r)), capped at 1 (the
    two-sided convention of ``scipy.stats.wilcoxon``).
    """
    dist, r_obs = _null_distribution(d)
    cdf = float(dist[: r_obs + 1].sum())
    sf = float(dist[r_obs:].sum())
    return min(1.0, 2.0 * min(cdf, sf))


def signed_rank_test(diffs: np.ndarray) -> tuple[float, float, str, int]:
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
    if m <= EXACT_DP_MAX_N:
        why = []
        if n_zero:
            why.append(f"{n_zero} zero difference{'s' if n_zero > 1 else ''} dropped")
        if has_ties:
            why.append("mid-ranks for ties")
        label = "exact conditional" + (f" ({', '.join(why)})" if why else "")
        return stat, _signed_rank_exact_p(nz), label, m
    res = _st.wilcoxon(nz, method="asymptotic", correction=False, alternative="two-sided")
    return float(res.statistic), float(res.pvalue), "normal approximation (tie-corrected)", m


def _signed_rank_tail(nonzero: np.ndarray, alternative: str) -> float:
    """Exact one-sided p of the signed-rank statistic R+, conditional on the observed |d|.

    The same null as ``_signed_rank_exact_p`` (each nonzero difference + or −
    with probability 1/2, mid-ranks for ties; its distribution by dynamic programming on
    the doubled ranks), read in one tail: "less" is P(R+ <= r), "greater" P(R+ >= r),
    scipy's one-sided convention.
    """
    dist, r_obs = _null_distribution(nonzero)
    tail = dist[: r_obs + 1] if alternative == "less" else dist[r_obs:]
    return float(min(1.0, tail.sum()))


def one_sided_signed_rank_test(
    diffs: np.ndarray, alternative: str
) -> tuple[float, float, str, int]:
    """One-sided Wilcoxon signed-rank test: ``(R+, p, method, n_used)``.

    Zeros dropped (Wilcoxon's convention). Without ties or zeros (up to 50 pairs):
    ``scipy.stats.wilcoxon(method="exact", alternative=...)``; otherwise the exact
    conditional distribution with mid-ranks (what scipy's ``PermutationMethod``
    enumerates for small n); beyond ``EXACT_DP_MAX_N`` nonzero differences, scipy's
    normal approximation. Two-sided tests stay in ``signed_rank.signed_rank_test``.
    """
    nonzero = diffs[diffs != 0]
    m = int(nonzero.size)
    if m == 0:
        return NAN, NAN, "none (all differences are zero)", 0
    ranks = _st.rankdata(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    has_ties = bool(np.unique(np.abs(nonzero)).size < m)
    n_zero = int(diffs.size - m)
    if not has_ties and n_zero == 0 and m <= 50:
        res = _st.wilcoxon(nonzero, method="exact", alternative=alternative)
        return float(res.statistic), float(res.pvalue), "exact", m
    if m <= EXACT_DP_MAX_N:
        why = [f"{n_zero} zero difference{'s' if n_zero > 1 else ''} dropped"] if n_zero else []
        why += ["mid-ranks for ties"] if has_ties else []
        label = "exact conditional" + (f" ({', '.join(why)})" if why else "")
        return r_plus, _signed_rank_tail(nonzero, alternative), label, m
    res = _st.wilcoxon(nonzero, method="asymptotic", correction=False, alternative=alternative)
    return float(res.statistic), float(res.pvalue), "normal approximation (tie-corrected)", m
