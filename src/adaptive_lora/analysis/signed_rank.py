"""The Wilcoxon signed-rank test of paired differences, exact wherever possible.

Wilcoxon 1945, "Individual comparisons by ranking methods", Biometrics Bulletin 1:80-83.
Owns the test itself (``signed_rank_test``), its exact conditional distribution with
mid-ranks for ties, and the smallest p-value n pairs can give (``wilcoxon_floor_p``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

from adaptive_lora.analysis.values import NAN

__all__ = ["EXACT_DP_MAX_N", "signed_rank_test", "wilcoxon_floor_p"]

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
