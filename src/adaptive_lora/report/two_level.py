"""Two-level intervals for the headline comparisons: seeds × test items, beside the t interval.

The t interval of a comparison generalises over seeds on *this* test set. When every run
of a comparison stored its per-item records (`records.ITEMS_KEY`: each test item's mean
token loss and token count, item j the same example in every run of a group), the
two-level bootstrap of `analysis.hierarchical` resamples seeds and items together and
says how far the difference would move on other test items too.

The report's test loss is token-weighted (the mean of the items' losses weighted by their
response tokens), so each item's loss difference enters weighted by its share of the
tokens, w_i = tokens_i / mean(tokens): the mean of w_i·d_si over items is then exactly the
seed's test-loss difference, and the interval is centred on the headline Δ. (The weights
resample with their items, without renormalising: the linearised form of the ratio mean,
which is what `hierarchical_bootstrap`'s (seeds, items) arrays can carry.)

The verdict keeps the t interval over seeds: it is the interval the Holm-corrected paired
t-test matches, the seeds are the design's unit of replication, and a percentile
bootstrap over few seeds is too narrow in the seed term (see `analysis.hierarchical`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptive_lora.analysis.comparison import FamilyComparison
from adaptive_lora.analysis.hierarchical import hierarchical_bootstrap
from adaptive_lora.study.item_tables import NO_RECORDS, ONE_SEED, item_arrays
from adaptive_lora.study.store import RunRow

WHY_T = (
    "the verdict uses the t interval over seeds: it matches the Holm-corrected paired "
    "t-test, and seeds are what the design replicates; the two-level interval adds the "
    "uncertainty from the choice of test items"
)


def two_level_interval(
    comparison: FamilyComparison,
    base_runs: Sequence[RunRow],
    strategy_runs: Sequence[RunRow],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any] | str:
    """The two-level interval of one comparison over its paired seeds, or why it has none
    (`item_tables`: `ONE_SEED`, `NO_RECORDS`, `OTHER_ITEMS`, `NON_FINITE`)."""
    seeds = comparison.seeds
    if len(seeds) < 2:
        return ONE_SEED
    by_seed_base = {r.seed: r for r in base_runs}
    by_seed_mine = {r.seed: r for r in strategy_runs}
    if not all(s in by_seed_base and s in by_seed_mine for s in seeds):
        return NO_RECORDS  # a paired seed whose run is not among these (never expected)
    arrays = item_arrays([by_seed_base[s] for s in seeds], [by_seed_mine[s] for s in seeds])
    if isinstance(arrays, str):
        return arrays
    result = hierarchical_bootstrap(*arrays, n_boot=n_boot, seed=seed, alpha=comparison.alpha)
    result["weights"] = "response tokens per item"
    return result


def add_two_level(
    comparisons: dict[str, FamilyComparison],
    runs: dict[str, list[RunRow]],
    baseline: str,
    *,
    n_boot: int,
    seed: int,
) -> bool:
    """Add `two_level` (an interval, or None) to every comparison, and where it is None
    `seed_only_reason` (why); True if any has an interval."""
    found = False
    for label, comparison in comparisons.items():
        interval = two_level_interval(
            comparison, runs.get(baseline, []), runs.get(label, []), n_boot=n_boot, seed=seed
        )
        if isinstance(interval, str):
            comparison.two_level, comparison.seed_only_reason = None, interval
        else:
            comparison.two_level = interval
            found = True
    return found
