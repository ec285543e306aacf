"""The result of a paired comparison, as ``stats.json`` lists it.

``PairedComparison`` is what ``paired.compare_paired`` returns; ``FamilyComparison`` adds
what ``paired.compare_family`` knows once the whole Holm family is tested. Fields are read
by attribute (a misspelt name is an ``AttributeError``), and their order is the key order
of ``stats.json`` (``jsonable.to_jsonable`` writes them in it): a new statistic is a new
field, placed where its key should appear, with its default for too few seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptive_lora.analysis.jsonable import OMIT
from adaptive_lora.analysis.power import POWER
from adaptive_lora.analysis.values import NAN

__all__ = ["FamilyComparison", "PairedComparison"]


def _nans() -> list[float]:
    return [NAN, NAN]


@dataclass(kw_only=True)
class PairedComparison:
    """One strategy against the baseline, paired by seed (see ``compare_paired``).

    The field order is the key order of ``stats.json``. Intervals are ``[low, high]``
    for the difference ``strategy - baseline``; NaN where n is too small.
    """

    n: int
    n_pairs: int
    seeds: list[Any]
    seeds_only_in_strategy: list[Any]
    seeds_only_in_baseline: list[Any]
    seeds_non_finite: list[Any]
    lower_is_better: bool
    alpha: float
    confidence: float
    n_boot: int
    boot_seed: int | None
    strategy_summary: dict[str, float]  # ``describe`` of the paired strategy values
    baseline_summary: dict[str, float]
    diffs: list[float]
    mean_diff: float = NAN
    median_diff: float = NAN
    iqm_diff: float = NAN
    sd_diff: float = NAN
    ci_t: list[float] = field(default_factory=_nans)
    ci_boot_percentile: list[float] = field(default_factory=_nans)
    ci_boot_bca: list[float] = field(default_factory=_nans)
    iqm_ci_boot_percentile: list[float] = field(default_factory=_nans)
    iqm_ci_boot_bca: list[float] = field(default_factory=_nans)
    t: float = NAN
    df: float = NAN
    p_t: float = NAN
    wilcoxon_stat: float = NAN
    p_wilcoxon: float = NAN
    wilcoxon_method: str = "none"
    wilcoxon_n: int = 0
    d_z: float = NAN
    mde_d_z: float = NAN  # smallest |d_z| detectable at 80 % power with n pairs
    mde_metric: float = NAN  # mde_d_z * sd_diff
    mde_power: float = POWER
    prob_better: float = NAN  # the share of seeds the strategy wins, ties counting half
    alternative: str = "two-sided"
    warnings: list[str] = field(default_factory=list)
    family_size: int = 1
    wilcoxon_floor_p: float = NAN  # the smallest exact Wilcoxon p with n pairs
    wilcoxon_holm_floor_p: float = NAN  # floor × family size: the smallest Holm p
    can_reach_significance: bool = False


@dataclass(kw_only=True)
class FamilyComparison(PairedComparison):
    """A comparison within its Holm family (``compare_family``): the paired fields, then
    the family's. ``two_level`` is the seeds × items interval a report adds to the primary
    metric's comparisons (``report/two_level.py``; None where runs lack item records);
    the other metrics' comparisons have no such key (``OMIT``)."""

    strategy: str
    baseline: str
    metric: str
    primary_test: str  # "t" or "wilcoxon": the test whose Holm p decides
    p_t_holm: float
    p_wilcoxon_holm: float
    significant: bool
    verdict: str = ""  # ``verdict.verdict``'s sentence(s), set once the fields above are
    two_level: dict[str, Any] | None = OMIT
    # Why ``two_level`` is None (fewer than two paired seeds, runs without item records ...).
    seed_only_reason: str | None = OMIT
