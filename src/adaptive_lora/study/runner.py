"""The study runner: hand pending runs to an executor, record each state change."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adaptive_lora.errors import one_line
from adaptive_lora.records import STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, RunResult
from adaptive_lora.study.executor import Executor, Where, as_stopped, resume_command
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.manifest import record_manifest
from adaptive_lora.study.plan import current_rows, estimate, format_duration
from adaptive_lora.study.progress_log import ProgressLog
from adaptive_lora.study.spec import RunSpec, Study, in_groups
from adaptive_lora.study.store import DONE, FAILED, PENDING, RunRow, StudyLock, StudyStore
from adaptive_lora.study.transient import disk_full, disk_full_stop, run_size_text, transient


@dataclass
class RunSummary:
    """What one `run` did."""

    ran: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # reset from a dead process
    retried: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # an executor lost them: pending again
    skipped_done: int = 0
    exports: list[Path] = field(default_factory=list)


def run_study(
    study: Study,
    *,
    executor: Executor | None = None,
    retry_failed: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    only: set[str] | None = None,
) -> RunSummary:
    """Run every pending run of `study`, in order, recording each state change.

    Holds the study lock throughout; rows left `running` by a dead process are reset
    and re-run (their partial folders removed first); done runs are never re-run;
    failed runs are recorded with their reason and the study goes on
    (`retry_failed=True` runs them again). With learning-rate tuning seeds, the
    reporting runs that the finished tuning runs open (at the chosen rates) follow in
    the same call: they join the queue as soon as a strategy's rate is chosen, so a
    worker that frees up takes one while other tuning runs are still going.
    `only` (group keys: `run --only`) runs those groups' runs and leaves the others
    pending for a later `run`.
    """
    executor = executor or LocalExecutor()
    summary = RunSummary()
    study.out.mkdir(parents=True, exist_ok=True)
    with StudyLock(study.lock_path), StudyStore.open(study.store_path) as store:
        record_manifest(store, study)
        summary.interrupted = store.reset_interrupted()
        if retry_failed:
            summary.retried = store.reset_failed(study.run_ids)
        else:  # failed by the machine (a full disk), not by themselves: run them again
            for run_id, reason in _machine_failures(store, study.run_ids):
                store.reset_failed([run_id])
                log(f"  {run_id} failed for a transient cause ({reason}): running it again")
        for run_id in summary.interrupted:
            log(f"  {run_id} was interrupted (its process ended mid-run): running it again")
        _backup(store, log)  # a store from before backups were kept gets one now
        study = _run_pending(study, store, executor, summary, quiet=quiet, log=log, only=only)
        summary.exports = store.export(study.out, study.run_ids)
    log(
        f"study {study.name}: ran {len(summary.ran)} ({len(summary.done)} done, "
        f"{len(summary.failed)} failed"
        + (f", {len(summary.lost)} interrupted: the next `run` redoes them" if summary.lost else "")
        + f"); results in {study.out / 'results.csv'}"
    )
    return summary


class _Starts:
    """The runs this process started and when: each marked running in the store as its
    worker takes it (`on_start`), and logged with its place in the queue."""

    def __init__(self, study: Study, store: StudyStore, summary: RunSummary, log, queue):
        self.study, self.store, self.summary, self.log = study, store, summary, log
        self.started: dict[str, float] = {}
        self.index = {spec.run_id: i for i, spec in enumerate(queue, 1)}

    def tag(self, run_id: str) -> str:
        return f"[{self.index[run_id]}/{len(self.index)}]"

    def on_start(self, spec: RunSpec, where: Where | None = None) -> None:
        host, pid = (where.host, where.pid) if where else (None, None)
        if spec.run_id in self.started:  # the executor retries it on another worker
            self.store.move_running(spec.run_id, host=host or "?", pid=pid)
            self.log(
                f"    {spec.run_id}: its worker died; retrying on {where.text() if where else '?'}"
            )
            return
        run_dir = self.study.runs_dir / spec.run_id
        if run_dir.exists():  # what an interrupted or failed attempt left behind
            shutil.rmtree(run_dir)
        self.store.mark_running(
            spec.run_id, run_dir=str(Path("runs") / spec.run_id), host=host, pid=pid
        )
        if spec.run_id in self.summary.lost:  # lost with a dead node, and started again since
            self.summary.lost.remove(spec.run_id)
        self.started[spec.run_id] = time.monotonic()
        on = f"  on {where.text()}" if where else ""
        self.log(f"{self.tag(spec.run_id)} {spec.describe()}  ({spec.run_id}){on}")

    def finished(self, run_id: str) -> float:
        """Seconds since `run_id` started (it must have)."""
        if run_id not in self.started:
            raise RuntimeError(f"executor returned {run_id}, which never started")
        return time.monotonic() - self.started.pop(run_id)


def _run_pending(
    study: Study,
    store: StudyStore,
    executor: Executor,
    summary: RunSummary,
    *,
    quiet: bool,
    log: Callable[[str], None],
    only: set[str] | None = None,
) -> Study:
    """Store the study's runs, then execute the pending ones and record each result.

    The executor takes specs from a queue that grows while it runs: after each tuning
    run, the study is read again, and the reporting runs its chosen rates open are
    stored and queued. Returns the study as it stands at the end (with those runs).
    """
    queue, rows = _first_queue(study, store, summary, log, only)
    at_once = executor.workers or 1
    if queue:
        log(f"  estimate: {estimate(study, rows, list(queue), at_once=at_once).text()}")
    starts = _Starts(study, store, summary, log, queue)
    progress_log = ProgressLog(study.out, log, starts.tag)
    tuning = {s.run_id for s in study.runs if s.tuning}
    try:
        for result in executor.execute(
            queue, study.runs_dir, on_start=starts.on_start, quiet=quiet,
            on_progress=progress_log.on_progress,
        ):  # fmt: skip
            progress_log.done(result.run_id)
            seconds = starts.finished(result.run_id)
            shown = starts.tag(result.run_id)  # runs may finish out of order
            _record(
                store, result, seconds, summary, lambda line, t=shown: log(f"{t} {line.lstrip()}")
            )
            _backup(store, log)
            store.export(study.out, study.run_ids)
            if result.status == STATUS_FAILED and disk_full(result.error):
                # Every run after it would fail the same way: stop, say what to free.
                size = run_size_text(
                    study.runs_dir / r.id for r in store.rows() if r.status == DONE
                )
                raise disk_full_stop(
                    result.run_id,
                    study.out,
                    size,
                    resume_command(f"adaptive-lora run {study.path}"),
                )
            # A finished tuning run may choose a rate; with sequential seeds any finished
            # reporting run may complete a look that opens the next block of seeds.
            if result.run_id in tuning or study.seed_plan is not None:
                study = _queue_reporting_runs(study, store, queue, starts.index, at_once, log, only)
                # Tuning runs can be added too (a grid grown past its edge: `lr_extend`).
                tuning = {s.run_id for s in study.runs if s.tuning}
    except BaseException as error:
        _back_to_pending(study, store, starts.started, error)
        raise
    finally:
        progress_log.clear()
    return study


def _machine_failures(store: StudyStore, ids: list[str]) -> list[tuple[str, str]]:
    """The study's failed runs whose recorded reason is the machine's (`transient`)."""
    wanted = set(ids)
    return [
        (row.id, one_line(row.reason or "")[:80])
        for row in store.rows()
        if row.id in wanted and row.status == FAILED and transient(row.reason)
    ]


def _backup(store: StudyStore, log: Callable[[str], None]) -> None:
    """Refresh the store's backup (`study.db.backup`); a failure is said, never fatal: the
    previous backup stays whole and the runs go on."""
    try:
        store.backup()
    except (OSError, sqlite3.Error) as error:
        log(f"  warning: the store's backup was not refreshed ({one_line(error)}); "
            "the previous one is kept")  # fmt: skip


def _back_to_pending(
    study: Study, store: StudyStore, started: dict[str, float], error: BaseException
) -> None:
    """Runs this process started but will not finish go back to pending, with the reason."""
    if isinstance(error, KeyboardInterrupt):  # Ctrl-C, or a signal (`Stopped`)
        reason = str(as_stopped(error)) or "stopped by the user"
    else:
        reason = f"stopped: {one_line(error)}"
    for run_id in started:
        store.mark_pending(run_id, reason)
    with contextlib.suppress(Exception):  # keep the original error in view
        store.export(study.out, study.run_ids)


def _first_queue(
    study: Study,
    store: StudyStore,
    summary: RunSummary,
    log: Callable[[str], None],
    only: set[str] | None,
) -> tuple[deque[RunSpec], dict[str, RunRow]]:
    """Store the study's runs; the pending ones (of the `only` groups) in order, logged,
    and every run's stored row."""
    added = store.sync_runs(study.runs)
    rows = current_rows(study, store)
    pending = [s for s in study.runs if rows[s.run_id].status == PENDING]
    queue = deque(s for s in pending if in_groups(s, only))
    summary.skipped_done = sum(1 for r in rows.values() if r.status == DONE)
    n_failed = sum(1 for r in rows.values() if r.status == FAILED)
    later = len(pending) - len(queue)
    log(
        f"study {study.name}: {len(study.runs)} runs, {summary.skipped_done} done, "
        f"{n_failed} failed (kept; --retry-failed re-runs them), {len(queue)} to run"
        + (f" ({later} pending in the groups --only leaves out)" if later else "")
        + (f"; {added} new" if added and added != len(study.runs) else "")
    )
    return queue, rows


