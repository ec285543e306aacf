"""Progress from Ray workers to the driver, and the stall it lets the driver see.

A worker's run reports its phase and step (`adaptive_lora.progress`); `worker_sink` sends
them to a `ProgressBoard` actor (at most one every `SEND_EVERY_S`, and every phase change),
which the driver empties while it waits for results. `StallWatch` keeps, per running run,
when the driver last heard of it and the longest silence between two reports so far: a run
silent for longer than `max(floor, STALL_FACTOR × that longest silence)` has stalled (a
frozen or wedged worker) and the executor replaces its worker. The bound comes from the
run's own pace, so a slow model on a slow machine is not called stalled, and the floor
covers what comes before the first report (a model's first load, say).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import ray

from adaptive_lora.progress import Progress

SEND_EVERY_S = 2.0
STALL_FACTOR = 10.0
# A run silent this long is stalled whatever its pace (`ADAPTIVE_LORA_STALL_FLOOR_S`).
STALL_FLOOR_S = float(os.environ.get("ADAPTIVE_LORA_STALL_FLOOR_S", 900))


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    """The latest progress of each run, as the workers sent it, until the driver takes it."""

    def __init__(self) -> None:
        self._latest: dict[str, Progress] = {}

    def update(self, run_id: str, progress: Progress) -> None:
        self._latest[run_id] = progress

    def take(self) -> dict[str, Progress]:
        latest, self._latest = self._latest, {}
        return latest


def worker_sink(board: Any, run_id: str) -> Callable[[Progress], None]:
    """A `progress.reporting_to` sink that sends `run_id`'s reports to `board`, thinned."""
    last = {"at": 0.0, "phase": None}

    def send(progress: Progress) -> None:
        if progress.phase != last["phase"] or progress.at - last["at"] >= SEND_EVERY_S:
            last.update(at=progress.at, phase=progress.phase)
            board.update.remote(run_id, progress)

    return send


class StallWatch:
    """When each running run was last heard of (driver's clock), and its longest silence."""

    def __init__(self, floor_s: float = STALL_FLOOR_S, factor: float = STALL_FACTOR):
        self.floor_s, self.factor = floor_s, factor
        self._last: dict[str, float] = {}
        self._longest: dict[str, float] = {}

    def started(self, run_id: str) -> None:
        self._last[run_id] = time.monotonic()
        self._longest[run_id] = 0.0

    def heard(self, run_id: str) -> None:
        if run_id in self._last:
            now = time.monotonic()
            self._longest[run_id] = max(self._longest[run_id], now - self._last[run_id])
            self._last[run_id] = now

    def done(self, run_id: str) -> None:
        self._last.pop(run_id, None)
        self._longest.pop(run_id, None)

    def bound(self, run_id: str) -> float:
        return max(self.floor_s, self.factor * self._longest.get(run_id, 0.0))

    def stalled(self) -> list[tuple[str, float, float]]:
        """(run id, seconds silent, its bound) of each run silent past its bound."""
        now = time.monotonic()
        return [
            (run_id, now - last, self.bound(run_id))
            for run_id, last in self._last.items()
            if now - last > self.bound(run_id)
        ]
