"""A stored run against its re-run: which run, which numbers, and how far apart they are.

`adaptive-lora rerun` trains a finished run of a study again from the config in the
store. This module finds that run, reads the spread of its numbers over the study's
other seeds (the unit a difference is given in: whether it is of the size of the
effects studied), and compares the two records number by number, curve by curve and
item by item. What it prints beside them (the package source, model, data, precision,
torch version and bf16 matrix-instruction family of both) says whether equal numbers
are to be expected at all.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from adaptive_lora.config import RunConfig
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import METRICS
from adaptive_lora.records import CURVE_KEYS, ITEMS_KEY, METRIC_KEYS
from adaptive_lora.study.design import group_signature
from adaptive_lora.study.machine_check import is_bf16
from adaptive_lora.study.store import DONE, RunRow, StudyStore

# Keys every run's metrics.json has that a re-run is not expected to repeat, or that only
# restate another: times, memory and throughput vary between any two runs; perplexities
# are exp(loss); the budget and the deviation from it are fixed by the allocation.
NOT_COMPARED = frozenset(
    {
        "test_ppl", "test_ppl_before", "val_ppl", "val_ppl_before",
        "budget_params", "deviation_pct",
        "train_seconds", "eval_seconds", "tokens_per_second", "peak_memory_mb",
    }
)  # fmt: skip
# The numbers a run computes, in metrics.json's order; a key added to `METRIC_KEYS` is
# compared unless it is listed above.
COMPARED = tuple(key for key in METRIC_KEYS if key not in NOT_COMPARED)


class Compared(NamedTuple):
    """One compared number, curve or per-item table of the stored run and the re-run."""

    key: str
    stored: Any
    now: Any
    same: bool


@dataclass
class StoredRun:
    """The run to train again, with the seed-to-seed sd of its numbers in the study."""

    row: RunRow
    sds: dict[str, float]  # per compared number; absent where fewer than two seeds vary
    n_seeds: int  # the done runs that differ from it only in the seed (itself included)


def number_keys(*records: Mapping[str, Any]) -> tuple[str, ...]:
    """The scalar keys compared: `COMPARED`, the task metrics the records name
    (`eval_metrics`: a generated task's `task_score`), then any other metric of the
    registry, so that a newly registered metric is compared too."""
    named = (name for record in records for name in record.get("eval_metrics", ()))
    return tuple(dict.fromkeys((*COMPARED, *named, *METRICS)))


def load_stored_run(store_path: Path, wanted: str) -> StoredRun:
    """The done run `wanted` names (its id or a unique start of one) and its seeds' sds."""
    with StudyStore.open(store_path, create=False) as store:
        rows = store.rows()
    row = find_run(rows, wanted)
    sds, n_seeds = seed_sd(rows, row)
    return StoredRun(row, sds, n_seeds)


def find_run(rows: list[RunRow], wanted: str) -> RunRow:
    """The stored run with id `wanted`, or the only one whose id starts with it."""
    matches = [r for r in rows if r.id == wanted] or [r for r in rows if r.id.startswith(wanted)]
    if not matches:
        raise UserError(f"no run {wanted!r} in the study store (`adaptive-lora status` lists them)")
    if len(matches) > 1:
        raise UserError(
            f"{wanted!r} names {len(matches)} runs ({', '.join(r.id for r in matches[:3])}, ...): "
            "give more of the id"
        )
    row = matches[0]
    if row.status != DONE:
        raise UserError(f"run {row.id} is {row.status}, not done: there is nothing to compare with")
    return row


def rerun_folder(out: str | None, runs_dir: Path) -> Path | None:
    """The folder `--out` names, made now (not after minutes of training); never the
    study's own run folder, whose run of the same id the re-run would overwrite."""
    if out is None:
        return None
    folder = Path(out).resolve()
    if folder == runs_dir.resolve():
        raise UserError(f"--out {out} is the study's own run folder: choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: {error.strerror or error}") from None
    return folder


def stored_threads(row: RunRow) -> int | None:
    """The torch threads the stored run had (a different count changes the order of
    floating-point sums): its worker's, else its process's; None when unrecorded."""
    return (row.manifest.get("worker") or {}).get("threads") or row.manifest.get("cpu_threads")


def rerun_config(row: RunRow, precision: str | None) -> RunConfig:
    """The stored run's config, from the store (not the study file, which may have
    changed); `precision` on purpose, to see how far another precision moves the numbers."""
    config = RunConfig.from_stored(row.config)
    if precision:
        config.train.precision = precision
    return config


def _same(stored: Any, now: Any, tolerance: float) -> bool:
    if stored is None or now is None:
        return stored is None and now is None
    if isinstance(stored, dict):  # the per-item records: column by column
        return (
            isinstance(now, dict)
            and stored.keys() == now.keys()
            and all(_same(stored[k], now[k], tolerance) for k in stored)
        )
    if isinstance(stored, str) or isinstance(now, str):  # an item's key
        return stored == now
    if isinstance(stored, list):
        return (
            isinstance(now, list)
            and len(stored) == len(now)
            and all(_same(a, b, tolerance) for a, b in zip(stored, now))
        )
    a, b = float(stored), float(now)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b if tolerance == 0 else abs(a - b) <= tolerance


def compare_metrics(
    stored: dict[str, Any], now: dict[str, Any], tolerance: float = 0.0
) -> list[Compared]:
    """Every compared number (`number_keys`), curve and per-item record either run has."""
    keys = (*number_keys(stored, now), *CURVE_KEYS, ITEMS_KEY)
    return [
        Compared(k, stored.get(k), now.get(k), _same(stored.get(k), now.get(k), tolerance))
        for k in keys
        if k in stored or k in now
    ]


def seed_sd(rows: list[RunRow], row: RunRow) -> tuple[dict[str, float], int]:
    """Per compared number, its sd over the study's done runs that differ from `row` only
    in the seed (same group — model and data —, strategy, budget, rate); and how many such
    runs there are."""
    group = group_signature(row.config)
    peers = [
        r
        for r in rows
        if r.status == DONE
        and (r.label, r.budget, r.lr) == (row.label, row.budget, row.lr)
        and group_signature(r.config) == group
    ]
    sds = {}
    for key in number_keys(row.metrics):
        values = [r.metrics.get(key) for r in peers]
        values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(values) >= 2 and statistics.stdev(values) > 0:
            sds[key] = statistics.stdev(values)
    return sds, len(peers)


def environment_lines(
    stored: dict[str, Any], now: dict[str, Any], facts: Mapping[str, Callable[[dict], Any]]
) -> list[str]:
    """What the numbers depend on, for the stored run's manifest and the re-run's.

    `facts` (name → reader of a manifest) is `report.environment_check.MUST_AGREE`,
    handed in by the caller because `study/` sits below `report/`.
    """
    lines = []
    for name, read in facts.items():
        a, b = read(stored), read(now)
        mark = "same" if a == b else "DIFFERS"
        lines.append(f"  {name:<18} {mark:<8} stored {a}" + ("" if a == b else f", now {b}"))
    return lines + [family_line(stored, now)]


def family_line(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """The matrix-instruction family of both (what a bf16 run's last bits depend on)."""
    a, b = stored.get("matrix_family"), now.get("matrix_family")
    cpus = f" (CPU {stored.get('cpu')} → {now.get('cpu')})"
    if not (is_bf16(stored) or is_bf16(now)):
        mark = "n/a"  # fp32 kernels do not switch on the bf16 instructions
    elif a is None:
        mark = "unknown"  # recorded before families were: never a refusal, but say so
    else:
        mark = "same" if a == b else "DIFFERS"
    return f"  {'matrix family':<18} {mark:<8} stored {a or 'unrecorded'}, now {b}" + (
        "" if mark == "same" else cpus
    )


def in_sd(stored: Any, now: Any, sd: float | None) -> str:
    """`Δ +0.000398 = 0.21 sd` for two numbers (the sd part only when there is one)."""
    if not isinstance(stored, (int, float)) or not isinstance(now, (int, float)):
        return ""
    delta = float(now) - float(stored)
    if not math.isfinite(delta):
        return ""
    return f"  (Δ {delta:+.6g}" + (f" = {delta / sd:+.2f} sd)" if sd else ")")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return f"curve of {len(value)} points"
    if isinstance(value, dict):
        items = max((len(v) for v in value.values() if isinstance(v, list)), default=0)
        return f"{items} items × {len(value)} columns"
    return "None" if value is None else repr(value)


def comparison_lines(
    compared: list[Compared], run: StoredRun, tolerance: float
) -> tuple[list[str], bool]:
    """The metric-by-metric lines and the verdict; whether every number was reproduced."""
    sds = run.sds
    unit = f" (sd: over the {run.n_seeds} seeds of this strategy, budget and rate in the study)"
    lines = [f"what they computed{unit if sds else ''}:"]
    width = max(len(c.key) for c in compared)
    for key, stored, now, same in compared:
        verdict = "equal" if same else "DIFFERS"
        delta = "" if same else in_sd(stored, now, sds.get(key))
        lines.append(f"  {key:<{width}}  {verdict:<7}  stored {_shown(stored)}, re-run "
                     f"{_shown(now)}{delta}")  # fmt: skip
    differing = [c.key for c in compared if not c.same]
    how = "exactly" if tolerance == 0 else f"within {tolerance:g}"
    n = len(compared)
    if differing:
        lines.append(f"not reproduced: {', '.join(differing)} differ ({n - len(differing)} "
                     f"of {n} equal {how})")  # fmt: skip
        return lines, False
    lines.append(f"reproduced: all {n} compared numbers and curves equal {how}")
    return lines, True
