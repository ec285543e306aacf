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
(within `--tolerance`), 1 when one differs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from adaptive_lora.config import RunConfig
from adaptive_lora.errors import UserError
from adaptive_lora.records import CURVE_KEYS, ITEMS_KEY, STATUS_DONE
from adaptive_lora.report.environment_check import MUST_AGREE
from adaptive_lora.study.design import group_signature
from adaptive_lora.study.machine_check import is_bf16
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import DONE, RunRow, StudyStore

# The numbers a run computes; times, memory and throughput vary between any two runs.
COMPARED = (
    "test_loss",
    "test_loss_before",
    "val_loss",
    "val_loss_before",
    "rouge_l",
    "exact_match",
    "trainable_params",
    "effective_params",
    "steps",
    "final_train_loss",
)


def _find_run(store: StudyStore, wanted: str) -> RunRow:
    """The stored run with id `wanted`, or the only one whose id starts with it."""
    rows = store.rows()
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
) -> list[tuple[str, Any, Any, bool]]:
    """(key, stored, re-run, same) for every compared number, task metric (`eval_metrics`:
    a generated task's `task_score`), curve and per-item record either run has."""
    named = (*COMPARED, *stored.get("eval_metrics", ()), *now.get("eval_metrics", ()))
    keys = [k for k in (*dict.fromkeys(named), *CURVE_KEYS, ITEMS_KEY) if k in stored or k in now]
    return [
        (k, stored.get(k), now.get(k), _same(stored.get(k), now.get(k), tolerance)) for k in keys
    ]


def environment_lines(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What the numbers depend on, for the stored run and the re-run."""
    lines = []
    for name, read in MUST_AGREE.items():
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
    for key in (*COMPARED, *row.metrics.get("eval_metrics", ())):
        values = [r.metrics.get(key) for r in peers]
        values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(values) >= 2 and statistics.stdev(values) > 0:
            sds[key] = statistics.stdev(values)
    return sds, len(peers)


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


def cmd_rerun(args: argparse.Namespace) -> int:
    import torch

    from adaptive_lora.run import execute_run

    if args.tolerance < 0:
        raise UserError(f"--tolerance must be 0 or more, got {args.tolerance:g}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    study = load_study(args.study)
    with StudyStore.open(study.store_path, create=False) as store:
        row = _find_run(store, args.run)
        sds, n_seeds = seed_sd(store.rows(), row)
    out = Path(args.out).resolve() if args.out else None
    if out is not None and out == study.runs_dir.resolve():
        raise UserError(f"--out {args.out} is the study's own run folder: choose another folder")
    if out is not None:  # now, not after minutes of training
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--out {args.out}: {error.strerror or error}") from None
    threads = args.threads or (row.manifest.get("worker") or {}).get("threads")
    threads = threads or row.manifest.get("cpu_threads") or torch.get_num_threads()
    torch.set_num_threads(int(threads))
    config = RunConfig.from_dict(row.config)
    if args.precision:  # on purpose: how far another precision's numbers are from the stored
        config.train.precision = args.precision
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
        print("\n".join(environment_lines(row.manifest, result.manifest)))
        rows = compare_metrics(row.metrics, result.metrics, args.tolerance)
    return _print_comparison(rows, sds, n_seeds, args.tolerance)


def _print_comparison(
    rows: list[tuple[str, Any, Any, bool]], sds: dict[str, float], n_seeds: int, tolerance: float
) -> int:
    """The metric-by-metric lines and the verdict; the exit status (0 reproduced, 1 not)."""
    print("what they computed" + (f" (sd: over the {n_seeds} seeds of this strategy, budget "
                                  "and rate in the study)" if sds else "") + ":")  # fmt: skip
    width = max(len(k) for k, *_ in rows)
    for key, stored, now, same in rows:
        verdict = "equal" if same else "DIFFERS"
        delta = "" if same else in_sd(stored, now, sds.get(key))
        print(f"  {key:<{width}}  {verdict:<7}  stored {_shown(stored)}, re-run {_shown(now)}"
              f"{delta}")  # fmt: skip
    differing = [k for k, *_, same in rows if not same]
    how = "exactly" if tolerance == 0 else f"within {tolerance:g}"
    if differing:
        print(f"not reproduced: {', '.join(differing)} differ ({len(rows) - len(differing)} "
              f"of {len(rows)} equal {how})")  # fmt: skip
        return 1
    print(f"reproduced: all {len(rows)} compared numbers and curves equal {how}")
    return 0


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