def _queue_reporting_runs(
    study: Study,
    store: StudyStore,
    queue: deque[RunSpec],
    index: dict[str, int],
    at_once: int,
    log: Callable[[str], None],
    only: set[str] | None = None,
) -> Study:
    """Queue the reporting runs that rates chosen since `study` was expanded open
    (numbering them for the log); returns the study expanded with the rows stored now.

    The study file is not read again: its text was kept when the run began, and a file
    edited since is refused in one line (the runs so far used the old one)."""
    study.check_unchanged()
    opened = study.with_rows(store.rows())
    known = set(study.run_ids)
    new = [s for s in opened.runs if s.run_id not in known]
    if not new:
        return study
    store.sync_runs(opened.runs)
    rows = current_rows(opened, store)
    fresh = [s for s in new if rows[s.run_id].status == PENDING and in_groups(s, only)]
    for spec in fresh:
        index[spec.run_id] = len(index) + 1
    queue.extend(fresh)
    waiting = [s for s in opened.runs if rows[s.run_id].status == PENDING and in_groups(s, only)]
    why = "learning rates chosen" if study.seed_plan is None else "rates chosen or a look judged"
    log(
        f"{why}: {len(fresh)} run(s) join the queue; "
        f"estimate: {estimate(opened, rows, waiting, at_once=at_once).text()}"
    )
    return opened


def _record(
    store: StudyStore,
    result: RunResult,
    seconds: float,
    summary: RunSummary,
    log: Callable[[str], None],
) -> None:
    """Store what one run returned: done, failed, or lost by the executor (→ pending)."""
    if result.status == STATUS_INTERRUPTED:
        reason = f"interrupted ({result.error or 'its worker died'}); will re-run"
        store.mark_pending(result.run_id, reason, ended_as="interrupted")
        summary.lost.append(result.run_id)
        log(f"    INTERRUPTED: {reason}")
        return
    done = result.status == STATUS_DONE
    store.mark_finished(
        result.run_id,
        status=DONE if done else FAILED,
        metrics=result.metrics,
        manifest=result.manifest,
        reason=None if done else (result.error or "failed (no reason given)"),
        seconds=seconds,
    )
    summary.ran.append(result.run_id)
    (summary.done if done else summary.failed).append(result.run_id)
    if done:
        loss = result.metrics.get("test_loss")
        shown = f"test loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
        log(f"    done in {format_duration(seconds)}  {shown}".rstrip())
    else:
        log(f"    FAILED after {format_duration(seconds)}: {result.error}")
