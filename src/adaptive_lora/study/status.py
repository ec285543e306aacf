"""What `status` and `run --dry-run` print about a study's runs.

`status` reads the store only (a moved data file must not block it): a strategy ×
budget grid with one mark per seed, the counts, the time the runs left would take, and
what needs attention (runs in flight, interrupted or failed, stored runs a narrowed
study file no longer lists, counted by `store.count_statuses`). `run --dry-run` lists the
runs a `run` would start now, the design's cells and the estimate.
"""

from __future__ import annotations

import time

from adaptive_lora.analysis.sequential import SequentialDecision
from adaptive_lora.progress import Progress
from adaptive_lora.study.expand import RunSpec
from adaptive_lora.study.look_plan import dry_run_look_lines
from adaptive_lora.study.plan import (
    current_rows,
    estimate,
    open_store_if_any,
    read_rows,
    stored_rows,
    to_come_line,
    would_run,
)
from adaptive_lora.study.power_plan import design_warnings
from adaptive_lora.study.progress_log import read_progress
from adaptive_lora.study.sequential_seeds import comparison_progress
from adaptive_lora.study.spec import Study, in_groups
from adaptive_lora.study.store import RunRow, count_statuses, lock_is_held
from adaptive_lora.study.transient import transient

MARKS = {
    "done": "✓",
    "running": "▶",
    "interrupted": "!",
    "failed": "✗",
    "pending": "·",
}
LEGEND = "✓ done  ▶ running  ! interrupted (its process is gone)  ✗ failed  · pending"


def run_mark(row: RunRow | None, lock_held: bool) -> str:
    """A run's state as `status` names it: a `running` row whose process is gone (no
    `run` holds the study lock) is `interrupted`; a run never stored is `pending`."""
    if row is None:
        return "pending"
    if row.status == "running" and not lock_held:
        return "interrupted"
    return row.status


def format_status(study: Study) -> str:
    """strategy × budget rows, seed columns, counts and the remaining-time estimate."""
    store = open_store_if_any(study)
    try:
        rows = current_rows(study, store)
        orphans = [r.status for r in store.rows() if r.id not in rows] if store else []
    finally:
        if store is not None:
            store.close()
    held = lock_is_held(study.lock_path)
    marks = {run_id: run_mark(row, held) for run_id, row in rows.items()}
    lines = [
        f"study {study.name}: {study.path} → {study.out}"
        + ("" if store else "  (nothing has run yet)"),
        "",
        *_grid_lines(study, marks),
        "",
        f"legend: {LEGEND}",
    ]
    if study.lr_tuning_seeds:
        lines.append("tN: a learning-rate tuning seed; blank: no run at that rate on that seed")
    lines += _progress_lines(study, rows, marks)
    lines += look_state_lines(study, stored_rows(rows))
    lines += _attention_lines(study, rows, marks, orphans)
    return "\n".join(lines)


def look_state_lines(study: Study, rows: list[RunRow]) -> list[str]:
    """With sequential seeds: where each comparison stands — decided at a look, open with
    the seeds its next look needs, or its first look still to come."""
    if study.seed_plan is None:
        return []
    titles = study.group_titles(plain=True)
    lines = []
    for group in study.groups:
        part = study.for_group(group)
        where = f" ({titles[group.key]})" if study.multi_group else ""
        for budget in study.budgets:
            progress = comparison_progress(part, group, study.rows_of(group, rows), budget)
            for label, (needed, d) in progress.items():
                head = f"  {budget}{where}: {label} vs {study.baseline_at(budget)}: "
                lines.append(head + _look_state(d, needed))
    return ["sequential looks:", *lines] if lines else []


def _unit(unit: str) -> str:
    return unit.replace("_x_", " × ")


