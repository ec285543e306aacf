"""The executor Protocol: how the runner hands runs to whatever executes them.

An executor is one file behind this Protocol (`local.py` runs in this process,
`ray_executor.py` on Ray workers).
"""

from __future__ import annotations

import shlex
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from adaptive_lora.progress import Progress
from adaptive_lora.records import RunResult
from adaptive_lora.study.spec import RunSpec


class Stopped(KeyboardInterrupt):
    """A signal asked the study to stop (`run` turns SIGTERM and SIGINT into this): it
    unwinds like Ctrl-C, so started runs go back to pending and the exports are written.

    `latest` is the one a signal raised last in this process: Ray's blocking waits run
    the signal handler themselves and raise a bare `KeyboardInterrupt` in its place,
    so code that catches one asks `as_stopped` which signal it was.
    """

    latest: ClassVar[Stopped | None] = None

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(f"stopped by {signal_name}")
        self.exit_code = exit_code


def as_stopped(error: KeyboardInterrupt) -> KeyboardInterrupt:
    """The `Stopped` behind a `KeyboardInterrupt`, if a signal raised one; else `error`."""
    return error if isinstance(error, Stopped) else (Stopped.latest or error)


@dataclass(frozen=True)
class Where:
    """Where a run runs: the host and process of the worker that has it."""

    host: str
    pid: int | None = None
    worker: str = ""  # e.g. a Ray actor id; empty in-process

    def text(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" ({self.worker})" if self.worker else "")


class Executor(Protocol):
    """Runs specs and yields one `RunResult` per spec, as each finishes (any order).

    `specs` is a queue the executor takes from whenever it can start a run (from the
    left, or as `dispatch.take_next` chooses when runs go side by side);
    the runner may append to it each time a result is yielded (the reporting runs that
    a finished tuning run opens), so the executor ends only when the queue is empty
    and no run is in flight — never on a count taken at the start.

    It calls `on_start(spec, where)` right before a run starts (the runner cleans the
    run folder and marks the run `running` there; `where=None` means this process),
    and again with the new `where` if it moves the run to another worker. A
    `UserError` ends the study; any other failure of one run comes back as a failed
    `RunResult`; a run it lost (its worker died) comes back `interrupted` and the
    runner puts it back to pending.

    `on_progress(run_id, progress)`, when given, hears each run's `Progress` as it
    runs (phase and step; see `adaptive_lora.progress`), from whatever process runs it.

    `workers` is how many runs it runs side by side (the runner's estimate counts
    rounds of that many); `None` until it knows (a Ray executor before it connects).
    """

    workers: int | None

    def execute(
        self,
        specs: deque[RunSpec],
        out_root: Path,
        *,
        on_start: Callable[..., None],
        quiet: bool = False,
        on_progress: Callable[[str, Progress], None] | None = None,
    ) -> Iterator[RunResult]: ...


def resume_command(fallback: str = "the same `adaptive-lora run STUDY.yaml ...` command") -> str:
    """The command that resumes this study: the one that started it, when it was `run`."""
    if sys.argv[1:2] == ["run"]:
        return shlex.join(["adaptive-lora", *sys.argv[1:]])
    return fallback
