"""Where a run is: its phase and step, told to whoever listens (the one sink of a process).

A run's stages call `report(phase, step, total)`; by default nobody listens and it costs
nothing. A study's executor installs a sink for the run it executes (`reporting_to`): the
in-process executor hands each report to the runner, a Ray worker sends it to the driver.
So a study prints each run's phase and step from every executor, and notices a run whose
reports stop (a frozen worker).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A run's phase (`loading`, `allocating`, `training`, `validation loss`, `test loss`,
    `answers`), how far into it (`step` of `total`; 0 of 0 for a phase without steps) and
    when (Unix time), with the mean seconds per step so far where there are steps."""

    phase: str
    step: int = 0
    total: int = 0
    at: float = 0.0
    seconds_per_step: float | None = None

    def text(self) -> str:
        counted = f" {self.step}/{self.total}" if self.total else ""
        pace = f" ({self.seconds_per_step:.1f} s/step)" if self.seconds_per_step else ""
        return f"{self.phase}{counted}{pace}"


_sink: Callable[[Progress], None] | None = None
_phase_start: dict[str, float] = {}
_phase = ""


def report(phase: str, step: int = 0, total: int = 0) -> None:
    """Tell the listener (if any) where the run is. Never raises: progress is a courtesy."""
    global _phase
    if _sink is None:
        return
    _phase = phase
    now = time.time()
    started = _phase_start.setdefault(phase, now)
    pace = (now - started) / step if step and phase == "training" else None
    try:
        _sink(Progress(phase, step, total, now, pace))
    except Exception:  # noqa: BLE001 - a listener that fails must not fail the run
        pass


def step(done: int, total: int) -> None:
    """How far into the current phase (an evaluation's batches, say). Training's steps
    come from the loop alone: a validation pass inside training leaves them be."""
    if _sink is not None and _phase != "training":
        report(_phase or "working", done, total)


@contextlib.contextmanager
def reporting_to(sink: Callable[[Progress], None]) -> Iterator[None]:
    """Send this process's reports to `sink` while the block runs (one run)."""
    global _sink
    before = _sink
    _sink = sink
    _phase_start.clear()
    try:
        yield
    finally:
        _sink = before
        _phase_start.clear()
