"""`adaptive-lora note`: record a decision note in the study.

A note writes to the study store (the note, and the study's runs so that `--runs` may
name runs not yet run), so it takes the study lock like `run` does: a note while a `run`
works on the study waits `LOCK_WAIT_S`, then is refused in one line, and never writes
between the runner's writes.
"""

from __future__ import annotations

import argparse

from adaptive_lora.errors import UserError
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyLock, StudyStore

LOCK_WAIT_S = 5.0  # a `run` that is just ending or starting lets go within this


def cmd_note(args: argparse.Namespace) -> int:

    study = load_study(args.study, check_sources=False)
    if not args.text.strip():
        raise UserError("a note needs some text")
    lock = StudyLock(study.lock_path).acquire(
        LOCK_WAIT_S, then="add the note when it has finished or been stopped"
    )
    try:
        note_id = _add_note(study, args)
    finally:
        lock.release()
    print(f"note {note_id} recorded in {study.store_path}")
    return 0


def _add_note(study, args: argparse.Namespace) -> int:
    with StudyStore.open(study.store_path) as store:
        store.sync_runs(study.runs)  # so that --runs may name runs not yet run
        note_id = store.add_note(
            args.text.strip(),
            decision=args.decision,
            rationale=args.rationale,
            run_ids=args.runs or [],
        )
    return note_id


def register(subparsers) -> None:
    note = subparsers.add_parser(
        "note", help="record a decision note in the study (listed in the report)"
    )
    note.add_argument("study", metavar="STUDY.yaml")
    note.add_argument("text", help="what happened or was decided")
    note.add_argument("--decision", help="the decision, in a few words")
    note.add_argument("--rationale", help="why")
    note.add_argument("--runs", nargs="+", metavar="RUN_ID", help="runs the note is about")
    note.set_defaults(func=cmd_note)
