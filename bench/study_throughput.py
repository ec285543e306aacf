"""Runs per hour of a study on the old code path against this one, measured as a study runs.

Run from the repository root, with nothing else on the cores (it takes a while: on a
2-core AVX2 EPYC a run of this design takes about ten minutes in fp32 on one thread):

    .venv/bin/python bench/study_throughput.py [--old-ref 0217e8a] [--executor ray|local|both]
        [--seeds 2] [--data PATH] [--precision auto|fp32|bf16] [--smoke]

Both sides run the same study file — the regime map's most numerous cell: SmolLM2-135M,
Alpaca n_train = 100 (13 steps of 8), 50 validation and 100 test items, 16 answers of
≤ 64 tokens, budget r4, uniform and linear_decay at one learning rate (no tuning),
`--seeds` seeds — through the command a user types (`adaptive-lora run`, in-process or
`--workers <cores>` on a local Ray), each in its own process:

* old: the code of `--old-ref` (default 0217e8a, the last commit before the work on run
  cost), checked out into a temporary git worktree and put first on PYTHONPATH;
* new: this working tree.

Both sides use one precision: `--precision auto` means what this code resolves `auto`
to here (fp32 on a CPU without bf16 instructions, where the old code's bf16 would take
hours; `bench/train_throughput.py` measures that difference on its own). Each side gets
a cache folder of its own, empty at the start, so neither reuses what the other computed.

Per side it prints runs/hour (the runs over the command's wall time, Ray's start
included) and, from the store, a run's mean wall time split into training, held-out
evaluation (losses before and after, answers), and the rest (load, allocation, adapter,
saving, shipping). `fixed_share` is the new side's mean share of a run's wall time that
is not training. The last line reads
`runs_per_hour_old=<x> runs_per_hour_new=<y> speedup=<y/x>x fixed_share=<p>%`
(for `--executor both`, of the Ray executor, the way studies are run). `--smoke` (2
steps, 4 held-out items) checks that the benchmark runs, nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
DEFAULT_OLD_REF = "0217e8a"


def study_file(
    folder: Path, *, data: Path, seeds: int, precision: str, smoke: bool, new: bool
) -> Path:
    """The regime map's SmolLM2 Alpaca n = 100 r4 design, two strategies, one rate; the
    new code is told the old code's split order, so both sides see the same items."""
    spec = {
        "name": "study-throughput",
        "model": "smollm2-135m",
        "data": {
            "source": str(data), "n_train": 100, "n_val": 50, "n_test": 100,
            "data_seed": 0, "max_length": 256, "template": "alpaca",
        },
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay"],
        "lr_candidates": [2.0e-3],
        "seeds": list(range(1, seeds + 1)),
        "train": {
            "batch_size": 8, "epochs": 1, "warmup_ratio": 0.1, "scheduler": "linear",
            "precision": precision,
        },
        "eval": {"n_generate": 16, "max_new_tokens": 64, "batch_size": 16},
        "out": str(folder / "out"),
    }  # fmt: skip
    if new:
        spec["data"]["split"] = "train_first"
    if smoke:  # 2 steps of 8, a few held-out items: checks that the benchmark runs
        spec["data"].update(n_train=16, n_val=4, n_test=4)
        spec["eval"].update(n_generate=2, max_new_tokens=8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def resolved_auto() -> str:
    """What this code's `auto` means on this machine (fp32 without native bf16)."""
    from adaptive_lora.compute.precision import resolve_precision

    return resolve_precision("auto").name


def run_side(study: Path, *, src: Path, cache: Path, workers: int | None) -> float:
    """`adaptive-lora run` of `study` with the package at `src`; the command's wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(src), "ADAPTIVE_LORA_CACHE": str(cache)}
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(study), "--quiet"]
    if workers:
        command += ["--workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        sys.exit(f"{src}: `adaptive-lora run` exited {done.returncode}: " + " | ".join(tail))
    return wall


def stored_runs(study: Path) -> list[dict]:
    """Each finished run's wall seconds and metrics, read from the store with plain SQL
    (the two code versions share the `runs` table)."""
    db = study.parent / "out" / "study.db"
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT seconds, metrics FROM runs WHERE status = 'done'"
        ).fetchall()
    return [{"seconds": seconds, **json.loads(metrics)} for seconds, metrics in rows]


def breakdown(runs: list[dict]) -> dict[str, float]:
    """A run's mean wall time and its parts; `fixed` = mean share that is not training."""
    wall = statistics.mean(r["seconds"] for r in runs)
    train = statistics.mean(r["train_seconds"] for r in runs)
    evaluation = statistics.mean(r["eval_seconds"] for r in runs)
    fixed = statistics.mean(1 - r["train_seconds"] / r["seconds"] for r in runs)
    return {"wall": wall, "train": train, "eval": evaluation, "fixed": fixed}


def old_worktree(ref: str, scratch: Path) -> Path:
    """A checkout of `ref` in a temporary worktree; its `src` folder."""
    target = scratch / "old-code"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), ref],
        check=True, capture_output=True,
    )  # fmt: skip
    return target / "src"


def measure(executor: str, args, scratch: Path, old_src: Path, precision: str) -> dict:
    workers = (os.cpu_count() or 1) if executor == "ray" else None
    sides = {}
    for side, src in (("old", old_src), ("new", ROOT / "src")):
        folder = scratch / f"{executor}-{side}"
        study = study_file(
            folder, data=args.data, seeds=args.seeds, precision=precision, smoke=args.smoke,
            new=side == "new",
        )  # fmt: skip
        wall = run_side(study, src=src, cache=folder / "cache", workers=workers)
        runs = stored_runs(study)
        parts = breakdown(runs)
        sides[side] = {"runs_per_hour": len(runs) / wall * 3600, **parts}
        print(
            f"{executor} {side}: {len(runs)} runs in {wall:.0f} s → "
            f"{sides[side]['runs_per_hour']:.2f} runs/hour; a run (mean) {parts['wall']:.1f} s "
            f"= training {parts['train']:.1f} s + held-out evaluation {parts['eval']:.1f} s "
            f"+ the rest {parts['wall'] - parts['train'] - parts['eval']:.1f} s; "
            f"not training {100 * parts['fixed']:.1f}%",
            flush=True,
        )
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-ref", default=DEFAULT_OLD_REF)
    parser.add_argument("--executor", choices=("ray", "local", "both"), default="both")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per strategy (2 strategies)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 4 held-out items")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"no Alpaca file at {args.data}: pass --data PATH")
    from adaptive_lora.environment import cpu_model

    precision = resolved_auto() if args.precision == "auto" else args.precision
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; precision {precision} on both sides; "
          f"old code {args.old_ref}")  # fmt: skip
    executors = ("ray", "local") if args.executor == "both" else (args.executor,)
    scratch = Path(tempfile.mkdtemp(prefix="study-throughput-"))
    old_src = old_worktree(args.old_ref, scratch)
    try:
        results = {ex: measure(ex, args, scratch, old_src, precision) for ex in executors}
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_src.parent)],
            capture_output=True,
        )  # fmt: skip
    headline = results[executors[0]]
    old, new = headline["old"]["runs_per_hour"], headline["new"]["runs_per_hour"]
    print(
        f"runs_per_hour_old={old:.2f} runs_per_hour_new={new:.2f} speedup={new / old:.2f}x "
        f"fixed_share={100 * headline['new']['fixed']:.1f}%"
    )


if __name__ == "__main__":
    main()
