"""What a study prints while its runs run, and what `status` reads of it.

Every executor hands the runner each run's `Progress` (see `adaptive_lora.progress`);
this prints a line per run at a modest rate — the first training step at once (so a
study shows it is working within a minute of its first run's start), a new phase when
the last line is a while old, and otherwise a line a minute — and keeps the latest
progress of every running run in `progress.json` beside the store, for `status`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adaptive_lora.progress import Progress
from adaptive_lora.records import read_json, write_json

PROGRESS_FILE = "progress.json"
EVERY_S = 60.0  # a running run's line at least this often
NEW_PHASE_AFTER_S = 10.0  # a new phase gets its own line once the last is this old
WRITE_EVERY_S = 5.0  # progress.json at most this often


class ProgressLog:
    """`on_progress(run_id, progress)` for an executor; `done(run_id)` when a run ends."""

    def __init__(self, out: Path, log: Callable[[str], None], tag: Callable[[str], str]):
        self._path = Path(out) / PROGRESS_FILE
        self._log, self._tag = log, tag
        self._latest: dict[str, Progress] = {}
        self._printed: dict[str, tuple[float, str]] = {}  # run id → (when, phase) last shown
        self._written = 0.0

    def on_progress(self, run_id: str, progress: Progress) -> None:
        self._latest[run_id] = progress
        if self._should_print(run_id, progress):
            self._printed[run_id] = (time.monotonic(), progress.phase)
            self._log(f"{self._tag(run_id)} {progress.text()}")
        if time.monotonic() - self._written >= WRITE_EVERY_S:
            self._write()

    def _should_print(self, run_id: str, progress: Progress) -> bool:
        if run_id not in self._printed:
            return True
        when, phase = self._printed[run_id]
        age = time.monotonic() - when
        if progress.phase == "training" and phase != "training" and progress.step >= 1:
            return True  # the first step: the run is training, and how fast
        return age >= EVERY_S or (progress.phase != phase and age >= NEW_PHASE_AFTER_S)

    def done(self, run_id: str) -> None:
        self._latest.pop(run_id, None)
        self._printed.pop(run_id, None)
        self._write()

    def clear(self) -> None:
        """The study stopped: no run of it is running any more."""
        self._latest.clear()
        self._write()

    def _write(self) -> None:
        self._written = time.monotonic()
        try:
            write_json(self._path, {rid: asdict(p) for rid, p in self._latest.items()})
        except OSError:  # a read-only or full disk: progress is a courtesy
            pass


def read_progress(out: Path) -> dict[str, Any]:
    """Run id → its latest progress as the running study last wrote it ({} if none)."""
    try:
        return read_json(Path(out) / PROGRESS_FILE)
    except (OSError, ValueError):
        return {}
