"""The executor Protocol: how the runner hands runs to whatever executes them.

An executor is one file behind this Protocol (`local.py` runs in this process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from adaptive_lora.records import RunResult
from adaptive_lora.study.spec import RunSpec


class Executor(Protocol):
    """Runs specs and yields one `RunResult` per spec, as each finishes (any order).

    It calls `on_start(spec)` right before a run starts (the runner cleans the run
    folder and marks the run `running` there). A `UserError` ends the study; any
    other failure of one run comes back as a failed `RunResult`.
    """

    def execute(
        self,
        specs: Sequence[RunSpec],
        out_root: Path,
        *,
        on_start: Callable[[RunSpec], None],
        quiet: bool = False,
    ) -> Iterator[RunResult]: ...
