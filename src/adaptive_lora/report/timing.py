"""What a study cost: the summed time of its runs and the wall time it ran, from the store.

A long study runs over several sessions; its wall time is not last end − first start
(which counts the hours between sessions) but the union of its finished runs' intervals:
the time at least one of them was running. A stretch is one piece of that union: runs
that overlap or touch join one stretch, and any gap between two runs starts a new one,
so the count is what the intervals give (8 for the reference study, where a tolerance
of two minutes once made 6). Runs an interrupted session lost are not in the store, so
their time is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adaptive_lora.study.plan import format_duration
from adaptive_lora.study.store import DONE, FAILED, RunRow


def _interval(row: RunRow) -> tuple[float, float] | None:
    if not (row.started_at and row.ended_at):
        return None
    start = datetime.fromisoformat(row.started_at).timestamp()
    end = datetime.fromisoformat(row.ended_at).timestamp()
    return (start, end) if end >= start else None


def compute_time(rows: Sequence[RunRow]) -> dict[str, Any]:
    """{"runs", "run_seconds", "wall_seconds", "stretches", "first_start", "last_end"}."""
    finished = [r for r in rows if r.status in (DONE, FAILED)]
    intervals = sorted(i for r in finished if (i := _interval(r)) is not None)
    merged: list[list[float]] = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:  # overlaps or touches the stretch so far
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    starts = [r.started_at for r in finished if r.started_at]
    ends = [r.ended_at for r in finished if r.ended_at]
    return {
        "runs": len(finished),
        "run_seconds": float(sum(r.seconds or 0.0 for r in finished)),
        "wall_seconds": float(sum(end - start for start, end in merged)),
        "stretches": len(merged),
        "first_start": min(starts) if starts else None,
        "last_end": max(ends) if ends else None,
    }


def compute_line(timing: dict[str, Any]) -> str:
    """One sentence for the report's status section."""
    if not timing["runs"]:
        return "No run has finished yet."
    stretches = timing["stretches"]
    return (
        f"Compute: {timing['runs']} finished run(s) took {format_duration(timing['run_seconds'])}"
        f" of run time in {format_duration(timing['wall_seconds'])} of wall time (the time at "
        f"least one run was going, in {stretches} stretch{'es' if stretches != 1 else ''}, "
        f"{timing['first_start'][:16].replace('T', ' ')} to "
        f"{timing['last_end'][:16].replace('T', ' ')} UTC)."
    )
