"""What a study cost: the summed time of its runs, by phase, and the wall time it ran.

A long study runs over several sessions; its wall time is not last end − first start
(which counts the hours between sessions) but the union of its finished runs' intervals:
the time at least one of them was running. A stretch is one piece of that union: runs
that overlap or touch join one stretch, and any gap between two runs starts a new one,
so the count is what the intervals give (8 for the reference study, where a tolerance
of two minutes once made 6). Runs an interrupted session lost are not in the store, so
their time is not counted.

A run records the seconds of three phases (`PHASES`): training, evaluation (the losses
before and after training, and the generated answers) and allocation. The rest of its
time is everything else the worker did for it: loading the model and data, building and
saving the adapter, and the executor's own time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adaptive_lora.study.plan import format_duration
from adaptive_lora.study.store import DONE, FAILED, RunRow

# (phase, the metrics key a run records its seconds under), in the order runs go through
# them in the report; "rest" is a run's time outside them.
PHASES = (
    ("training", "train_seconds"),
    ("evaluation", "eval_seconds"),
    ("allocation", "allocation_seconds"),
)
REST = "rest"


def phase_seconds(row: RunRow) -> dict[str, float] | None:
    """One run's seconds per recorded phase and the rest of its time (None: the run
    recorded no phase, or no time)."""
    recorded = {
        phase: float(value)
        for phase, key in PHASES
        if isinstance(value := row.metrics.get(key), (int, float)) and not isinstance(value, bool)
    }
    if not recorded or row.seconds is None:
        return None
    return {**recorded, REST: float(row.seconds) - sum(recorded.values())}


def _interval(row: RunRow) -> tuple[float, float] | None:
    if not (row.started_at and row.ended_at):
        return None
    start = datetime.fromisoformat(row.started_at).timestamp()
    end = datetime.fromisoformat(row.ended_at).timestamp()
    return (start, end) if end >= start else None


def compute_time(rows: Sequence[RunRow]) -> dict[str, Any]:
    """{"runs", "run_seconds", "wall_seconds", "stretches", "first_start", "last_end"},
    and "phase_seconds" (each phase summed over the runs that recorded it, and the rest)
    where any run recorded its phases."""
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
    timing: dict[str, Any] = {
        "runs": len(finished),
        "run_seconds": float(sum(r.seconds or 0.0 for r in finished)),
        "wall_seconds": float(sum(end - start for start, end in merged)),
        "stretches": len(merged),
        "first_start": min(starts) if starts else None,
        "last_end": max(ends) if ends else None,
    }
    phased = [p for r in finished if (p := phase_seconds(r)) is not None]
    if phased:
        timing["phase_seconds"] = {
            phase: float(sum(p.get(phase, 0.0) for p in phased))
            for phase in [name for name, _ in PHASES] + [REST]
            if any(phase in p for p in phased)
        }
        timing["phase_runs"] = len(phased)
    return timing


def compute_line(timing: dict[str, Any]) -> str:
    """The report's compute paragraph (its status section): run and wall time, and the run
    time by phase where the runs recorded their phases."""
    if not timing["runs"]:
        return "No run has finished yet."
    stretches = timing["stretches"]
    return (
        f"Compute: {timing['runs']} finished run(s) took {format_duration(timing['run_seconds'])}"
        f" of run time in {format_duration(timing['wall_seconds'])} of wall time (the time at "
        f"least one run was going, in {stretches} stretch{'es' if stretches != 1 else ''}, "
        f"{timing['first_start'][:16].replace('T', ' ')} to "
        f"{timing['last_end'][:16].replace('T', ' ')} UTC)."
    ) + _phase_words(timing)


def _phase_words(timing: dict[str, Any]) -> str:
    """The run time by phase, as the runs recorded it ("" when none did)."""
    phases = timing.get("phase_seconds")
    if not phases:
        return ""
    named = [f"{phase} {format_duration(phases[phase])}" for phase, _ in PHASES if phase in phases]
    runs = timing["phase_runs"]
    whose = f" of the {runs} runs that recorded it" if runs < timing["runs"] else ""
    return (
        f" Of the run time{whose}: "
        + ", ".join(named)
        + f", and {format_duration(phases[REST])} outside them (loading the model and data, "
        "building and saving the adapter, the executor's own time)."
    )
