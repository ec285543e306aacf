"""`adaptive-lora note`: record a decision note in the study.

A note writes to the study store (the note, and the study's runs so that `--runs` may
name runs not yet run), so it takes the study lock like `run` does: a note while a `run`
works on the study waits `LOCK_WAIT_S`, then is refused in one line, and never writes
between the runner's writes.
"""

from __future__ import annotations

import argparse

from adaptive_lora.study.notes import record_note
from adaptive_lora.study.spec import load_study

LOCK_WAIT_S = 5.0  # a `run` that is just ending or starting lets go within this


def cmd_note(args: argparse.Namespace) -> int:
    study = load_study(args.study, check_sources=False)
    note_id = record_note(
        study,
        args.text,
        decision=args.decision,
        rationale=args.rationale,
        run_ids=args.runs or [],
        wait_s=LOCK_WAIT_S,
    )
    print(f"note {note_id} recorded in {study.store_path}")
    return 0


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
