"""Does this machine compute a study's bf16 runs the way its stored runs were computed?

A bf16 run's last bits depend on the matrix instructions its kernels use (AMX-bf16 on a
recent Xeon, AVX512-bf16 on an EPYC, ... or the GPU model): the same run differs across
families by about the size of the effects a study looks for. Machines here come with
either CPU, so a study resumed in a later session may land on the other family; `run`
asks `check_machine` first and stops in one line before any run starts, unless told to
go on (`--allow-mixed`; the report then still refuses to pool them without its own flag).
`status` and `run --dry-run` end with the same line as a note, so a session sees it
while it plans.

Runs recorded before families were (no `matrix_family` in the manifest) are of an
unknown family: never a reason to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptive_lora.errors import UserError
from adaptive_lora.study.plan import read_rows, would_run
from adaptive_lora.study.spec import RunSpec, Study
from adaptive_lora.study.store import DONE, RunRow


def is_bf16(manifest: dict[str, Any]) -> bool:
    """Did the run compute in bf16 (precision `bf16-autocast-cpu`, `bf16-autocast-cuda`)?"""
    return str(manifest.get("precision") or "").startswith("bf16")


def bf16_families(rows: Sequence[RunRow]) -> dict[str, list[str]]:
    """Family → ids of the bf16 runs that recorded one (runs without one are left out)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        manifest = row.manifest or {}
        family = manifest.get("matrix_family")
        if family and is_bf16(manifest):
            groups.setdefault(str(family), []).append(row.id)
    return groups


def _bf16_to_start(study: Study, rows: dict[str, RunRow | None], retry_failed: bool) -> bool:
    """Would a `run` now start a bf16 run (one pending, or a reporting run still to come)?"""
    todo: list[RunSpec] = would_run(study, rows, retry_failed=retry_failed, lock_held=False)
    if not todo and study.runs_to_come() and study.runs:
        todo = [study.runs[0]]  # the reporting runs share the study's train settings
    return any(spec.config.train.precision != "fp32" for spec in todo)


def this_machine_family() -> str:
    """The family a bf16 run started here computes with (the device bf16 autocast uses)."""
    from adaptive_lora.compute.precision import resolve_precision
    from adaptive_lora.environment import matrix_family

    return matrix_family(resolve_precision("bf16").device)


def family_mismatch(
    study: Study, *, retry_failed: bool = False, family: str | None = None
) -> str | None:
    """Why bf16 runs started now would not pool with the stored ones (this machine's
    family, or `family`, differs from theirs); None when they would, or nothing would start."""
    rows = read_rows(study)
    done = [row for row in rows.values() if row is not None and row.status == DONE]
    stored = bf16_families(done)
    if not stored or not _bf16_to_start(study, rows, retry_failed):
        return None
    family = family or this_machine_family()
    others = {name: ids for name, ids in stored.items() if name != family}
    if not others:
        return None
    shown = ", ".join(f"{name} ({len(ids)} run(s))" for name, ids in sorted(others.items()))
    return (
        f"this machine computes bf16 with {family}, but the study's stored bf16 runs ran with "
        f"{shown}: their numbers differ by about the size of the effects studied"
    )


RESUME_ELSEWHERE = "resume on a machine of that family, or pass --allow-mixed to go on"


def check_machine(
    study: Study,
    *,
    retry_failed: bool = False,
    allow_mixed: bool = False,
    family: str | None = None,
) -> str | None:
    """Refuse (one-line `UserError`) to start bf16 runs on a family other than the stored
    bf16 runs'; with `allow_mixed`, the line to print instead. None when nothing differs.

    `family` is that of the machine the runs will compute on (default: this one).
    """
    message = family_mismatch(study, retry_failed=retry_failed, family=family)
    if message is None:
        return None
    if not allow_mixed:
        raise UserError(f"{message}; {RESUME_ELSEWHERE}")
    return f"warning: {message}; going on (--allow-mixed)"


def can_resume_here_line(
    study: Study, *, retry_failed: bool = False, allow_mixed: bool = False
) -> str | None:
    """What `status` and `run --dry-run` say when `run` here would stop at the family check
    (or, with `allow_mixed`, go on past it): a session plans on another machine without
    trying to start the study first. None when nothing differs."""
    message = family_mismatch(study, retry_failed=retry_failed)
    if message is None:
        return None
    if allow_mixed:
        return f"note: {message}; `run --allow-mixed` goes on"
    return f"note: `run` here would stop before its first run: {message}; {RESUME_ELSEWHERE}"