def _look_state(d: SequentialDecision | None, needed: int) -> str:
    if d is None:
        return f"first look ({needed} seeds) still to come"
    said = f"Δ {d.mean:+.4f} at {d.n} seeds, judged by {_unit(d.unit)}"
    if d.other_unit_decision:
        other = "seeds_x_items" if d.unit == "seeds" else "seeds"
        said += f"; by {_unit(other)}: {d.other_unit_decision}"
    if d.stopped:
        return f"{d.decision} at look {d.look + 1} ({said})"
    return f"open ({said}); the next look needs {needed} seeds"


def _grid_lines(study: Study, marks: dict[str, str]) -> list[str]:
    """The header and one line per strategy × budget (× rate when tuned), a block a group
    in a factorial study; one mark per seed."""
    tuned = study.tunes_lr
    grid: dict[tuple, dict[int, str]] = {}
    for spec in study.runs:
        key = (spec.label, spec.budget, spec.lr) if tuned else (spec.label, spec.budget)
        grid.setdefault((spec.group, *key), {})[spec.seed] = marks[spec.run_id]
    titles = study.group_titles(plain=True)
    width = max(len("strategy"), *(len(label) for label in study.labels))
    # Tuning seeds first ("t0"); a cell with no run at that rate stays blank.
    columns = [(s, f"t{s}") for s in study.lr_tuning_seeds] + [(s, str(s)) for s in study.seeds]
    seed_w = max(2, *(len(name) for _, name in columns))
    head = f"{'strategy':<{width}}  {'budget':<6}" + ("  lr      " if tuned else "")
    lines = [head + "  seeds " + " ".join(f"{name:>{seed_w}}" for _, name in columns)]
    blank = "" if study.lr_tuning_seeds else MARKS["pending"]
    shown_group = None
    for (group, *key), by_seed in grid.items():
        if study.multi_group and group != shown_group:
            lines.append(f"{titles[group]}:")
            shown_group = group
        text = f"{key[0]:<{width}}  {key[1]:<6}" + (f"  {key[2]:<8g}" if tuned else "")
        cells = " ".join(
            f"{MARKS[by_seed[s]] if s in by_seed else blank:>{seed_w}}" for s, _ in columns
        )
        lines.append(text + "        " + cells)
    return lines


def _progress_lines(
    study: Study, rows: dict[str, RunRow | None], marks: dict[str, str]
) -> list[str]:
    """How many runs are in each state, and how long the rest would take."""
    counts = {name: sum(1 for m in marks.values() if m == name) for name in MARKS}
    lines = [
        f"{len(study.runs)} runs: "
        + ", ".join(f"{counts[name]} {name}" for name in MARKS if counts[name] or name == "done")
    ]
    remaining = [
        spec for spec in study.runs if marks[spec.run_id] in ("pending", "running", "interrupted")
    ]
    lines.append(f"remaining: {estimate(study, rows, remaining).text()}")
    more = to_come_line(study, rows, remaining)
    return lines + ([more] if more else [])


def _where_in_run(latest: dict | None) -> str:
    """ ", training 5/13 (26.1 s/step), 40 s ago" from the study's progress file."""
    if not latest:
        return ""
    try:
        progress = Progress(**latest)
    except TypeError:  # a file written by another version
        return ""
    return f", {progress.text()}, {max(0.0, time.time() - progress.at):.0f} s ago"


def _attention_lines(
    study: Study, rows: dict[str, RunRow | None], marks: dict[str, str], orphans: list[str]
) -> list[str]:
    """Runs in flight, interrupted or failed, and stored runs the study file left out."""
    lines = []
    running = [(run_id, row) for run_id, row in rows.items() if marks[run_id] == "running"]
    if running:  # host and pid of the process that has it: a Ray worker's with --workers
        lines.append("running now:")
        now = read_progress(study.out)
        lines += [
            f"  {run_id}: on {row.host} pid {row.pid}{_where_in_run(now.get(run_id))}"
            for run_id, row in running
        ]
    if "interrupted" in marks.values():
        lines.append(f"interrupted runs re-run at the next `adaptive-lora run {study.path}`")
    failed = [(run_id, row) for run_id, row in rows.items() if marks[run_id] == "failed"]
    machine = [(run_id, row) for run_id, row in failed if transient(row.reason)]
    own = [(run_id, row) for run_id, row in failed if not transient(row.reason)]
    if machine:
        lines.append(
            f"failed by the machine (re-run at the next `adaptive-lora run {study.path}`):"
        )
        lines += [f"  {run_id}: {row.reason}" for run_id, row in machine]
    if own:
        lines.append(f"failed (re-run with `adaptive-lora run {study.path} --retry-failed`):")
        lines += [f"  {run_id}: {row.reason}" for run_id, row in own]
    if orphans:
        lines.append(
            f"{len(orphans)} stored run(s) are no longer in the study file "
            f"({count_statuses(orphans)}; kept, not reported)"
        )
    return lines


