"""Per-item test losses of two arms as (seeds, items) arrays: what the two-level interval
(`report/two_level`) and the seeds × items unit of a sequential decision
(`sequential_seeds`) read.

A run stores its per-item records (`records.ITEMS_KEY`: each test item's mean token loss
and token count, item j the same example in every run of a group that shares a test
set). The report's test loss is token-weighted, so each item's loss enters weighted by
its share of the tokens, w_i = tokens_i / mean(tokens): the mean over items of w_i·x_si
is then exactly the seed's test loss, and a table's row means are the seeds' numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptive_lora.records import ITEMS_KEY
from adaptive_lora.study.store import RunRow


def run_items(row: RunRow) -> dict[str, Any] | None:
    """The run's per-item records, when they hold matching `key`, `loss` and `tokens`."""
    items = row.metrics.get(ITEMS_KEY)
    if not isinstance(items, dict):
        return None
    keys, loss, tokens = items.get("key"), items.get("loss"), items.get("tokens")
    if not (isinstance(keys, list) and isinstance(loss, list) and isinstance(tokens, list)):
        return None
    if not keys or not len(keys) == len(loss) == len(tokens):
        return None
    return items


# Why a comparison has no two-level interval (`seed_only_reason`), as stats.json says it.
ONE_SEED = "fewer than two paired seeds"
NO_RECORDS = "runs without per-item records"
OTHER_ITEMS = "per-item records of different test items"
NON_FINITE = "non-finite per-item losses"


def item_arrays(
    base_runs: Sequence[RunRow], strategy_runs: Sequence[RunRow]
) -> tuple[np.ndarray, np.ndarray] | str:
    """Token-weighted (seeds, items) loss arrays of both arms, or why there are none: a
    run lacks records, or the runs do not share their items in one order with one token
    count, or a loss is not finite."""
    b_items = [run_items(r) for r in base_runs]
    s_items = [run_items(r) for r in strategy_runs]
    every = b_items + s_items
    if any(i is None for i in every):
        return NO_RECORDS
    keys, tokens = every[0]["key"], every[0]["tokens"]
    if any(i["key"] != keys or i["tokens"] != tokens for i in every):
        return OTHER_ITEMS  # item j must be the same example in every run
    weights = np.asarray(tokens, dtype=float)
    if not (np.all(np.isfinite(weights)) and weights.sum() > 0):
        return NON_FINITE
    weights = weights / weights.mean()
    b = np.asarray([i["loss"] for i in b_items], dtype=float) * weights
    s = np.asarray([i["loss"] for i in s_items], dtype=float) * weights
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        return NON_FINITE
    return b, s
