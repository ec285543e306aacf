"""`adaptive-lora prune`: drop stored runs the study file no longer lists (after asking)."""

from __future__ import annotations

import argparse
import sys

from adaptive_lora.study.prune import prune
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import RunRow

LOCK_WAIT_S = 5.0


def _ask(rows: list[RunRow]) -> bool:
    print(f"{len(rows)} stored run(s) are no longer in the study file:")
    for row in rows[:20]:
        print(f"  {row.id} ({row.status})")
    if len(rows) > 20:
        print(f"  ... and {len(rows) - 20} more")
    if not sys.stdin.isatty():
        print("not removed: confirm with --yes (no terminal to ask)")
        return False
    return input("remove them from the store? [y/N] ").strip().lower() in ("y", "yes")


def cmd_prune(args: argparse.Namespace) -> int:
    study = load_study(args.study, check_sources=False)
    confirm = (lambda rows: True) if args.yes else _ask
    for line in prune(study, confirm=confirm, wait_s=LOCK_WAIT_S):
        print(line)
    return 0


def register(subparsers) -> None:
    command = subparsers.add_parser(
        "prune",
        help="remove stored runs the study file no longer lists (asks first)",
        description="Remove from the study's store the runs its file no longer lists (an "
        "edited or narrowed design), after confirmation. Runs a decision note names are "
        "kept; run folders stay on disk. Reports already leave such runs out of every "
        "number: prune only what is clutter.",
    )
    command.add_argument("study", metavar="STUDY.yaml")
    command.add_argument("--yes", action="store_true", help="remove without asking")
    command.set_defaults(func=cmd_prune)
