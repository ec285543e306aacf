"""`adaptive-lora restore`: put a damaged or lost study store back (backup or run folders)."""

from __future__ import annotations

import argparse

from adaptive_lora.study.restore import restore_store


def cmd_restore(args: argparse.Namespace) -> int:
    restored = restore_store(args.study, from_runs=args.from_runs, force=args.force)
    for line in restored.lines():
        print(line)
    return 0


def register(subparsers) -> None:
    restore = subparsers.add_parser(
        "restore",
        help="restore a study's store from its backup, or rebuild it from the run folders",
        description="Restore STUDY.yaml's store (study.db) from the backup the runner keeps "
        "beside it (study.db.backup, refreshed after every finished run), or with "
        "--from-runs rebuild it from the run folders (each run's config, metrics and "
        "manifest). The file it replaces is kept beside it. A sound store is left alone "
        "unless --force.",
    )
    restore.add_argument("study", metavar="STUDY.yaml")
    restore.add_argument(
        "--from-runs",
        action="store_true",
        help="rebuild from the run folders (runs/<id>/) instead of the backup; attempt "
        "history and notes, which only the store holds, are not recovered",
    )
    restore.add_argument(
        "--force", action="store_true", help="replace the store even though it reads as sound"
    )
    restore.set_defaults(func=cmd_restore)
