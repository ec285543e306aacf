"""Dropping stored runs that the study file no longer lists.

A study file narrowed or edited after some runs leaves their rows in the store: reports
count them and leave them out of every number (the published map keeps such rows on
purpose), and `status` lists them. When they are only clutter — a design changed before
any result mattered — `adaptive-lora prune` removes them after the user confirms, under
the study lock like every write. Runs that a decision note names are kept (the note
would point at nothing), and run folders are left on disk.
"""

from __future__ import annotations

from collections.abc import Callable

from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import RunRow, StudyLock, StudyStore


def stale_rows(study: Study, store: StudyStore) -> tuple[list[RunRow], list[RunRow]]:
    """(rows the file no longer lists that may go, those a decision note names)."""
    listed = set(study.run_ids)
    named = {run_id for note in store.notes() for run_id in note.run_ids}
    stale = [row for row in store.rows() if row.id not in listed]
    return [r for r in stale if r.id not in named], [r for r in stale if r.id in named]


def prune(study: Study, *, confirm: Callable[[list[RunRow]], bool], wait_s: float) -> list[str]:
    """Remove the stale rows `confirm(rows)` agrees to remove; the lines to print."""
    if not study.store_path.is_file():
        return [f"no study store at {study.store_path}: nothing to prune"]
    lock = StudyLock(study.lock_path).acquire(wait_s, then="prune when it has finished")
    try:
        with StudyStore.open(study.store_path, create=False) as store:
            stale, named = stale_rows(study, store)
            kept = [f"kept {len(named)} run(s) that a decision note names"] if named else []
            if not stale:
                return ["every stored run is in the study file: nothing to prune", *kept]
            if not confirm(stale):
                return ["nothing removed", *kept]
            removed = store.delete_runs([row.id for row in stale])
    finally:
        lock.release()
    return [f"removed {removed} stored run(s) from {study.store_path} (run folders kept)", *kept]
