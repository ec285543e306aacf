"""`adaptive-lora restore`: put a study's store back, from its backup or its run folders.

From the backup (`study.db.backup`, refreshed by the runner after every finished run):
the store as it was then, every table whole. From the run folders (`--from-runs`): each
folder's `config.yaml`, `metrics.json` and `manifest.json` give its row back — id,
strategy, budget, seed, rate, status (done, failed with its reason), config, metrics and
manifest come back equal to what the store held; the study file gives each run's label
and place, and the runs with no finished folder come back pending. What only the store
held cannot come back from the folders (`NOT_IN_RUN_FOLDERS`).

Either way the new store is built under a temporary name and renamed into place while
the study lock is held; the file it replaces is kept beside it (`study.db.damaged-<time>`,
its WAL with it). A sound store is replaced only when asked (`force`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from adaptive_lora.config import RunConfig
from adaptive_lora.errors import UserError
from adaptive_lora.records import STATUS_DONE, STATUS_FAILED
from adaptive_lora.study.spec import build_study, read_design
from adaptive_lora.study.store import (
    DONE,
    FAILED,
    RunRow,
    StudyLock,
    StudyStore,
    backup_path,
    count_statuses,
    now_iso,
    store_damage,
)

# Said after a rebuild: what the run folders do not hold.
NOT_IN_RUN_FOLDERS = (
    "each run's earlier attempts (one attempt per finished run is recorded), the notes, "
    "the study's session history, and the labels and order of runs the study file no "
    "longer lists; run times come from each manifest's start and end (they leave out the "
    "model and data loading before a run's clock starts)"
)


@dataclass
class Restored:
    """What `restore_store` did."""

    store: Path
    source: str  # "its backup (…)" or "N run folders"
    statuses: str  # "12 done, 8 pending"
    kept: Path | None = None  # where the file it replaced now lies
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"restored {self.store} from {self.source}: {self.statuses}"]
        if self.kept is not None:
            out.append(f"the file it replaced is kept as {self.kept}")
        return out + self.notes


def restore_store(
    study_file: str | Path, *, from_runs: bool = False, force: bool = False
) -> Restored:
    """Restore the store of the study in `study_file` (see the module docstring)."""
    design, text = read_design(study_file)
    store = design.out / "study.db"
    lock = StudyLock(design.out / ".lock").acquire(then="stop it before restoring its store")
    try:
        damage = store_damage(store) if store.is_file() else None
        if store.exists() and damage is None and not force:
            with StudyStore.open(store, create=False) as sound:
                statuses = count_statuses(r.status for r in sound.rows()) or "no runs"
            raise UserError(
                f"{store} is sound ({statuses}): nothing to restore; `--force` replaces it "
                "all the same (the current file is kept beside it)"
            )
        tmp = store.with_name(f".{store.name}.restore.{os.getpid()}")
        _remove(tmp)
        try:
            if from_runs:
                restored = _rebuild(design, text, Path(study_file), tmp)
            else:
                restored = _from_backup(store, tmp)
            restored.store = store
            restored.kept = _swap(store, tmp, "damaged" if damage else "replaced")
        finally:
            _remove(tmp)
    finally:
        lock.release()
    with StudyStore.open(store, create=False) as opened:  # it reads as a store
        restored.statuses = count_statuses(r.status for r in opened.rows()) or "no runs"
        if not from_runs:
            restored.notes += _finished_since(opened.rows(), design.out / "runs", study_file)
    return restored


def _remove(tmp: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)


def _swap(store: Path, new: Path, why: str) -> Path | None:
    """Put `new` in the store's place; the file it replaces (with its WAL) is kept beside
    it under `<name>.<why>-<time>`, which is returned (None when there was none)."""
    kept = None
    if store.exists():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1, 1000):  # a second restore within the same second gets its own name
            kept = store.with_name(f"{store.name}.{why}-{stamp}" + (f"-{n}" if n > 1 else ""))
            if not kept.exists():
                break
        os.link(store, kept)
        wal = store.with_name(store.name + "-wal")
        if wal.exists():  # SQLite would replay it into the new file: it goes with the old
            os.replace(wal, kept.with_name(kept.name + "-wal"))
        store.with_name(store.name + "-shm").unlink(missing_ok=True)
    os.replace(new, store)
    fd = os.open(store.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept


def _from_backup(store: Path, tmp: Path) -> Restored:
    backup = backup_path(store)
    if not backup.is_file():
        raise UserError(
            f"no backup of {store} at {backup}: `--from-runs` rebuilds the store from the "
            "run folders"
        )
    if (damage := store_damage(backup)) is not None:
        raise UserError(
            f"the backup {backup} is damaged too ({damage}): `--from-runs` rebuilds the store "
            "from the run folders"
        )
    shutil.copyfile(backup, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    when = datetime.fromtimestamp(backup.stat().st_mtime, timezone.utc)
    return Restored(store, f"its backup of {when:%Y-%m-%d %H:%M:%S} UTC", "")


def _finished_since(rows: list[RunRow], runs_dir: Path, study_file: str | Path) -> list[str]:
    """Runs whose folder says done but whose restored row does not: they finished after
    the backup was written."""
    later = [
        row.id
        for row in rows
        if row.status != DONE and _manifest_status(runs_dir / row.id) == STATUS_DONE
    ]
    if not later:
        return []
    return [
        f"{len(later)} run(s) finished after the backup ({', '.join(later[:3])}"
        + (", ..." if len(later) > 3 else "")
        + f"): `adaptive-lora restore {study_file} --from-runs --force` takes them from their "
        "folders (and leaves out what only the store held)"
    ]


def _manifest_status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------- from the run folders


def recovered_row(folder: Path) -> RunRow | None:
    """A finished run's row, from its folder; None for a run that did not finish (no
    config, or a manifest that says running or stopped): the study lists it as pending.

    A failure outside the run's own recording (a bug caught by the executor) left only
    `traceback.txt`: such a run comes back failed only if the study lists it (its config
    is the study's), see `_rebuild`.
    """
    config_file = folder / "config.yaml"
    manifest = _read_json(folder / "manifest.json")
    if not config_file.is_file() or manifest is None:
        return None
    status = manifest.get("status")
    if status not in (STATUS_DONE, STATUS_FAILED):
        return None
    try:
        config = RunConfig.from_dict(yaml.safe_load(config_file.read_text())).to_dict()
    except (OSError, yaml.YAMLError, UserError):
        return None
    metrics = _read_json(folder / "metrics.json") or {}
    started, ended = manifest.get("started"), manifest.get("ended")
    worker = manifest.get("worker") or {}
    return RunRow(
        id=folder.name,
        position=0,  # the study's order is set after (`sync_runs`)
        label=config["allocation"]["strategy"],
        strategy=config["allocation"]["strategy"],
        budget=str(config["allocation"]["budget"]),
        seed=config["seed"],
        lr=config["train"]["lr"],
        status=DONE if status == STATUS_DONE else FAILED,
        reason=None
        if status == STATUS_DONE
        else manifest.get("error") or "failed (no reason given)",
        config=config,
        metrics=metrics,
        manifest=manifest,
        seconds=_seconds(started, ended),
        run_dir=str(Path("runs") / folder.name),
        started_at=started,
        ended_at=ended,
        attempts=1,
        pid=worker.get("pid"),
        host=worker.get("host") or manifest.get("hostname"),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _seconds(started: str | None, ended: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None


def _rebuild(design: Any, text: str, study_file: Path, tmp: Path) -> Restored:
    """A new store at `tmp` from the study's run folders and the study file."""
    runs_dir = design.out / "runs"
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    rows = [row for folder in folders if (row := recovered_row(folder)) is not None]
    crashed = {
        folder.name: _last_line(folder / "traceback.txt")
        for folder in folders
        if not (folder / "manifest.json").exists() and (folder / "traceback.txt").is_file()
    }
    # The study expanded on the recovered rows (their rates chosen, their looks judged)
    # gives the runs it lists their labels and order; a run whose only trace is the
    # executor's traceback comes back failed with its config from the study.
    study = build_study(design, rows, path=study_file, text=text)
    specs = {spec.run_id: spec for spec in study.runs}
    rows += [_crashed_row(specs[i], reason) for i, reason in crashed.items() if i in specs]
    study = build_study(design, rows, path=study_file, text=text)
    specs = {spec.run_id: spec for spec in study.runs}
    outside = [row for row in rows if row.id not in specs]
    for row in rows:
        if row.id in specs:
            row.position, row.label = specs[row.id].position, specs[row.id].label
    for position, row in enumerate(outside, len(study.runs)):
        row.position = position
    with StudyStore.open(tmp) as store:
        store.put_recovered(rows)
        store.sync_runs(study.runs)  # the runs with no finished folder: pending
        store.update_manifest(
            {
                "name": design.name,
                "spec_path": str(study_file),
                "spec_hash": study.spec_hash,
                "spec_text": text,
                "rebuilt_from_run_folders": now_iso(),
            }
        )
    notes = [f"not in the run folders, so not restored: {NOT_IN_RUN_FOLDERS}"]
    if outside:
        notes.append(
            f"{len(outside)} run folder(s) the study file no longer lists are kept, after its "
            "runs, labelled by strategy"
        )
    return Restored(tmp, f"{len(rows)} run folder(s)", "", notes=notes)


def _crashed_row(spec: Any, reason: str) -> RunRow:
    """A run the executor recorded as failed from a traceback alone (no manifest)."""
    return RunRow(
        id=spec.run_id, position=spec.position, label=spec.label, strategy=spec.strategy,
        budget=spec.budget, seed=spec.seed, lr=spec.lr, status=FAILED, reason=reason,
        config=spec.config.to_dict(), run_dir=str(Path("runs") / spec.run_id), attempts=1,
    )  # fmt: skip


def _last_line(path: Path) -> str:
    """A traceback's last line, the exception and its message (what the executor recorded)."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    if not lines:
        return "failed (no reason given)"
    kind, _, message = lines[-1].partition(": ")
    kind = kind.rsplit(".", 1)[-1]  # `errors.one_line` names the type without its module
    return f"{kind}: {message[:300]}" if message else kind
