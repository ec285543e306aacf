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

Damage. A store that exists is opened only once it reads as one (`store_damage`): an
empty, truncated or foreign file (not SQLite, or SQLite without these tables), a page
SQLite's quick check rejects, or a row whose JSON does not decode is refused in one line
(`DamagedStore`) that names the file and the command that restores it; the file is read
only, never replaced. Only a missing store is created (by `run`, or a `note`), built under
a temporary name and linked into place, so no reader ever sees it half made.

Backup. `backup()` copies the store with SQLite's online backup API to
`out/study.db.backup` (a temporary name, then a rename: the backup is always whole); the
runner calls it after every finished run. `study/restore.py` puts it back, or rebuilds
the store from the run folders.

Crash safety. A run goes pending → running → done/failed, each step one
transaction. A `run` process holds `out/.lock` for its whole life; the kernel
drops the lock when the process dies, even on SIGKILL. So a process that holds
the lock knows that every row still marked `running` belongs to a dead process
and resets it to pending (`reset_interrupted`): only the interrupted run is run
again, and finished rows are never touched (`mark_running` refuses them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import secrets
import shlex
import socket
import sqlite3
import tempfile
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


# ---------------------------------------------------------------------- damage

SQLITE_MAGIC = b"SQLite format 3\x00"
TABLES = ("runs", "attempts", "manifest", "notes")
JSON_COLUMNS = ("config", "metrics", "manifest")


def backup_path(path: str | Path) -> Path:
    """Where the runner keeps the backup of the store at `path`: `study.db.backup` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".backup")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


class DamagedStore(UserError):
    """A store file that exists but does not read as a study store: refused, left as it is.

    The one-line message names the file, what is wrong, and how to get the store back:
    from its backup, from the run folders, or (neither beside it) from a copy.
    """

    def __init__(self, path: str | Path, what: str, study_file: str | Path | None = None):
        self.path, self.what = Path(path), what
        self.study_file = None if study_file is None else str(study_file)
        super().__init__(self._message())

    def for_study(self, study_file: str | Path) -> DamagedStore:
        """The same refusal, its command naming the study file."""
        return DamagedStore(self.path, self.what, study_file)

    def _message(self) -> str:
        restore = f"adaptive-lora restore {shlex.quote(self.study_file or 'STUDY.yaml')}"
        backup = backup_path(self.path)
        runs = self.path.parent / "runs"
        if backup.is_file():
            when = datetime.fromtimestamp(backup.stat().st_mtime, timezone.utc)
            fix = (
                f"restore it from its backup ({backup.name}, {when:%Y-%m-%d %H:%M} UTC) "
                f"with `{restore}`"
            )
        elif runs.is_dir() and any(p.is_dir() for p in runs.iterdir()):
            fix = f"it has no backup; rebuild it from the run folders with `{restore} --from-runs`"
        else:
            fix = (
                "it has no backup and no run folders beside it: put back a copy "
                f"(of a committed study: `git checkout -- {self.path}`)"
            )
        return f"{self.path} is damaged ({self.what}); it was left as it is: {fix}"


def _file_damage(path: Path) -> str | None:
    """What the file's bytes say is wrong before SQLite reads it (None: nothing)."""
    size = path.stat().st_size
    if size == 0:
        return "empty: 0 bytes"
    with open(path, "rb") as handle:
        header = handle.read(100)
    if not header.startswith(SQLITE_MAGIC):
        return "not an SQLite database: it lacks SQLite's header"
    if len(header) < 100:
        return f"truncated: {size} bytes, less than an SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"not a valid SQLite header: page size {page_size}"
    if size % page_size:
        return f"truncated: {size:,} bytes is not a whole number of {page_size:,}-byte pages"
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96]  # the header's page count is current
    # With frames in the WAL the file may lag its header while a checkpoint writes it.
    wal = _wal(path)
    busy = wal.exists() and wal.stat().st_size > 0
    if counted and not busy and size < pages * page_size:
        return f"truncated: {size // page_size:,} of its {pages:,} pages"
    return None


def _undecodable(conn: sqlite3.Connection) -> list[str]:
    """Where the stored JSON does not decode: `run <id> (<columns>)`, manifest keys, notes."""
    bad = []
    columns = ", ".join(JSON_COLUMNS)
    for row in conn.execute(f"SELECT id, {columns} FROM runs ORDER BY position, id"):
        broken = [name for name, text in zip(JSON_COLUMNS, row[1:]) if not _decodes(text)]
        if broken:
            bad.append(f"run {row[0]} ({', '.join(broken)})")
    for key, value in conn.execute("SELECT key, value FROM manifest ORDER BY key"):
        if not _decodes(value):
            bad.append(f"manifest key {key}")
    for note_id, run_ids in conn.execute("SELECT id, run_ids FROM notes ORDER BY id"):
        if not _decodes(run_ids):
            bad.append(f"note {note_id}")
    return bad


def _decodes(text: Any) -> bool:
    if text is None:
        return True
    try:
        json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _named(items: list[str], most: int = 5) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _content_damage(path: Path) -> str | None:
    """What SQLite finds wrong, read without writing a byte (None: nothing)."""
    # No WAL beside it: nothing else has the store open, so it is read as it lies
    # (`immutable`: no lock, no -shm or -wal file made). Else read-only, through the WAL.
    wal = _wal(path)
    mode = "mode=ro" if wal.exists() and wal.stat().st_size > 0 else "immutable=1"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=30.0)
    except sqlite3.Error as error:
        return f"SQLite cannot open it: {error}"
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in TABLES if t not in tables]
        if missing:
            what = "an SQLite database" if tables else "an SQLite database with no tables"
            return f"{what} without the study's table(s) {', '.join(missing)}: not a study store"
        check = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        if check != ["ok"]:
            return f"SQLite's quick_check fails: {check[0][:200]}"
        bad = _undecodable(conn)
        if bad:
            return f"stored JSON that does not decode: {_named(bad)}"
    except sqlite3.Error as error:
        return f"SQLite cannot read it: {str(error).splitlines()[0][:200]}"
    finally:
        conn.close()
    return None


