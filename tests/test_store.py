"""The study store: state transitions, attempts, notes, exports and the study lock."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from adaptive_lora.errors import UserError
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    StudyLock,
    StudyStore,
    lock_is_held,
)

STUDY = """\
# adaptive-lora run study.yaml
name: store-test
model: fake/model
data: {source: builtin, n_train: 8, n_val: 4, n_test: 4, max_length: 32}
budgets: [r4]
strategies: [uniform, linear_decay]
seeds: 0..1
train: {max_steps: 1}
"""


@pytest.fixture
def specs(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    return load_study(path, check_sources=False).runs


@pytest.fixture
def store(tmp_path):
    with StudyStore.open(tmp_path / "out" / "study.db") as opened:
        yield opened


def test_schema_and_wal(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "attempts", "manifest", "notes"} <= tables
    conn.close()


def test_open_without_create_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing has run yet"):
        StudyStore.open(tmp_path / "missing" / "study.db", create=False)
    assert not (tmp_path / "missing").exists()


def test_sync_is_idempotent_and_refreshes_labels(store, specs):
    assert store.sync_runs(specs) == 4
    assert store.sync_runs(specs) == 0
    rows = store.rows()
    assert [r.id for r in rows] == [s.run_id for s in specs]
    assert all(r.status == PENDING and r.attempts == 0 for r in rows)
    assert rows[0].config == specs[0].config.to_dict()
    renamed = [type(s)(**{**s.__dict__, "label": s.label + "-x"}) for s in specs]
    store.sync_runs(renamed)
    assert {r.label for r in store.rows()} == {"uniform-x", "linear_decay-x"}
    assert len(store.rows()) == 4


def test_run_lifecycle_counts_attempts(store, specs):
    store.sync_runs(specs)
    first = specs[0].run_id
    store.mark_running(first)
    with pytest.raises(RuntimeError, match="not pending"):
        store.mark_running(first)
    store.mark_finished(first, status=DONE, metrics={"test_loss": 1.5}, seconds=2.0)
    row = store.get(first)
    assert (row.status, row.attempts, row.metrics["test_loss"], row.seconds) == (DONE, 1, 1.5, 2.0)
    # A done run can never start again, whatever a caller does.
    with pytest.raises(RuntimeError, match="done, not pending"):
        store.mark_running(first)

    second = specs[1].run_id
    store.mark_running(second)
    store.mark_finished(second, status=FAILED, reason="loss is nan at step 3")
    assert store.get(second).reason == "loss is nan at step 3"
    assert store.reset_failed() == [second]
    assert store.get(second).status == PENDING
    store.mark_running(second)
    assert store.get(second).attempts == 2
    assert [a["status"] for a in store.attempts(second)] == [FAILED, RUNNING]


def test_reset_interrupted_only_touches_running_rows(store, specs):
    store.sync_runs(specs)
    store.mark_running(specs[0].run_id)
    store.mark_finished(specs[0].run_id, status=DONE, metrics={"test_loss": 1.0})
    store.mark_running(specs[1].run_id)
    assert store.reset_interrupted() == [specs[1].run_id]
    statuses = [r.status for r in store.rows()]
    assert statuses == [DONE, PENDING, PENDING, PENDING]
    assert store.attempts(specs[1].run_id)[0]["status"] == "interrupted"
    assert store.get(specs[0].run_id).attempts == 1


def test_mark_pending_after_a_stop(store, specs):
    store.sync_runs(specs)
    store.mark_running(specs[0].run_id)
    store.mark_pending(specs[0].run_id, "stopped by the user")
    row = store.get(specs[0].run_id)
    assert (row.status, row.reason) == (PENDING, "stopped by the user")


def test_a_failed_transaction_leaves_nothing_behind(store, specs):
    store.sync_runs(specs)
    broken = type(specs[0])(**{**specs[0].__dict__, "run_id": None})  # NOT NULL violation
    with pytest.raises(sqlite3.IntegrityError):
        store.sync_runs([specs[0], broken])
    assert len(store.rows()) == 4


def test_notes(store, specs):
    store.sync_runs(specs)
    note = store.add_note(
        "linear_decay looks better",
        decision="add 4 seeds",
        rationale="CI too wide",
        run_ids=[specs[0].run_id],
    )
    (stored,) = store.notes()
    assert stored.id == note
    assert (stored.text, stored.decision, stored.rationale) == (
        "linear_decay looks better",
        "add 4 seeds",
        "CI too wide",
    )
    assert stored.run_ids == [specs[0].run_id]
    with pytest.raises(UserError, match="unknown run id"):
        store.add_note("x", run_ids=["no-such-run"])
    assert len(store.notes()) == 1


def test_manifest_round_trip(store):
    store.update_manifest({"spec_hash": "abc", "versions": {"torch": "2.13"}})
    store.update_manifest({"spec_hash": "def"})
    assert store.manifest() == {"spec_hash": "def", "versions": {"torch": "2.13"}}


def test_export_has_every_metric_and_config_value(store, specs, tmp_path):
    store.sync_runs(specs)
    store.mark_running(specs[0].run_id)
    metrics = {
        "test_loss": 1.25,
        "rouge_l": 0.5,
        "exact_match": None,
        "final_ranks": {"a": 3},
        "train_loss_curve": [[1, 2.0]],
    }
    store.mark_finished(specs[0].run_id, status=DONE, metrics=metrics)
    csv, parquet = store.export(tmp_path / "exports")
    frame = pd.read_csv(csv)
    assert len(frame) == 4
    assert {"run_id", "label", "status", "test_loss", "rouge_l", "final_ranks"} <= set(frame)
    assert {"config.train.lr", "config.allocation.strategy", "config.data.n_train"} <= set(frame)
    assert "train_loss_curve" not in frame  # curves stay in the run folders
    assert frame.loc[0, "test_loss"] == 1.25
    assert frame.loc[0, "status"] == DONE and frame.loc[1, "status"] == PENDING
    assert pd.read_parquet(parquet).shape == frame.shape


def test_lock_is_exclusive(tmp_path):
    path = tmp_path / ".lock"
    assert not lock_is_held(path)
    with StudyLock(path):
        assert lock_is_held(path)
        with pytest.raises(UserError, match="another `adaptive-lora run`"):
            StudyLock(path).acquire(wait_s=0.2)
    assert not lock_is_held(path)


def test_the_kernel_releases_the_lock_of_a_killed_process(tmp_path):
    path = tmp_path / ".lock"
    code = (
        "import sys, time\n"
        "from adaptive_lora.study.store import StudyLock\n"
        f"StudyLock({str(path)!r}).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert lock_is_held(path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while lock_is_held(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lock_is_held(path)
        with StudyLock(path):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_rows_survive_reopening(tmp_path, specs):
    path = tmp_path / "db" / "study.db"
    with StudyStore.open(path) as first:
        first.sync_runs(specs)
        first.mark_running(specs[0].run_id)
        first.mark_finished(specs[0].run_id, status=DONE, metrics={"test_loss": 2.0})
    with StudyStore.open(Path(path), create=False) as again:
        assert again.get(specs[0].run_id).status == DONE
        assert [r.status for r in again.rows()].count(PENDING) == 3
        assert RUNNING not in [r.status for r in again.rows()]


def test_states_are_counted_done_first_and_absent_ones_left_out():
    from adaptive_lora.study.store import count_statuses

    assert count_statuses(["pending", "done", "pending", "failed"]) == "1 done, 1 failed, 2 pending"
    assert count_statuses([]) == ""
