"""`adaptive-lora report`: report.md, table.tex, stats.json and figures for a study."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptive_lora.errors import UserError
from adaptive_lora.report.write import write_report
from adaptive_lora.study.plan import open_store_if_any
from adaptive_lora.study.spec import load_study


def cmd_report(args: argparse.Namespace) -> int:

    study = load_study(args.study, check_sources=False)
    store = open_store_if_any(study)
    if store is None:
        raise UserError(
            f"study {study.name} has no store at {study.store_path} yet: "
            f"run `adaptive-lora run {args.study}` first"
        )
    out = Path(args.out) if args.out else study.out / "report"
    with store:
        files = write_report(study, store, out)
    print(f"report: {files.report_md}")
    print(f"table:  {files.table_tex}")
    print(f"stats:  {files.stats_json}")
    print(f"figures: {len(files.figures)} files in {out / 'figures'}")
    return 0


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write report.md, table.tex, stats.json and figures for a study",
        description="Works on a partly finished study: comparisons use the paired seeds present.",
    )
    report.add_argument("study", metavar="STUDY.yaml")
    report.add_argument("--out", metavar="DIR", help="output folder (default: <study out>/report)")
    report.set_defaults(func=cmd_report)