# (resolved path, the file's and its WAL's inode, size and mtime) of the stores found sound
# in this process: one opened again unchanged (status, a report) is not read twice.
_SOUND: set[tuple] = set()


def _stamp(path: Path) -> tuple:
    def of(p: Path) -> tuple:
        try:
            st = p.stat()
        except FileNotFoundError:
            return (None, None, None)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    return (str(path.resolve()), of(path), of(_wal(path)))


def store_damage(path: str | Path) -> str | None:
    """What is wrong with the existing file at `path` as a study store; None if it reads as
    one. Reads only: the file, its WAL and everything beside it are left as they are."""
    path = Path(path)
    stamp = _stamp(path)
    if stamp in _SOUND:
        return None
    what = _file_damage(path)
    for _ in range(2):  # a concurrent checkpoint may be growing the file: look again
        if what is None or not what.startswith("truncated"):
            break
        time.sleep(0.2)
        what = _file_damage(path)
    what = what or _content_damage(path)
    if what is None:
        _SOUND.add(stamp)
    return what


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
    def from_sql(cls, row: sqlite3.Row, path: Path | None = None) -> RunRow:
        values = dict(row)
        broken = []
        for key in JSON_COLUMNS:
            try:
                values[key] = _loads(values[key]) or {}
            except (ValueError, TypeError, RecursionError):
                broken.append(key)
        if broken:  # damaged since the store was opened
            raise DamagedStore(
                path or Path("study.db"),
                f"stored JSON that does not decode: run {values['id']} ({', '.join(broken)})",
            )
        return cls(**values)


@dataclass
class Note:
    id: int
    created_at: str
    text: str
    decision: str | None
    rationale: str | None
    run_ids: list[str]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed state change survives a power cut too, not only SIGKILL.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    """A new, empty store at `path`: built under a temporary name, then linked into place,
    so a store file is never seen empty or half made. Another process that created it
    first wins; theirs is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new.{os.getpid()}.{secrets.token_hex(4)}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode by umask
    try:
        conn = _connect(tmp)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        finally:
            conn.close()  # the last connection: the WAL is checkpointed into the file
        try:
            os.link(tmp, path)  # never replaces: a store that appeared meanwhile is kept
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.rename(tmp, path)
        _fsync(path.parent)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)


class StudyStore:
    """The SQLite store of one study. Open with `StudyStore.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn
        self.path = path

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> StudyStore:
        """Open the store at `path`; a missing one is created if asked (else a one-line
        "nothing has run yet"). A file that exists but is not a sound store is refused
        (`DamagedStore`), read only: it is never replaced."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise UserError(f"no study store at {path}: nothing has run yet")
            _create(path)
        elif not path.is_file():
            raise UserError(f"{path} is not a file; a study store is the file study.db")
        else:
            what = store_damage(path)
            if what is not None:
                raise DamagedStore(path, what)
        conn = _connect(path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            conn.close()
            raise UserError(
                f"{path} has store schema version {version}; this tool reads version "
                f"{SCHEMA_VERSION}"
            )
        return cls(conn, path)

    def backup(self) -> Path:
        """A consistent copy of the store (SQLite's online backup API) at `backup_path`,
        written under a temporary name and renamed: a backup on disk is always whole.
        A copy that fails SQLite's quick check leaves the previous backup in place."""
        target = backup_path(self.path)
        handle, name = tempfile.mkstemp(prefix="." + target.name + ".", dir=target.parent)
        os.close(handle)
        tmp = Path(name)
        try:
            copy = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._conn.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                check = [r[0] for r in copy.execute("PRAGMA quick_check(1)")]
            finally:
                copy.close()
            if check != ["ok"]:
                raise sqlite3.DatabaseError(f"the backup copy fails quick_check: {check[0]}")
            os.chmod(tmp, self.path.stat().st_mode & 0o777)
            _fsync(tmp)
            os.replace(tmp, target)
            _fsync(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

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
            RunRow.from_sql(r, self.path)
            for r in self._conn.execute("SELECT * FROM runs ORDER BY position, id").fetchall()
        ]
        if ids is None:
            return rows
        wanted = set(ids)
        return [r for r in rows if r.id in wanted]

    def get(self, run_id: str) -> RunRow | None:
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else RunRow.from_sql(row, self.path)

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

    def put_recovered(self, rows: Sequence[RunRow]) -> None:
        """Insert rows rebuilt from run folders (`study/restore.py`), each finished one with
        its one known attempt, in one transaction; ids already stored are refused."""
        columns = [f.name for f in dataclasses.fields(RunRow)]
        with self._tx() as conn:
            for row in rows:
                values = {name: getattr(row, name) for name in columns}
                for key in JSON_COLUMNS:
                    values[key] = _dumps(values[key])
                conn.execute(
                    f"INSERT INTO runs ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})",
                    [values[name] for name in columns],
                )
                if row.attempts:
                    conn.execute(
                        "INSERT INTO attempts (run_id, attempt, status, reason, pid, host, "
                        "started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (row.id, row.attempts, row.status, row.reason, row.pid, row.host,
                         row.started_at, row.ended_at),
                    )  # fmt: skip

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
