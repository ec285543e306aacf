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
from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptive_lora.analysis.formatting import fmt_num
from adaptive_lora.study.store import DONE, RunRow

# What is compared, in this order: the untrained model's loss (a forward pass only), the
# last training loss, then the selected and reported numbers.
METRICS = ("test_loss_before", "final_train_loss", "val_loss", "test_loss", "task_score")


def _number(row: RunRow, key: str) -> float | None:
    value = row.metrics.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def same_runs(here: Sequence[RunRow], there: Sequence[RunRow]) -> dict[str, Any] | None:
    """Per metric, here − there over the runs done in both stores (None: no run in both)."""
    theirs = {row.id: row for row in there if row.status == DONE}
    pairs = [(row, theirs[row.id]) for row in here if row.status == DONE and row.id in theirs]
    if not pairs:
        return None
    metrics = {}
    for key in METRICS:
        diffs = [
            a - b
            for a, b in ((_number(x, key), _number(y, key)) for x, y in pairs)
            if a is not None and b is not None
        ]
        if diffs:
            values = np.array(diffs)
            metrics[key] = {
                "n": len(diffs),
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(diffs) > 1 else math.nan,
                "max_abs": float(np.abs(values).max()),
                "equal": int((values == 0).sum()),
            }

    def families(rows: list[RunRow]) -> list[str]:
        return sorted({str(r.manifest.get("matrix_family") or "unknown") for r in rows})

    return {
        "n": len(pairs),
        "ids": [x.id for x, _ in pairs],
        "families": [families([x for x, _ in pairs]), families([y for _, y in pairs])],
        "metrics": metrics,
    }


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
        "the machines can tell apart.",
        "",
        "| number | runs | mean Δ | sd of Δ | largest abs Δ | equal |",
        "|---|---|---|---|---|---|",
    ]
    for key, m in same["metrics"].items():
        lines.append(
            f"| {key} | {m['n']} | {fmt_num(m['mean'], 4, plus=True)} | {fmt_num(m['sd'], 4)} | "
            f"{fmt_num(m['max_abs'], 4)} | {m['equal']} |"
        )
    return [*lines, ""]


def same_runs_summary(same: dict[str, Any] | None) -> str:
    """A clause for the printed summary ('' when no run is in both)."""
    if same is None or "test_loss" not in same["metrics"]:
        return ""
    m = same["metrics"]["test_loss"]
    return (
        f"; {m['n']} run(s) in both: test loss Δ sd {fmt_num(m['sd'], 4)}, "
        f"largest {fmt_num(m['max_abs'], 4)}, {m['equal']} equal"
    )
