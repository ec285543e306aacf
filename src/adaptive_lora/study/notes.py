"""Decision notes: written to the study store under the study lock, like a run's rows.

A note may name runs not yet run (`run_ids`), so the study's runs are synced into the
store first. Taking the lock means a note never writes between the runner's writes: while
a `run` works on the study, a note waits `wait_s` seconds, then is refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaptive_lora.errors import UserError
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import StudyLock, StudyStore


def record_note(
    study: Study,
    text: str,
    *,
    decision: str | None,
    rationale: str | None,
    run_ids: Sequence[str],
    wait_s: float,
) -> int:
    """Add the note to the study's store; its id."""
    if not text.strip():
        raise UserError("a note needs some text")
    lock = StudyLock(study.lock_path).acquire(
        wait_s, then="add the note when it has finished or been stopped"
    )
    try:
        with StudyStore.open(study.store_path) as store:
            store.sync_runs(study.runs)  # so that run_ids may name runs not yet run
            return store.add_note(
                text.strip(), decision=decision, rationale=rationale, run_ids=list(run_ids)
            )
    finally:
        lock.release()
