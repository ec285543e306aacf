"""`adaptive-lora status`: which runs of a study are done, running, failed or pending."""

from __future__ import annotations

import argparse

from adaptive_lora.study.machine_check import can_resume_here_line
from adaptive_lora.study.plan import current_rows, estimate, open_store_if_any, to_come_line
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import count_statuses, lock_is_held

MARKS = {
    "done": "✓",
    "running": "▶",
    "interrupted": "!",
    "failed": "✗",
    "pending": "·",
}


LEGEND = "✓ done  ▶ running  ! interrupted (its process is gone)  ✗ failed  · pending"


def cmd_status(args: argparse.Namespace) -> int:

    # Status, reports and notes read the store only: a moved data file must not block them.
    study = load_study(args.study, check_sources=False)
    print(format_status(study))
    if line := can_resume_here_line(study):  # before a session tries to resume the study here
        print(line)
    return 0


def _mark(row, lock_held: bool) -> str:
    if row is None:
        return "pending"
    if row.status == "running" and not lock_held:
        return "interrupted"
    return row.status


def format_status(study) -> str:
    """strategy × budget rows, seed columns, counts and the remaining-time estimate."""

    store = open_store_if_any(study)
    try:
        rows = current_rows(study, store)
        listed = set(rows)
        orphans = [r.status for r in store.rows() if r.id not in listed] if store else []
    finally:
        if store is not None:
            store.close()
    held = lock_is_held(study.lock_path)
    marks = {run_id: _mark(row, held) for run_id, row in rows.items()}

    tuned = study.tunes_lr
    groups: dict[tuple, dict[int, str]] = {}
    for spec in study.runs:
        key = (spec.label, spec.budget, spec.lr) if tuned else (spec.label, spec.budget)
        groups.setdefault((spec.group, *key), {})[spec.seed] = marks[spec.run_id]
    titles = study.group_titles(plain=True)
    width = max(len("strategy"), *(len(label) for label in study.labels))
    # Tuning seeds first ("t0"); a cell with no run at that rate stays blank.
    columns = [(s, f"t{s}") for s in study.lr_tuning_seeds] + [(s, str(s)) for s in study.seeds]
    seed_w = max(2, *(len(name) for _, name in columns))
    head = f"{'strategy':<{width}}  {'budget':<6}" + ("  lr      " if tuned else "")
    lines = [
        f"study {study.name}: {study.path} → {study.out}"
        + ("" if store else "  (nothing has run yet)"),
        "",
        head + "  seeds " + " ".join(f"{name:>{seed_w}}" for _, name in columns),
    ]
    shown_group = None
    for (group, *key), by_seed in groups.items():
        if study.multi_group and group != shown_group:  # a factorial study: one block a group
            lines.append(f"{titles[group]}:")
            shown_group = group
        text = f"{key[0]:<{width}}  {key[1]:<6}" + (f"  {key[2]:<8g}" if tuned else "")
        blank = "" if study.lr_tuning_seeds else MARKS["pending"]
        cells = " ".join(
            f"{MARKS[by_seed[s]] if s in by_seed else blank:>{seed_w}}" for s, _ in columns
        )
        lines.append(text + "        " + cells)
    lines += ["", f"legend: {LEGEND}"]
    if study.lr_tuning_seeds:
        lines.append("tN: a learning-rate tuning seed; blank: no run at that rate on that seed")
    counts = {name: sum(1 for m in marks.values() if m == name) for name in MARKS}
    lines.append(
        f"{len(study.runs)} runs: "
        + ", ".join(f"{counts[name]} {name}" for name in MARKS if counts[name] or name == "done")
    )
    remaining = [
        spec for spec in study.runs if marks[spec.run_id] in ("pending", "running", "interrupted")
    ]
    lines.append(f"remaining: {estimate(study, rows, remaining).text()}")
    more = to_come_line(study, rows, remaining)
    if more:
        lines.append(more)
    running = [(run_id, row) for run_id, row in rows.items() if marks[run_id] == "running"]
    if running:  # host and pid of the process that has it: a Ray worker's with --workers
        lines.append("running now:")
        lines += [f"  {run_id}: on {row.host} pid {row.pid}" for run_id, row in running]
    if counts["interrupted"]:
        lines.append(f"interrupted runs re-run at the next `adaptive-lora run {study.path}`")
    failed = [(run_id, row) for run_id, row in rows.items() if marks[run_id] == "failed"]
    if failed:
        lines.append(f"failed (re-run with `adaptive-lora run {study.path} --retry-failed`):")
        lines += [f"  {run_id}: {row.reason}" for run_id, row in failed]
    if orphans:
        lines.append(
            f"{len(orphans)} stored run(s) are no longer in the study file "
            f"({count_statuses(orphans)}; kept, not reported)"
        )
    return "\n".join(lines)


def register(subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="which runs of a study are done, running, failed or pending"
    )
    status.add_argument("study", metavar="STUDY.yaml")
    status.set_defaults(func=cmd_status)
