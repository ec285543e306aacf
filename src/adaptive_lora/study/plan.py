"""What a `run` would do now and how long it will take: rows, pending specs, estimates."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from adaptive_lora.config import RunConfig
from adaptive_lora.errors import UserError
from adaptive_lora.study.cost_model import estimated_seconds
from adaptive_lora.study.design import group_signature
from adaptive_lora.study.spec import RunSpec, Study
from adaptive_lora.study.store import DONE, FAILED, PENDING, RUNNING, RunRow, StudyStore
from adaptive_lora.study.transient import transient

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


def read_rows(study: Study) -> dict[str, RunRow | None]:
    """`current_rows` from the study's store, opened read-only and closed again (every run
    None when nothing has run yet): for status, dry runs and checks."""
    store = open_store_if_any(study)
    if store is None:
        return current_rows(study, None)
    with store:
        return current_rows(study, store)


def stored_rows(rows: dict[str, RunRow | None]) -> list[RunRow]:
    """The rows of `current_rows` that the store holds (runs never stored left out)."""
    return [row for row in rows.values() if row is not None]


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
            # failed by the machine (a full disk): the next `run` takes it without the flag
            or (status == FAILED and (retry_failed or transient(row.reason)))
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
    study: Study,
    rows: dict[str, RunRow | None],
    todo: Sequence[RunSpec],
    *,
    at_once: int = 1,
    to_come: Sequence[RunConfig] = (),
) -> Estimate:
    """How long `todo` and `to_come` (configs of reporting runs not expanded yet, from
    `_runs_to_come`) will take, `at_once` side by side (`--workers`).

    Each run is predicted by its size (`heuristic_seconds`: steps, tokens, answers)
    scaled by what this study's finished runs took against their own size — those of its
    group (model × task × size) where it has any, else all of them — so a study whose
    groups differ tenfold in size is not priced at one mean. Before any run has finished,
    from the model's size and a matmul timed on this machine (`cost_model`), or where the
    model's configuration cannot be read, the size heuristic alone (an upper bound on the
    2-core CPU it came from). The runs go to whichever worker frees first, in
    order. A finished run's wall time is what it took as it ran, so the estimate holds
    for the worker setting those runs had.
    """
    at_once = max(1, at_once)
    configs = [spec.config for spec in todo] + list(to_come)
    finished = [r for r in rows.values() if r is not None and r.status == DONE and r.seconds]
    if finished:
        scale = _measured_scale(finished)
        seconds = [heuristic_seconds(c) * scale(c) for c in configs]
        source = f"{len(finished)} finished run(s), scaled by each run's size and group"
    else:
        seconds, source = _before_any_run(configs, at_once)
    return Estimate(_makespan(seconds, at_once), len(seconds), source, at_once)


def _before_any_run(configs: list[RunConfig], at_once: int) -> tuple[list[float], str]:
    """Each run's seconds before the study has finished one, and how they were estimated."""
    cores = os.cpu_count() or 1
    measured = [estimated_seconds(c, c.train.threads or max(1, cores // at_once)) for c in configs]
    if configs and None not in measured:
        return [float(s) for s in measured], (
            "rough estimate, no finished runs yet: each model's size at a matmul pace "
            "measured on this machine, every example at max_length"
        )
    return [heuristic_seconds(c) for c in configs], (
        "rough heuristic, no finished runs yet: "
        f"{HEURISTIC_TRAIN_TOKENS_PER_S:g} training tokens/s as SmolLM2-135M on 2 CPU "
        "cores, every example at max_length, so an upper bound"
    )


def to_come_line(
    study: Study, rows: dict[str, RunRow | None], todo: Sequence[RunSpec], at_once: int = 1
) -> str | None:
    """The line after an estimate on the reporting runs not expanded yet (None: there are
    none): how many tuning will open, and the time of everything with them; past tuning,
    how many later looks may still add if every look goes on."""
    first, every_look = _runs_to_come(study, rows), _runs_to_come(study, rows, most=True)
    count, most = len(first), len(every_look)
    pace = f", {at_once} at a time" if at_once > 1 else " one at a time"
    if not count:
        if not most:
            return None
        every = estimate(study, rows, todo, at_once=at_once, to_come=every_look)
        return (
            f"then up to {most} reporting run(s) more if every look goes on: "
            f"{every.n_runs} run(s) in all ≈ {format_duration(every.seconds)}{pace}"
        )
    both = estimate(study, rows, todo, at_once=at_once, to_come=first)
    looks = f" at the first look (up to {most} if every look goes on)" if most != count else ""
    return (
        f"then {count} reporting run(s){looks}, once the tuning seeds {study.lr_tuning_seeds} "
        f"have chosen each learning rate: {both.n_runs} run(s) in all ≈ "
        f"{format_duration(both.seconds)}{pace}"
    )


def _runs_to_come(
    study: Study, rows: dict[str, RunRow | None], most: bool = False
) -> list[RunConfig]:
    """A config per reporting run not expanded yet (sized like its group): those tuning
    will open at the first look, or (`most`) up to the last look."""
    stored = stored_rows(rows)
    out = []
    for group in study.groups:
        part = study.for_group(group)
        config = RunConfig.from_dict(copy.deepcopy(group.sections))
        out += [config] * part.runs_to_come(most=most, rows=stored)
    return out


def _measured_scale(finished: list[RunRow]):
    """config → measured seconds per heuristic second: the mean over the finished runs of
    its group (same model and data), or over all of them for a group with none yet."""
    by_group: dict[str, list[float]] = {}
    for row in finished:
        try:
            size = heuristic_seconds(RunConfig.from_stored(copy.deepcopy(row.config)))
        except UserError:  # a row written by an older schema: left out of the scale
            continue
        by_group.setdefault(group_signature(row.config), []).append(row.seconds / size)
    overall = [ratio for ratios in by_group.values() for ratio in ratios]
    default = sum(overall) / len(overall) if overall else 1.0

    def scale(config: RunConfig) -> float:
        ratios = by_group.get(group_signature(config.to_dict()))
        return sum(ratios) / len(ratios) if ratios else default

    return scale


def _makespan(seconds: list[float], workers: int) -> float:
    """Wall time of the runs taken in order, each by the first worker to come free."""
    free = [0.0] * workers
    for duration in seconds:
        soonest = free.index(min(free))
        free[soonest] += duration
    return max(free) if seconds else 0.0


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"
