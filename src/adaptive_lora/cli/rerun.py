"""`adaptive-lora rerun`: train a stored run again from its record and compare the numbers.

A study's store holds every run's resolved config and manifest. This command takes a
finished run's config from there (not from the study file, which may have changed),
trains it again on as many threads as the stored run had (a different thread count
changes the order of floating-point sums), and compares metric by metric. The package
source, model, data, precision, torch version and the bf16 matrix-instruction family of
both are shown side by side: only where they agree should the numbers agree exactly. Each
difference is also given in units of the study's seed-to-seed sd (the spread of that
number over the seeds of the same strategy, budget and rate), which says whether it is of
the size of the effects studied. Exit status 0 when every compared number is equal
(within `--tolerance`), 1 when one differs. The comparison is `study/rerun.py`'s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from adaptive_lora.errors import UserError
from adaptive_lora.records import STATUS_DONE
from adaptive_lora.report.environment_check import MUST_AGREE
from adaptive_lora.study.rerun import (
    compare_metrics,
    comparison_lines,
    environment_lines,
    load_stored_run,
    rerun_config,
    rerun_folder,
    stored_threads,
)
from adaptive_lora.study.spec import load_study


def cmd_rerun(args: argparse.Namespace) -> int:
    # Both take seconds to import; only this command needs them.
    import torch

    from adaptive_lora.run import execute_run

    if args.tolerance < 0:
        raise UserError(f"--tolerance must be 0 or more, got {args.tolerance:g}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    study = load_study(args.study)
    stored = load_stored_run(study.store_path, args.run)
    row = stored.row
    out = rerun_folder(args.out, study.runs_dir)
    threads = args.threads or stored_threads(row) or torch.get_num_threads()
    torch.set_num_threads(int(threads))
    config = rerun_config(row, args.precision)
    print(f"re-running {row.id} ({row.label} {row.budget} seed {row.seed} lr {row.lr:g}) "
          f"on {threads} thread(s), as stored"
          + (f", in {args.precision} (stored: {row.config['train']['precision']})"
             if args.precision else ""))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="adaptive-lora-rerun-") as scratch:
        result = execute_run(config, out or Path(scratch), run_id=row.id, quiet=not args.verbose)
    if result.status != STATUS_DONE:
        print(f"the re-run {result.status}: {result.error}")
        return 1
    print("what the numbers depend on:")
    print("\n".join(environment_lines(row.manifest, result.manifest, MUST_AGREE)))
    compared = compare_metrics(row.metrics, result.metrics, args.tolerance)
    lines, reproduced = comparison_lines(compared, stored, args.tolerance)
    print("\n".join(lines))
    return 0 if reproduced else 1


def register(subparsers) -> None:
    rerun = subparsers.add_parser(
        "rerun",
        help="train a finished run of a study again from its stored record and compare",
        description="Takes the run's config from the study store, trains it again on the "
        "stored run's thread count and compares losses, scores, parameter counts and curves.",
    )
    rerun.add_argument("study", metavar="STUDY.yaml")
    rerun.add_argument("run", metavar="RUN_ID", help="a run id (or a unique start of one)")
    rerun.add_argument(
        "--out", help="keep the re-run's folder here (default: a temporary folder, removed)"
    )
    rerun.add_argument(
        "--threads", type=int, help="torch threads (default: the stored run's worker threads)"
    )
    rerun.add_argument(
        "--tolerance", type=float, default=0.0, help="largest absolute difference called equal"
    )
    rerun.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="compute in this precision instead of the stored one (to measure how far the "
        "numbers move; equal numbers are then not expected)",
    )
    rerun.add_argument("--verbose", action="store_true", help="show the run's progress")
    rerun.set_defaults(func=cmd_rerun)
