"""The same runs in two studies: how far apart the machines alone put their numbers.

A run's id is a hash of its whole configuration (model, data, allocation, training
settings, seed, rate), so two studies that ran a run of the same id trained the same
thing. When the two stores hold it done on different machines — the same cells run again
on another CPU family, say — the differences of their numbers measure what the machine
alone changes (bf16 kernels' last bits, compounded over training): the scale below which
the two studies' numbers cannot be told apart. `report --against` prints it beside the
ladders; nothing here pools the runs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from adaptive_lora.analysis.formatting import fmt_num
from adaptive_lora.evaluation_metrics import PRIMARY_METRIC
from adaptive_lora.report.cells import markdown_table
from adaptive_lora.study.store import DONE, RunRow

# What is compared, in this order: the untrained model's loss (a forward pass only), the
# last training loss, then the selected and reported numbers.
# (`task_score` is the one task metric every generated task records; the losses are
# every run's.)
METRICS = (
    f"{PRIMARY_METRIC}_before", "final_train_loss", "val_loss", PRIMARY_METRIC, "task_score"
)  # fmt: skip


def _number(row: RunRow, key: str) -> float | None:
    value = row.metrics.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _spread(diffs: list[float]) -> dict[str, Any]:
    values = np.array(diffs)
    return {
        "n": len(diffs),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(diffs) > 1 else math.nan,
        "max_abs": float(np.abs(values).max()),
        "equal": int((values == 0).sum()),
    }


def _differences(pairs: list[tuple[RunRow, RunRow]], key: str) -> list[float]:
    return [
        a - b
        for a, b in ((_number(x, key), _number(y, key)) for x, y in pairs)
        if a is not None and b is not None
    ]


def run_families(rows: Sequence[RunRow]) -> list[str]:
    """The CPU matrix families (or GPU) the done runs ran on (`unknown`: not recorded)."""
    return sorted(
        {str(r.manifest.get("matrix_family") or "unknown") for r in rows if r.status == DONE}
    )


def same_runs(
    here: Sequence[RunRow],
    there: Sequence[RunRow],
    *,
    groups: Mapping[str, Collection[str]] | None = None,
    listed_there: Collection[str] | None = None,
) -> dict[str, Any] | None:
    """Per metric, here − there over the runs done in both stores (None: no run in both).

    `groups` (a title → this study's run ids in it) adds the test loss's spread per group:
    how far the machine moves a number can differ from one cell to another. `listed_there`
    (the run ids the other study file expands to) counts the runs in both that the other
    file no longer lists — run there before its design was narrowed."""
    theirs = {row.id: row for row in there if row.status == DONE}
    pairs = [(row, theirs[row.id]) for row in here if row.status == DONE and row.id in theirs]
    if not pairs:
        return None
    metrics = {}
    for key in METRICS:
        diffs = _differences(pairs, key)
        if diffs:
            metrics[key] = _spread(diffs)
    by_group = {}
    for title, ids in (groups or {}).items():
        wanted = set(ids)
        diffs = _differences([p for p in pairs if p[0].id in wanted], PRIMARY_METRIC)
        if diffs:
            by_group[title] = _spread(diffs)

    listed = None if listed_there is None else set(listed_there)
    return {
        "n": len(pairs),
        "ids": [x.id for x, _ in pairs],
        "families": [run_families([x for x, _ in pairs]), run_families([y for _, y in pairs])],
        "metrics": metrics,
        "test_loss_by_group": by_group,
        "not_listed_there": 0 if listed is None else sum(x.id not in listed for x, _ in pairs),
    }


SPREAD_COLUMNS = ["runs", "mean Δ", "sd of Δ", "largest abs Δ", "equal"]


def _spread_row(label: str, m: dict[str, Any]) -> list[str]:
    return [label, str(m["n"]), fmt_num(m["mean"], 4, plus=True), fmt_num(m["sd"], 4),
            fmt_num(m["max_abs"], 4), str(m["equal"])]  # fmt: skip


def same_runs_lines(same: dict[str, Any] | None, name: str) -> list[str]:
    """The report's paragraph and table on the runs both studies hold (none: nothing)."""
    if same is None:
        return []
    here, there = (", ".join(f) for f in same["families"])
    lines = [
        f"**The same runs in both studies.** {same['n']} run(s) have the same configuration "
        f"(the same run id) in this study and in `{name}`: trained here with {here}, there "
        f"with {there}. Their differences (here − there) are what the machine alone changes; "
        "a difference between the two studies' numbers smaller than that spread is not one "
        "the machines can tell apart."
        + (
            f" {same['not_listed_there']} of them are no longer in `{name}`'s study file "
            "(run there before its design was narrowed; kept in its store)."
            if same.get("not_listed_there")
            else ""
        ),
        "",
        *markdown_table(
            ["number", *SPREAD_COLUMNS], [_spread_row(k, m) for k, m in same["metrics"].items()]
        ),
    ]
    by_group = same.get("test_loss_by_group") or {}
    if len(by_group) > 1:
        rows = [_spread_row(title, m) for title, m in by_group.items()]
        lines += ["", "Test loss by group:", "", *markdown_table(["group", *SPREAD_COLUMNS], rows)]
    return [*lines, ""]


def same_runs_summary(same: dict[str, Any] | None) -> str:
    """A clause for the printed summary ('' when no run is in both)."""
    if same is None or PRIMARY_METRIC not in same["metrics"]:
        return ""
    m = same["metrics"][PRIMARY_METRIC]
    return (
        f"; {m['n']} run(s) in both: test loss Δ sd {fmt_num(m['sd'], 4)}, "
        f"largest {fmt_num(m['max_abs'], 4)}, {m['equal']} equal"
    )