def format_dry_run(
    study: Study, *, retry_failed: bool, at_once: int = 1, only: set[str] | None = None
) -> str:
    """What `run` would do now, and how long it would take (`at_once`: --workers; `only`:
    the group keys `--only` selects)."""
    rows = read_rows(study)
    held = lock_is_held(study.lock_path)
    todo = would_run(study, rows, retry_failed=retry_failed, lock_held=held)
    left_out = sum(1 for s in todo if not in_groups(s, only))
    todo = [s for s in todo if in_groups(s, only)]
    done = sum(1 for r in rows.values() if r is not None and r.status == "done")
    lines = [
        f"study {study.name}: {len(study.runs)} runs, {done} done, {len(todo)} would run"
        + (" (another `run` holds the study now)" if held else "")
        + (f"; {left_out} more in the groups --only leaves out" if left_out else "")
    ]
    lines += cell_lines(study)
    lines += _todo_lines(study, rows, todo, held)
    guess = estimate(study, rows, todo, at_once=at_once)
    lines.append(f"estimate: {guess.text()}")
    lines += dry_run_look_lines(study, stored_rows(rows))
    lines += design_warnings(study, stored_rows(rows))
    more = to_come_line(study.restricted(only) if only else study, rows, todo, at_once)
    if more:
        lines.append(more)
    return "\n".join(lines)


def _todo_lines(
    study: Study, rows: dict[str, RunRow | None], todo: list[RunSpec], held: bool
) -> list[str]:
    """One line per run a `run` would start: its state if not pending, its group."""
    width = max(len(label) for label in study.labels)
    lines = []
    for spec in todo:
        row = rows[spec.run_id]
        why = "" if row is None or row.status == "pending" else f"  [{run_mark(row, held)}]"
        where = ""
        if study.multi_group:
            group = next(g for g in study.groups if g.key == spec.group)
            where = f"  [{group.title(study.varies()).replace('`', '')}]"
        lines.append(
            f"  {spec.label:<{width}}  {spec.budget:<6} seed {spec.seed:<3} lr {spec.lr:<8g} "
            f"{spec.run_id}{why}{where}"
        )
    return lines


def cell_lines(study: Study) -> list[str]:
    """The design's cells (model × task × size × budget) and the runs each holds now."""
    if not study.multi_group:
        return []
    varies = study.varies()
    lines = [f"{len(study.groups)} groups × {len(study.budgets)} budget(s): the cells"]
    for group in study.groups:
        for budget in study.budgets:
            mine = [s for s in study.runs if s.group == group.key and s.budget == budget]
            tuning = sum(1 for s in mine if s.tuning)
            labels = len({s.label for s in mine})
            lines.append(
                f"  {group.title(varies).replace('`', '')}, {budget}: {len(mine)} run(s) "
                f"({tuning} lr tuning), {labels} strateg{'y' if labels == 1 else 'ies'}"
            )
    return lines


def design_warning_lines(study: Study) -> list[str]:
    """Before a run starts: one line per comparison its seeds cannot decide, judged from
    the rows the store holds (none before the first run)."""
    store = open_store_if_any(study)
    if store is None:
        return design_warnings(study, []) + dry_run_look_lines(study, [], table=False)
    with store:
        rows = store.rows()
    return design_warnings(study, rows) + dry_run_look_lines(study, rows, table=False)
