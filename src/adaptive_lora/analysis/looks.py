"""Whether each look of a group-sequential design can decide anything.

A Lan–DeMets O'Brien–Fleming design spends almost nothing at an early look, and at a
small family level (α/7) and few seeds that "almost nothing" becomes a boundary no
data reach: the regime map's first look (5 seeds, α = 0.05/7, looks at 5, 10, 15, 20)
asks for a paired t of 152 before claiming a difference and 80 on each side of TOST —
a mean difference of about 70 seed sds. Such a look costs its seeds and decides
nothing; this module says so before the seeds are spent.

A look's boundaries become mean differences through the standard error sd/√n:

* a difference is claimed when |mean| ≥ t_diff · se, so the smallest |Δ| that crosses
  is ``t_diff · sd/√n``;
* TOST passes at a margin δ only when |mean| + t_one · se ≤ δ, so even a true mean of 0
  needs δ ≥ ``t_one · sd/√n`` (the tightest margin the look could ever pass); the
  two-sided futility rule needs the same of the smallest effect.

A look **can decide** when a plausible effect — up to ``REACH`` × the smallest effect of
interest (or the margin when no effect is declared) — crosses its difference boundary,
or when its TOST (futility) could pass at the declared margin (smallest effect). Without
a pilot sd the same question is asked relative to the last look, where sd cancels: the
last look is what the design was sized for, so a look whose crossing difference is more
than ``REACH`` × the last look's is judged unable to decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adaptive_lora.analysis.sequential import Boundaries

REACH = 3.0  # effects beyond 3× the smallest one of interest are not planned for


@dataclass(frozen=True)
class LookReach:
    """One look of one comparison: its boundaries and what mean difference meets them.

    ``t_diff``/``t_one``: the paired-t boundaries of the difference test and of each
    one-sided test (TOST, futility). ``crossing``: the smallest |mean difference| that
    crosses ``t_diff`` given the sd; ``tightest_margin``: the smallest margin TOST could
    pass at this look (at a mean of 0); both NaN without an sd. ``can_decide``: see the
    module doc.
    """

    look: int  # 1-based
    n: int
    t_diff: float
    t_one: float
    crossing: float
    tightest_margin: float
    can_decide: bool


def look_reach(
    b: Boundaries, sd: float, smallest_effect: float | None, margin: float | None
) -> list[LookReach]:
    """Each look of the boundaries `b` (one comparison's), judged as the module doc says."""
    known = math.isfinite(sd) and sd > 0
    out = []
    for k, n in enumerate(b.n):
        se = sd / math.sqrt(n) if known else math.nan
        crossing, tightest = b.t_diff[k] * se, b.t_one[k] * se
        if known:
            can = _reachable(crossing, tightest, smallest_effect, margin)
        else:
            can = _relative(b, k)
        out.append(LookReach(k + 1, int(n), b.t_diff[k], b.t_one[k], crossing, tightest, can))
    return out


def _reachable(
    crossing: float, tightest: float, smallest_effect: float | None, margin: float | None
) -> bool:
    plausible = REACH * (smallest_effect if smallest_effect is not None else margin or math.nan)
    if crossing <= plausible:
        return True
    if margin is not None and tightest < margin:
        return True
    return smallest_effect is not None and tightest < smallest_effect


def _relative(b: Boundaries, k: int) -> bool:
    """Without an sd: the look's crossing difference in units of the last look's."""
    last = len(b.n) - 1

    def ratio(t: tuple[float, ...]) -> float:
        return (t[k] / math.sqrt(b.n[k])) / (t[last] / math.sqrt(b.n[last]))

    return min(ratio(b.t_diff), ratio(b.t_one)) <= REACH


def first_useful(reach: list[LookReach]) -> LookReach | None:
    """The first look that can decide (None when none can)."""
    return next((r for r in reach if r.can_decide), None)
