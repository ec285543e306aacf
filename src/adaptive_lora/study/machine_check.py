"""Does this machine compute a study's runs the way its stored runs were computed?

Two checks. The precision: `auto` resolves per machine (`compute/precision.py`), so a
study begun in bf16 on a machine with bf16 instructions would go on in fp32 on one
without; `run` stops in one line rather than switch silently. And, for bf16 runs, the family:

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


def _settings_to_start(
    study: Study, rows: dict[str, RunRow | None], retry_failed: bool
) -> set[str]:
    """The `train.precision` settings of the runs a `run` now would start (one pending, or
    a reporting run still to come)."""
    todo: list[RunSpec] = would_run(study, rows, retry_failed=retry_failed, lock_held=False)
    if not todo and study.runs_to_come() and study.runs:
        todo = [study.runs[0]]  # the reporting runs share the study's train settings
    return {spec.config.train.precision for spec in todo}


def this_machine_family() -> str:
    """The family a bf16 run started here computes with (the device bf16 autocast uses)."""
    from adaptive_lora.compute.precision import resolve_precision
    from adaptive_lora.environment import matrix_family

    return matrix_family(resolve_precision("bf16").device)


def family_mismatch(
    study: Study,
    *,
    retry_failed: bool = False,
    family: str | None = None,
    rows: dict[str, RunRow | None] | None = None,
) -> str | None:
    """Why bf16 runs started now would not pool with the stored ones (this machine's
    family, or `family`, differs from theirs); None when they would, or nothing would start.
    `rows`: the study's stored rows, when the caller has read them already."""
    rows = read_rows(study) if rows is None else rows
    done = [row for row in rows.values() if row is not None and row.status == DONE]
    stored = bf16_families(done)
    if not stored or _settings_to_start(study, rows, retry_failed) <= {"fp32"}:
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
RESUME_PRECISION = (
    "resume where it resolves as the stored runs did (`auto` is bf16 only where bf16 is "
    "native: AMX, AVX512-bf16, a GPU), or pass --allow-mixed to go on"
)


def precision_mismatch(
    study: Study, *, retry_failed: bool = False, rows: dict[str, RunRow | None] | None = None
) -> str | None:
    """Why runs started here would compute in another precision than the stored runs
    (`auto` resolves per machine: a study begun in bf16 on an AMX Xeon would go on in fp32
    on an AVX2 EPYC); None when they would not, or nothing would start."""
    from adaptive_lora.compute.precision import resolve_precision

    rows = read_rows(study) if rows is None else rows
    stored: dict[str, list[str]] = {}
    for row in rows.values():
        if row is not None and row.status == DONE and (row.manifest or {}).get("precision"):
            stored.setdefault(str(row.manifest["precision"]), []).append(row.id)
    settings = _settings_to_start(study, rows, retry_failed) if stored else set()
    here = {setting: resolve_precision(setting).name for setting in sorted(settings)}
    new = {setting: name for setting, name in here.items() if name not in stored}
    if not new:
        return None
    setting, name = next(iter(new.items()))
    shown = ", ".join(f"{p} ({len(ids)} run(s))" for p, ids in sorted(stored.items()))
    return (
        f"`precision: {setting}` computes in {name} on this machine, but the study's stored "
        f"runs computed in {shown}: one study's runs share one precision"
    )


def slow_bf16_line(study: Study) -> str | None:
    """A note when the study asks for bf16 on a CPU without bf16 instructions (it would
    crawl: a bf16 matmul runs ~50× slower than fp32 there); None otherwise."""
    from adaptive_lora.compute.precision import has_native_bf16, resolve_precision

    asked = {spec.config.train.precision for spec in study.runs[:1]}
    if "bf16" not in asked or resolve_precision("bf16").device.type != "cpu":
        return None
    if has_native_bf16():
        return None
    return (
        f"note: `precision: bf16` on this CPU ({this_machine_family()}, no bf16 instructions) "
        "is emulated and runs many times slower than fp32; `auto` would compute in fp32 here"
    )


def _mismatch(study: Study, retry_failed: bool, family: str | None) -> tuple[str, str] | None:
    """The first reason runs started now would not pool with the stored ones, and its advice."""
    rows = read_rows(study)  # once, for both checks
    message = family_mismatch(study, retry_failed=retry_failed, family=family, rows=rows)
    if message is not None:
        return message, RESUME_ELSEWHERE
    if family is None and (
        message := precision_mismatch(study, retry_failed=retry_failed, rows=rows)
    ):
        return message, RESUME_PRECISION
    return None


def check_machine(
    study: Study,
    *,
    retry_failed: bool = False,
    allow_mixed: bool = False,
    family: str | None = None,
) -> str | None:
    """Refuse (one-line `UserError`) to start runs that would not pool with the stored ones:
    bf16 runs on a family other than the stored bf16 runs', or runs whose precision resolves
    otherwise than the stored runs'; with `allow_mixed`, the line to print instead. Else a
    note when bf16 here would crawl, or None.

    `family` is that of the machine the runs will compute on (default: this one; the
    precision is checked only then, as only then is it this machine that resolves it).
    """
    found = _mismatch(study, retry_failed, family)
    if found is None:
        return slow_bf16_line(study) if family is None else None
    message, advice = found
    if not allow_mixed:
        raise UserError(f"{message}; {advice}")
    return f"warning: {message}; going on (--allow-mixed)"


def can_resume_here_line(
    study: Study, *, retry_failed: bool = False, allow_mixed: bool = False
) -> str | None:
    """What `status` and `run --dry-run` say when `run` here would stop at the machine check
    (or, with `allow_mixed`, go on past it): a session plans on another machine without
    trying to start the study first. Else the note on bf16 that would crawl, or None."""
    found = _mismatch(study, retry_failed, None)
    if found is None:
        return slow_bf16_line(study)
    message, advice = found
    if allow_mixed:
        return f"note: {message}; `run --allow-mixed` goes on"
    return f"note: `run` here would stop before its first run: {message}; {advice}"
