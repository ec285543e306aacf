"""`adaptive-lora status`: which runs of a study are done, running, failed or pending."""

from __future__ import annotations

import argparse

from adaptive_lora.study.machine_check import can_resume_here_line
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.status import format_status


def cmd_status(args: argparse.Namespace) -> int:
    # Status, reports and notes read the store only: a moved data file must not block them.
    study = load_study(args.study, check_sources=False)
    print(format_status(study))
    if line := can_resume_here_line(study):  # before a session tries to resume the study here
        print(line)
    return 0


def register(subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="which runs of a study are done, running, failed or pending"
    )
    status.add_argument("study", metavar="STUDY.yaml")
    status.set_defaults(func=cmd_status)
