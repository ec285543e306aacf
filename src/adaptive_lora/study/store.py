"""The study store: one SQLite database per study, resumable and crash-safe.

    out/study.db      this store (WAL journal; one transaction per state change)
    out/.lock         held (flock, exclusive) by the one `run` process working on the study
                      (and by `note` for the moment it writes)
    out/runs/<id>/    one folder per run (see `records`)
    out/results.csv   one row per run: status, every metric, every flattened config value
    out/results.parquet

Tables:

* `runs`: one row per run spec (id, strategy label, strategy, budget, seed, lr,
  status pending/running/done/failed, reason, config/metrics/manifest JSON, wall
  seconds, run folder, start/end, attempt count, pid and host of the last attempt:
  the process that runs it, a Ray worker's under `run --workers/--address`);
* `attempts`: every attempt of every run, with how it ended (done, failed,
  interrupted, error), so "every run done exactly once" can be checked;
* `manifest`: the study's own record (versions, host, git commit, spec hash, ...);
* `notes`: decision notes (date, text, decision, rationale, run ids).

Crash safety. A run goes pending → running → done/failed, each step one
transaction. A `run` process holds `out/.lock` for its whole life; the kernel
drops the lock when the process dies, even on SIGKILL. So a process that holds
the lock knows that every row still marked `running` belongs to a dead process
and resets it to pending (`reset_interrupted`): only the interrupted run is run
again, and finished rows are never touched (`mark_running` refuses them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adaptive_lora.errors import UserError
from adaptive_lora.records import NOT_EXPORTED_KEYS

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)


def count_statuses(statuses: Iterable[str]) -> str:
    """ "43 done, 24 pending": how many runs are in each state, done first."""
    counts = Counter(statuses)
    return ", ".join(f"{counts[s]} {s}" for s in (DONE, FAILED, RUNNING, PENDING) if counts[s])


SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE runs (
    id          TEXT PRIMARY KEY NOT NULL,
    position    INTEGER NOT NULL,
    label       TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    budget      TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    lr          REAL NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    reason      TEXT,
    config      TEXT NOT NULL,
    metrics     TEXT,
    manifest    TEXT,
    seconds     REAL,
    run_dir     TEXT,
    started_at  TEXT,
    ended_at    TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    pid         INTEGER,
    host        TEXT
);
CREATE TABLE attempts (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    pid         INTEGER,
    host        TEXT,
    started_at  TEXT,
    ended_at    TEXT,
    PRIMARY KEY (run_id, attempt)
);
CREATE TABLE manifest (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE TABLE notes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  TEXT NOT NULL,
    text        TEXT NOT NULL,
    decision    TEXT,
    rationale   TEXT,
    run_ids     TEXT NOT NULL
);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=True)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass
class RunRow:
    """One row of `runs`, JSON columns parsed."""

    id: str
    position: int
    label: str
    strategy: str
    budget: str
    seed: int
    lr: float
    status: str
    reason: str | None
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    run_dir: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    attempts: int = 0
    pid: int | None = None
    host: str | None = None

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> RunRow:
        values = dict(row)
        for key in ("config", "metrics", "manifest"):
            values[key] = _loads(values[key]) or {}
        return cls(**values)


@dataclass
class Note:
    id: int
    created_at: str
    text: str
    decision: str | None
    rationale: str | None
    run_ids: list[str]


class StudyStore:
    """The SQLite store of one study. Open with `StudyStore.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn
        self.path = path

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> StudyStore:
        """Open the store at `path`, creating it (schema in one transaction) if asked."""
        path = Path(path)
        exists = path.is_file()
        if not exists and not create:
            raise UserError(f"no study store at {path}: nothing has run yet")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed state change survives a power cut too, not only SIGKILL.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn, path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with store._tx():
                # Re-check inside the write lock: another process may have just created it.
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            conn.close()
            raise UserError(
                f"{path} has store schema version {version}; this tool reads version "
                f"{SCHEMA_VERSION}"
            )
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it or none of it."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ manifest

    def manifest(self) -> dict[str, Any]:
        rows = self._conn.execute("SELECT key, value FROM manifest").fetchall()
        return {row["key"]: _loads(row["value"]) for row in rows}

    def update_manifest(self, values: dict[str, Any]) -> None:
        with self._tx() as conn:
            for key, value in values.items():
                conn.execute(
                    "INSERT INTO manifest (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, _dumps(value)),
                )

    # ------------------------------------------------------------------ runs

    def sync_runs(self, specs: Sequence[Any]) -> int:
        """Insert the specs not yet stored as pending; refresh labels and order of the rest.

        `specs` are `study.RunSpec`s (id, label, strategy, budget, seed, lr, config,
        position). Returns how many rows were inserted. Status, metrics and attempts of
        existing rows are never touched here.
        """
        inserted = 0
        with self._tx() as conn:
            for spec in specs:
                cursor = conn.execute(
                    "UPDATE runs SET label = ?, position = ? WHERE id = ?",
                    (spec.label, spec.position, spec.run_id),
                )
                if cursor.rowcount == 0:
                    conn.execute(
                        "INSERT INTO runs (id, position, label, strategy, budget, seed, lr, "
                        "status, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            spec.run_id,
                            spec.position,
                            spec.label,
                            spec.strategy,
                            spec.budget,
                            spec.seed,
                            spec.lr,
                            PENDING,
                            _dumps(spec.config.to_dict()),
                        ),
                    )
                    inserted += 1
        return inserted

    def rows(self, ids: Iterable[str] | None = None) -> list[RunRow]:
        """Rows in run order; only `ids` (in run order) when given."""
        rows = [
            RunRow.from_sql(r)
            for r in self._conn.execute("SELECT * FROM runs ORDER BY position, id").fetchall()
        ]
        if ids is None:
            return rows
        wanted = set(ids)
        return [r for r in rows if r.id in wanted]

    def get(self, run_id: str) -> RunRow | None:
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else RunRow.from_sql(row)

    def attempts(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM attempts"
        args: tuple = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            args = (run_id,)
        return [dict(r) for r in self._conn.execute(query + " ORDER BY run_id, attempt", args)]

    def delete_runs(self, ids: Sequence[str]) -> int:
        """Remove these runs and their attempts, in one transaction; how many were removed."""
        with self._tx() as conn:
            removed = 0
            for run_id in ids:
                conn.execute("DELETE FROM attempts WHERE run_id = ?", (run_id,))
                removed += conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount
        return removed

    def reset_interrupted(self) -> list[str]:
        """Every `running` row → pending (call only while holding the study lock).

        The lock proves that no live process runs them: they were interrupted.
        """
        with self._tx() as conn:
            ids = [
                r["id"] for r in conn.execute("SELECT id FROM runs WHERE status = ?", (RUNNING,))
            ]
            for run_id in ids:
                self._end_attempt(conn, run_id, "interrupted", "process ended mid-run")
                conn.execute(
                    "UPDATE runs SET status = ?, reason = ?, pid = NULL WHERE id = ?",
                    (PENDING, "interrupted (process ended mid-run); will re-run", run_id),
                )
        return ids

    def reset_failed(self, ids: Iterable[str] | None = None) -> list[str]:
        """Failed rows (of `ids`, when given) → pending, for `--retry-failed`."""
        wanted = None if ids is None else set(ids)
        with self._tx() as conn:
            failed = [
                r["id"] for r in conn.execute("SELECT id FROM runs WHERE status = ?", (FAILED,))
            ]
            chosen = [i for i in failed if wanted is None or i in wanted]
            for run_id in chosen:
                conn.execute(
                    "UPDATE runs SET status = ?, reason = ? WHERE id = ?",
                    (PENDING, "retrying after failure", run_id),
                )
        return chosen

    def mark_running(
        self,
        run_id: str,
        *,
        run_dir: str | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        """pending → running, one more attempt. Refuses any other starting state.

        `host` and `pid` say where the run runs (a Ray worker's); default: this process.
        """
        pid = os.getpid() if pid is None else pid
        host, started = host or socket.gethostname(), now_iso()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT status, attempts FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None or row["status"] != PENDING:
                state = "missing" if row is None else row["status"]
                raise RuntimeError(f"run {run_id} cannot start: it is {state}, not pending")
            attempt = row["attempts"] + 1
            conn.execute(
                "UPDATE runs SET status = ?, reason = NULL, attempts = ?, pid = ?, host = ?, "
                "started_at = ?, ended_at = NULL, seconds = NULL, metrics = NULL, "
                "manifest = NULL, run_dir = ? WHERE id = ?",
                (RUNNING, attempt, pid, host, started, run_dir, run_id),
            )
            conn.execute(
                "INSERT INTO attempts (run_id, attempt, status, pid, host, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, attempt, RUNNING, pid, host, started),
            )

    def move_running(self, run_id: str, *, host: str, pid: int | None) -> None:
        """A running run moved to another worker (a retry): record where it runs now."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET host = ?, pid = ? WHERE id = ? AND status = ?",
                (host, pid, run_id, RUNNING),
            )
            conn.execute(
                "UPDATE attempts SET host = ?, pid = ? WHERE run_id = ? AND "
                "attempt = (SELECT attempts FROM runs WHERE id = ?)",
                (host, pid, run_id, run_id),
            )

    def mark_finished(
        self,
        run_id: str,
        *,
        status: str,
        metrics: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
        reason: str | None = None,
        seconds: float | None = None,
        run_dir: str | None = None,
    ) -> None:
        """running → done or failed, with everything the run returned."""
        if status not in (DONE, FAILED):
            raise ValueError(f"a run finishes as done or failed, not {status!r}")
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] != RUNNING:
                state = "missing" if row is None else row["status"]
                raise RuntimeError(f"run {run_id} cannot finish: it is {state}, not running")
            self._end_attempt(conn, run_id, status, reason)
            conn.execute(
                "UPDATE runs SET status = ?, reason = ?, metrics = ?, manifest = ?, "
                "seconds = ?, ended_at = ?, run_dir = COALESCE(?, run_dir) WHERE id = ?",
                (
                    status,
                    reason,
                    _dumps(metrics or {}),
                    _dumps(manifest or {}),
                    seconds,
                    now_iso(),
                    run_dir,
                    run_id,
                ),
            )

    def mark_pending(self, run_id: str, reason: str, *, ended_as: str = "error") -> None:
        """running → pending: this process stopped it (Ctrl-C, a user error) before its end,
        or (`ended_as="interrupted"`) an executor lost it when its worker died."""
        with self._tx() as conn:
            self._end_attempt(conn, run_id, ended_as, reason)
            conn.execute(
                "UPDATE runs SET status = ?, reason = ?, pid = NULL WHERE id = ? AND status = ?",
                (PENDING, reason, run_id, RUNNING),
            )

    @staticmethod
    def _end_attempt(conn: sqlite3.Connection, run_id: str, status: str, reason: str | None):
        conn.execute(
            "UPDATE attempts SET status = ?, reason = ?, ended_at = ? WHERE run_id = ? AND "
            "attempt = (SELECT attempts FROM runs WHERE id = ?)",
            (status, reason, now_iso(), run_id, run_id),
        )

    # ------------------------------------------------------------------ notes

    def add_note(
        self,
        text: str,
        *,
        decision: str | None = None,
        rationale: str | None = None,
        run_ids: Sequence[str] = (),
    ) -> int:
        """Record a decision note; every run id must be a stored run."""
        known = {r["id"] for r in self._conn.execute("SELECT id FROM runs")}
        unknown = [i for i in run_ids if i not in known]
        if unknown:
            raise UserError(
                f"unknown run id(s) {', '.join(unknown)}; `adaptive-lora status` lists the runs"
            )
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT INTO notes (created_at, text, decision, rationale, run_ids) "
                "VALUES (?, ?, ?, ?, ?)",
                (now_iso(), text, decision, rationale, json.dumps(list(run_ids))),
            )
        return int(cursor.lastrowid)

    def notes(self) -> list[Note]:
        return [
            Note(
                r["id"],
                r["created_at"],
                r["text"],
                r["decision"],
                r["rationale"],
                json.loads(r["run_ids"]),
            )
            for r in self._conn.execute("SELECT * FROM notes ORDER BY id")
        ]

    # ------------------------------------------------------------------ export

    def export(self, out_dir: str | Path, ids: Sequence[str] | None = None) -> list[Path]:
        """Write results.csv and results.parquet (one row per run) into `out_dir`."""
        return export_results(self.rows(ids), out_dir)


# ---------------------------------------------------------------------- exports


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value, default=str)
    else:
        out[prefix] = value


def result_records(rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """One flat dict per run: identity, status, every metric, `config.*` values."""
    records = []
    for row in rows:
        record: dict[str, Any] = {
            "run_id": row.id,
            "label": row.label,
            "strategy": row.strategy,
            "budget": row.budget,
            "seed": row.seed,
            "lr": row.lr,
            "status": row.status,
            "reason": row.reason,
            "attempts": row.attempts,
            "seconds": row.seconds,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "run_dir": row.run_dir,
        }
        for key, value in row.metrics.items():
            if key in NOT_EXPORTED_KEYS:
                continue  # curves and per-module ranks stay in the store and metrics.json
            if isinstance(value, (dict, list, tuple)):
                record[key] = json.dumps(value, default=str)
            elif isinstance(value, float) and not math.isfinite(value):
                record[key] = None if math.isnan(value) else value
            else:
                record[key] = value
        _flatten("config", row.config, record)
        records.append(record)
    return records


def export_results(rows: Sequence[RunRow], out_dir: str | Path) -> list[Path]:
    """results.csv and results.parquet, each written atomically."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(result_records(rows))
    for column in frame.columns:
        if frame[column].dtype == object:
            kinds = {type(v) for v in frame[column] if v is not None and v == v}
            if len(kinds) > 1:  # parquet needs one type per column
                frame[column] = [None if v is None else str(v) for v in frame[column]]
    paths = [out_dir / "results.csv", out_dir / "results.parquet"]
    tmp_csv = paths[0].with_name(".results.csv.tmp")
    tmp_parquet = paths[1].with_name(".results.parquet.tmp")
    frame.to_csv(tmp_csv, index=False)
    frame.to_parquet(tmp_parquet, index=False)
    tmp_csv.replace(paths[0])
    tmp_parquet.replace(paths[1])
    return paths


# ---------------------------------------------------------------------- the lock


class StudyLock:
    """An exclusive `flock` on `out/.lock`: one `run` process per study at a time.

    The kernel releases it when the holder dies (SIGKILL included), which is what
    lets the next `run` treat leftover `running` rows as interrupted.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(
        self, wait_s: float = 2.0, then: str = "wait for it to finish or stop it first"
    ) -> StudyLock:
        """Take the lock within `wait_s`, else a one-line `UserError` naming the holder and
        what to do `then` (a `note` takes it too, to never write while a `run` does)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A `status` probe holds a shared lock for a moment; a `run` holds it for good.
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise UserError(
                        f"another `adaptive-lora run` is working on this study ({holder}); " + then
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
    except OSError:
        return "unknown process"


def lock_is_held(path: str | Path) -> bool:
    """Is a `run` process holding the study lock right now? (A probe; takes no lock.)"""
    path = Path(path)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
