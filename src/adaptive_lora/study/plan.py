"""What a `run` would do now and how long it will take: rows, pending specs, estimates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adaptive_lora.analysis.descriptive import describe
from adaptive_lora.config import RunConfig
from adaptive_lora.study.spec import RunSpec, Study
from adaptive_lora.study.store import DONE, FAILED, PENDING, RUNNING, RunRow, StudyStore

# Rough speed for the time estimate before any run has finished: SmolLM2-135M with
# LoRA and bf16 autocast trains at about 270 tokens/s on a 2-core CPU (DESIGN.md).
HEURISTIC_TRAIN_TOKENS_PER_S = 270.0


HEURISTIC_EVAL_TOKENS_PER_S = 3 * HEURISTIC_TRAIN_TOKENS_PER_S  # forward only


HEURISTIC_GENERATED_TOKENS_PER_S = 15.0


HEURISTIC_SETUP_S = 10.0


def open_store_if_any(study: Study) -> StudyStore | None:
    """The study's store if it exists (read-only use: status, dry runs, reports)."""
    return StudyStore.open(study.store_path, create=False) if study.store_path.is_file() else None


def current_rows(study: Study, store: StudyStore | None) -> dict[str, RunRow | None]:
    """Run id → its stored row (None when never stored), for every run of the spec."""
    stored = {row.id: row for row in store.rows(study.run_ids)} if store else {}
    return {run_id: stored.get(run_id) for run_id in study.run_ids}


def would_run(
    study: Study, rows: dict[str, RunRow | None], *, retry_failed: bool, lock_held: bool
) -> list[RunSpec]:
    """The specs a `run` started now would execute, in order."""
    chosen = []
    for spec in study.runs:
        row = rows[spec.run_id]
        status = PENDING if row is None else row.status
        if (
            status == PENDING
            or (status == FAILED and retry_failed)
            or (status == RUNNING and not lock_held)
        ):
            chosen.append(spec)
    return chosen


@dataclass
class Estimate:
    """Seconds that `n_runs` runs will take, `at_once` at a time, and how that was estimated."""

    seconds: float
    n_runs: int
    source: str
    at_once: int = 1

    def text(self) -> str:
        if self.n_runs == 0:
            return "nothing left to run"
        side_by_side = f", {self.at_once} at a time" if self.at_once > 1 else ""
        return (
            f"{self.n_runs} run(s) ≈ {format_duration(self.seconds)}{side_by_side} ({self.source})"
        )


def heuristic_seconds(config: RunConfig) -> float:
    """A rough duration of one run from its size alone (see HEURISTIC_* constants)."""
    t, d, e = config.train, config.data, config.eval
    steps = t.max_steps or math.ceil(t.epochs * d.n_train / (t.batch_size * t.grad_accum))
    train_tokens = steps * t.batch_size * t.grad_accum * d.max_length
    eval_tokens = 2 * (d.n_val + d.n_test) * d.max_length  # before and after training
    generated = e.n_generate * e.max_new_tokens
    return (
        HEURISTIC_SETUP_S
        + train_tokens / HEURISTIC_TRAIN_TOKENS_PER_S
        + eval_tokens / HEURISTIC_EVAL_TOKENS_PER_S
        + generated / HEURISTIC_GENERATED_TOKENS_PER_S
    )


def estimate(
    study: Study, rows: dict[str, RunRow | None], todo: Sequence[RunSpec], *, at_once: int = 1
) -> Estimate:
    """From the mean wall time of this study's finished runs; before any, a heuristic.

    `at_once` runs go side by side (`--workers`): the runs are taken in rounds of that
    many. A finished run's wall time is what it took as it ran, so the estimate holds
    for the worker setting those runs had.
    """
    at_once = max(1, at_once)
    rounds = math.ceil(len(todo) / at_once)
    finished = [
        r.seconds for r in rows.values() if r is not None and r.status == DONE and r.seconds
    ]
    if finished:
        mean = describe(finished)["mean"]
        source = f"mean of {len(finished)} finished run(s): {format_duration(mean)} each"
        return Estimate(mean * rounds, len(todo), source, at_once)
    seconds = sum(heuristic_seconds(spec.config) for spec in todo) * rounds / max(1, len(todo))
    source = (
        "rough heuristic, no finished runs yet: "
        f"{HEURISTIC_TRAIN_TOKENS_PER_S:g} training tokens/s as SmolLM2-135M on 2 CPU cores, "
        "every example at max_length, so an upper bound"
    )
    return Estimate(seconds, len(todo), source, at_once)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"
