"""A stand-in for `execute_run` in study tests: no model, each run's numbers from a rule.

A subclass gives `metrics(config)`, the numbers a run of that config reports (its test
loss, say); every other key of `METRIC_KEYS` is None, with a validation loss of 2.0 and
one second of training unless the rule says otherwise. Each call writes the run's folder
and `metrics.json` as a real run does and records the seeds it ran, per strategy.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from adaptive_lora.records import METRIC_KEYS, RunResult, write_json


class FakeRuns(abc.ABC):
    def __init__(self) -> None:
        self.seeds: dict[str, list[int]] = {}  # strategy → the seeds it ran, in order

    @abc.abstractmethod
    def metrics(self, config) -> dict[str, Any]:
        """The numbers this run reports."""

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        run_dir = Path(out_root) / run_id
        run_dir.mkdir(parents=True)
        self.seeds.setdefault(config.allocation.strategy, []).append(config.seed)
        metrics: dict[str, Any] = {k: None for k in METRIC_KEYS}
        metrics.update(val_loss=2.0, train_seconds=1.0)
        metrics.update(self.metrics(config))
        write_json(run_dir / "metrics.json", metrics)
        return RunResult(run_id, run_dir, "done", metrics, {"versions": {"torch": "x"}})
