"""The study subcommands of `adaptive-lora`: run, status, report, note.

`cli.py` adds them with `register_cli(subparsers)`. Each reads top to bottom:
load and validate the study → open its store → act → print. `python -m
adaptive_lora.study_cli ...` runs them on their own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from adaptive_lora.errors import UserError

MARKS = {
    "done": "✓",
    "running": "▶",
    "interrupted": "!",
    "failed": "✗",
    "pending": "·",
}
LEGEND = "✓ done  ▶ running  ! interrupted (its process is gone)  ✗ failed  · pending"


def cmd_run(args: argparse.Namespace) -> int:
    from adaptive_lora.study import load_study, run_study

    study = load_study(args.study)
    if args.dry_run:
        print(format_dry_run(study, retry_failed=args.retry_failed))
        return 0
    # Failed runs are part of a study's record, not an error of the command.
    run_study(study, retry_failed=args.retry_failed, quiet=args.quiet)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from adaptive_lora.study import load_study

    # Status, reports and notes read the store only: a moved data file must not block them.
    print(format_status(load_study(args.study, check_sources=False)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from adaptive_lora.report import write_report
    from adaptive_lora.study import load_study, open_store_if_any

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


def cmd_note(args: argparse.Namespace) -> int:
    from adaptive_lora.store import StudyStore
    from adaptive_lora.study import load_study

    study = load_study(args.study, check_sources=False)
    if not args.text.strip():
        raise UserError("a note needs some text")
    with StudyStore.open(study.store_path) as store:
        store.sync_runs(study.runs)  # so that --runs may name runs not yet run
        note_id = store.add_note(
            args.text.strip(),
            decision=args.decision,
            rationale=args.rationale,
            run_ids=args.runs or [],
        )
    print(f"note {note_id} recorded in {study.store_path}")
    return 0


# ---------------------------------------------------------------------- formatting


def _mark(row, lock_held: bool) -> str:
    if row is None:
        return "pending"
    if row.status == "running" and not lock_held:
        return "interrupted"
    return row.status


def format_status(study) -> str:
    """strategy × budget rows, seed columns, counts and the remaining-time estimate."""
    from adaptive_lora.store import lock_is_held
    from adaptive_lora.study import current_rows, estimate, open_store_if_any

    store = open_store_if_any(study)
    try:
        rows = current_rows(study, store)
        orphans = len(store.rows()) - sum(r is not None for r in rows.values()) if store else 0
    finally:
        if store is not None:
            store.close()
    held = lock_is_held(study.lock_path)
    marks = {run_id: _mark(row, held) for run_id, row in rows.items()}

    tuned = study.tunes_lr
    groups: dict[tuple, dict[int, str]] = {}
    for spec in study.runs:
        key = (spec.label, spec.budget, spec.lr) if tuned else (spec.label, spec.budget)
        groups.setdefault(key, {})[spec.seed] = marks[spec.run_id]
    width = max(len("strategy"), *(len(label) for label in study.labels))
    seed_w = max(2, *(len(str(s)) for s in study.seeds))
    head = f"{'strategy':<{width}}  {'budget':<6}" + ("  lr      " if tuned else "")
    lines = [
        f"study {study.name}: {study.path} → {study.out}"
        + ("" if store else "  (nothing has run yet)"),
        "",
        head + "  seeds " + " ".join(f"{s:>{seed_w}}" for s in study.seeds),
    ]
    for key, by_seed in groups.items():
        text = f"{key[0]:<{width}}  {key[1]:<6}" + (f"  {key[2]:<8g}" if tuned else "")
        cells = " ".join(f"{MARKS[by_seed.get(s, 'pending')]:>{seed_w}}" for s in study.seeds)
        lines.append(text + "        " + cells)
    lines += ["", f"legend: {LEGEND}"]
    counts = {name: sum(1 for m in marks.values() if m == name) for name in MARKS}
    lines.append(
        f"{len(study.runs)} runs: "
        + ", ".join(f"{counts[name]} {name}" for name in MARKS if counts[name] or name == "done")
    )
    remaining = [
        spec for spec in study.runs if marks[spec.run_id] in ("pending", "running", "interrupted")
    ]
    lines.append(f"remaining: {estimate(study, rows, remaining).text()}")
    if counts["interrupted"]:
        lines.append(f"interrupted runs re-run at the next `adaptive-lora run {study.path}`")
    failed = [(run_id, row) for run_id, row in rows.items() if marks[run_id] == "failed"]
    if failed:
        lines.append(f"failed (re-run with `adaptive-lora run {study.path} --retry-failed`):")
        lines += [f"  {run_id}: {row.reason}" for run_id, row in failed]
    if orphans:
        lines.append(
            f"{orphans} stored run(s) are no longer in the study file (kept, not reported)"
        )
    return "\n".join(lines)


def format_dry_run(study, *, retry_failed: bool) -> str:
    """What `run` would do now, and how long it would take."""
    from adaptive_lora.store import lock_is_held
    from adaptive_lora.study import current_rows, estimate, open_store_if_any, would_run

    store = open_store_if_any(study)
    try:
        rows = current_rows(study, store)
    finally:
        if store is not None:
            store.close()
    held = lock_is_held(study.lock_path)
    todo = would_run(study, rows, retry_failed=retry_failed, lock_held=held)
    done = sum(1 for r in rows.values() if r is not None and r.status == "done")
    lines = [
        f"study {study.name}: {len(study.runs)} runs, {done} done, {len(todo)} would run"
        + (" (another `run` holds the study now)" if held else "")
    ]
    width = max(len(label) for label in study.labels)
    for spec in todo:
        row = rows[spec.run_id]
        why = "" if row is None or row.status == "pending" else f"  [{_mark(row, held)}]"
        lines.append(
            f"  {spec.label:<{width}}  {spec.budget:<6} seed {spec.seed:<3} lr {spec.lr:<8g} "
            f"{spec.run_id}{why}"
        )
    lines.append(f"estimate: {estimate(study, rows, todo).text()}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- argparse


def register_cli(subparsers) -> None:
    """Add `run`, `status`, `report` and `note` to the `adaptive-lora` subcommands."""
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
    run.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    run.set_defaults(func=cmd_run)

    status = subparsers.add_parser(
        "status", help="which runs of a study are done, running, failed or pending"
    )
    status.add_argument("study", metavar="STUDY.yaml")
    status.set_defaults(func=cmd_status)

    report = subparsers.add_parser(
        "report",
        help="write report.md, table.tex, stats.json and figures for a study",
        description="Works on a partly finished study: comparisons use the paired seeds present.",
    )
    report.add_argument("study", metavar="STUDY.yaml")
    report.add_argument("--out", metavar="DIR", help="output folder (default: <study out>/report)")
    report.set_defaults(func=cmd_report)

    note = subparsers.add_parser(
        "note", help="record a decision note in the study (listed in the report)"
    )
    note.add_argument("study", metavar="STUDY.yaml")
    note.add_argument("text", help="what happened or was decided")
    note.add_argument("--decision", help="the decision, in a few words")
    note.add_argument("--rationale", help="why")
    note.add_argument("--runs", nargs="+", metavar="RUN_ID", help="runs the note is about")
    note.set_defaults(func=cmd_note)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaptive-lora", description="Study commands.")
    register_cli(parser.add_subparsers(dest="command", required=True))
    from adaptive_lora.cli import dispatch

    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
