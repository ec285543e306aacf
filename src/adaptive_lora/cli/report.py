"""`adaptive-lora report`: report.md, table.tex, stats.json and figures for a study."""

from __future__ import annotations

import argparse

from adaptive_lora.api import write_report
from adaptive_lora.errors import UserError
from adaptive_lora.report.against import summary_line
from adaptive_lora.report.pooled import pooled_differences


def cmd_report(args: argparse.Namespace) -> int:
    try:
        files = write_report(
            args.study, args.out, allow_mixed=args.allow_mixed, against=args.against
        )
    except OSError as error:  # --out not a folder, not writable, a disk full: the user's to fix
        where = error.filename or args.out or "the report folder"
        raise UserError(f"cannot write the report to {where}: {error.strerror or error}") from None
    if args.allow_mixed and (differ := pooled_differences(files.stats_json)):
        print(f"pooled runs that differ in {', '.join(differ)} (--allow-mixed); "
              "report.md says so at its top")  # fmt: skip
    print(f"report: {files.report_md}")
    print(f"table:  {files.table_tex}")
    print(f"stats:  {files.stats_json}")
    print(f"figures: {len(files.figures)} files in {files.report_md.parent / 'figures'}")
    if files.comparison is not None:
        print(f"against {files.comparison['study']}: {summary_line(files.comparison)}")
    return 0


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write report.md, table.tex, stats.json and figures for a study",
        description="Works on a partly finished study: comparisons use the paired seeds present.",
    )
    report.add_argument("study", metavar="STUDY.yaml")
    report.add_argument("--out", metavar="DIR", help="output folder (default: <study out>/report)")
    report.add_argument(
        "--allow-mixed",
        action="store_true",
        help="pool runs from different environments (source, model, data, precision, torch, "
        "device type, bf16 matrix-instruction family); the report then says so at the top",
    )
    report.add_argument(
        "--against",
        metavar="OTHER.yaml",
        help="another study (a replication's original, say): the report sets its decisions "
        "beside this study's in the cells both ran (same data settings and budget), never "
        "pooling their runs",
    )
    report.set_defaults(func=cmd_report)
