"""`adaptive-lora run`: run a study's pending runs (resumable), or `--dry-run` them."""

from __future__ import annotations

import argparse

from adaptive_lora.cli.common import stopping_on_signals
from adaptive_lora.errors import UserError
from adaptive_lora.study.machine_check import can_resume_here_line, check_machine
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.status import design_warning_lines, format_dry_run

RAY_ONLY = ("threads_per_run", "gpus_per_run", "memory_gb", "max_retries")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study's pending runs: in this process, or on Ray with --workers/--address."""

    study = load_study(args.study)
    only = study.groups_named(args.only) if args.only else None
    if args.dry_run:
        print(
            format_dry_run(
                study, retry_failed=args.retry_failed, at_once=args.workers or 1, only=only
            )
        )
        if args.address is None and (
            line := can_resume_here_line(
                study, retry_failed=args.retry_failed, allow_mixed=args.allow_mixed
            )
        ):
            print(line)
        return 0
    # Before any run starts: bf16 runs on another CPU family than the stored ones would not
    # pool. On a cluster (--address) the workers' machines are not known here.
    if args.address is None:
        if warning := check_machine(
            study, retry_failed=args.retry_failed, allow_mixed=args.allow_mixed
        ):
            print(warning)
    for line in design_warning_lines(study):
        print(line)
    if args.workers is None and args.address is None:
        if any(getattr(args, name) is not None for name in RAY_ONLY):
            flags = ", ".join("--" + name.replace("_", "-") for name in RAY_ONLY)
            raise UserError(f"{flags} need --workers N or --address ADDR")
        # Failed runs are part of a study's record, not an error of the command.
        with stopping_on_signals():
            run_study(study, retry_failed=args.retry_failed, quiet=args.quiet, log=_say, only=only)
        return 0
    _run_on_ray(study, args, only)
    return 0


def _run_on_ray(study, args: argparse.Namespace, only: set[str] | None) -> None:
    """The study's pending runs on a local Ray (--workers) or a cluster (--address)."""
    # Imported here only: Ray takes 1-2 s to import, which the in-process default must not pay.
    from adaptive_lora.study.ray_executor import RayExecutor, Resources

    executor = RayExecutor(
        workers=args.workers,
        address=args.address,
        resources=Resources.merge(
            study.resources,
            threads_per_run=args.threads_per_run,
            gpus_per_run=args.gpus_per_run,
            memory_gb=args.memory_gb,
        ),
        max_retries=1 if args.max_retries is None else args.max_retries,
    )
    try:
        executor.connect()  # an unreachable cluster or impossible resources: before the store
        with stopping_on_signals():  # after connecting: ray.init sets a SIGTERM handler of its own
            run_study(
                study,
                executor=executor,
                retry_failed=args.retry_failed,
                quiet=args.quiet,
                log=_say,
                only=only,
            )
    finally:
        executor.close()  # ends the workers too: Ray kills the actors of a driver that leaves


def _say(line: str) -> None:
    """A progress line, out at once: a study's log is usually a file someone tails."""
    print(line, flush=True)


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a study's pending runs (resumable; done runs are skipped)",
        description="Expand STUDY.yaml into runs and run the pending ones in order. "
        "Safe to stop and restart at any time: finished runs are kept, an interrupted "
        "run is run again. Paths in the study are relative to the current folder.",
    )
    run.add_argument("study", metavar="STUDY.yaml")
    run.add_argument(
        "--dry-run", action="store_true", help="list what would run and a time estimate"
    )
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    run.add_argument(
        "--only",
        action="append",
        metavar="FACTOR=LEVEL",
        help="run only the groups with this model, task or n_train (repeatable: levels of "
        "one factor are alternatives, different factors must all hold); the other groups' "
        "runs stay pending for a later `run`",
    )
    run.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    run.add_argument(
        "--allow-mixed",
        action="store_true",
        help="go on although this machine's bf16 matrix-instruction family (AMX-bf16, "
        "AVX512-bf16, ...) differs from the stored runs' (their numbers will not pool)",
    )
    ray = run.add_argument_group(
        "parallel runs on Ray (default: one run at a time in this process)",
        "Per-run resources also come from the study's `resources:` key; flags win.",
    )
    ray.add_argument(
        "--workers", type=int, metavar="N", help="run N runs at once on a local Ray (127.0.0.1)"
    )
    ray.add_argument(
        "--address", metavar="ADDR", help="run on the Ray cluster at HOST:PORT (or `auto`)"
    )
    ray.add_argument(
        "--threads-per-run", type=int, metavar="T", help="CPU threads per run (cores / workers)"
    )
    ray.add_argument(
        "--gpus-per-run", type=float, metavar="G", help="GPUs per run, e.g. 0.25 (default 0)"
    )
    ray.add_argument("--memory-gb", type=float, metavar="GB", help="memory reserved per run")
    ray.add_argument(
        "--max-retries",
        type=int,
        metavar="K",
        help="re-run a run whose worker died up to K times (default 1), else leave it pending",
    )
    run.set_defaults(func=cmd_run)
