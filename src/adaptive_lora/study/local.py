"""The in-process executor: runs one after another, each model loaded once."""

from __future__ import annotations

import contextlib
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adaptive_lora import progress
from adaptive_lora.errors import UserError, one_line
from adaptive_lora.model.loading import load_model as default_load_model
from adaptive_lora.progress import Progress
from adaptive_lora.records import STATUS_FAILED, RunResult
from adaptive_lora.run import execute_run as default_execute_run
from adaptive_lora.study.spec import RunSpec


class LocalExecutor:
    """Runs specs one after another in this process, loading each model once.

    `execute_run` and `load_model` default to `run.execute_run` and
    `model.loading.load_model`; tests inject stand-ins.
    """

    workers = 1  # one run at a time

    def __init__(
        self,
        execute_run: Callable[..., RunResult] | None = None,
        load_model: Callable[[str], Any] | None = None,
    ):
        self._execute_run = execute_run or default_execute_run
        self._load_model = load_model or default_load_model
        self._models: dict[str, Any] = {}

    def _loaded(self, spec: str) -> Any:
        if spec not in self._models:
            self._models[spec] = self._load_model(spec)
        return self._models[spec]

    def execute(
        self,
        specs: deque[RunSpec],
        out_root: Path,
        *,
        on_start: Callable[[RunSpec], None],
        quiet: bool = False,
        on_progress: Callable[[str, Progress], None] | None = None,
    ) -> Iterator[RunResult]:
        execute_run = self._execute_run
        while specs:  # the runner may append while we run (see the Executor Protocol)
            spec = specs.popleft()
            loaded = self._loaded(spec.config.model)
            on_start(spec)
            sink = (lambda p, run_id=spec.run_id: on_progress(run_id, p)) if on_progress else None
            try:
                with progress.reporting_to(sink) if sink else contextlib.nullcontext():
                    result = execute_run(
                        spec.config, out_root, run_id=spec.run_id, loaded=loaded, quiet=quiet
                    )
            except UserError:
                raise
            except Exception as error:  # a bug in one run must not end a night of runs
                run_dir = Path(out_root) / spec.run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "traceback.txt").write_text(traceback.format_exc())
                result = RunResult(spec.run_id, run_dir, STATUS_FAILED, error=one_line(error))
            yield result
