"""Failures of the machine, not of the run: re-run without a flag, and a full disk stops.

A run that fails by its own error (a NaN loss, a bug, a budget it cannot spend) stays
failed until `run --retry-failed`: running it again would fail again. A run that failed
because of where it ran — the disk was full, its worker stalled or died — says nothing
about its configuration, so the next `run` takes it again by itself. A full disk also
stops the study after the failing run: every run after it would fail the same way, and
the line says how much space a run of this study takes and where.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from adaptive_lora.errors import UserError

DISK_FULL = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]")


def disk_full(reason: str | None) -> bool:
    return bool(reason) and any(mark in reason for mark in DISK_FULL)


def transient(reason: str | None) -> bool:
    """Whether a failed run's recorded reason is the machine's, not the run's. A stalled
    or dead worker's run never fails (the executors hand it back as interrupted, and it
    goes back to pending): a full disk is the machine's one failure."""
    return disk_full(reason)


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue  # removed while we looked
    return total


def run_size_text(run_dirs: Iterable[Path], sample: int = 20) -> str:
    """'about N MB' per run, from up to `sample` finished run folders ('' if none)."""
    sizes = [folder_bytes(d) for d in list(run_dirs)[:sample] if d.is_dir()]
    if not sizes:
        return ""
    return f"about {max(1, round(sum(sizes) / len(sizes) / 1e6))} MB"


class DiskFull(UserError):
    """The study stopped after a run failed on a full disk (one line, exit non-zero)."""


def disk_full_stop(run_id: str, where: Path, size: str, resume: str) -> DiskFull:
    per_run = f" (a run of this study writes {size} there)" if size else ""
    return DiskFull(
        f"stopped: no space left on device under {where} after run {run_id}{per_run}; free "
        f"space there and `{resume}` again (that run is re-run without --retry-failed)"
    )
