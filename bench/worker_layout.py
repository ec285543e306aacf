"""Study throughput on Ray: one worker with every core against one worker per core.

Run from the repository root (takes the machine's cores for a while):

    .venv/bin/python bench/worker_layout.py [--data PATH] [--model smollm2-135m] [--smoke]

Both sides run the same small study: 4 runs (uniform and linear_decay, r8, seeds 0
and 1) of 20 steps on 100 Alpaca examples (80 train, 10 validation, 10 test), each
through `adaptive_lora.study.ray_executor.RayExecutor` on a local Ray:

* 1 worker × all cores: one run at a time, torch using every core;
* one worker per core: as many runs at once as cores, one thread each.

A side's wall time runs from its first run handed out to its last result stored
(worker start and model load included, Ray's own start not). It prints runs/hour for
each side, their ratio, and the per-run fixed overhead: everything in a run's wall
time (the store's `seconds`) that is not training (`train_seconds` in its metrics):
model load, allocation (`allocation_seconds`), evaluation (`eval_seconds`), saving
and shipping the run folder, as a share of that wall time, on the parallel side.
The last line reads `speedup=<ratio>x overhead=<percent>%`.

`--smoke` (2 steps, 16 examples) checks that the benchmark runs, nothing more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from adaptive_lora.study.ray_executor import RayExecutor, Resources
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"


def write_study(folder: Path, *, model: str, data: Path, smoke: bool) -> Path:
    """The benchmark's 4-run study file in `folder` (its results land in folder/out)."""
    n_train, n_val, n_test = (12, 2, 2) if smoke else (80, 10, 10)
    spec = {
        "name": "throughput",
        "model": model,
        "data": {
            "source": str(data),
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "max_length": 256,
        },
        "budgets": ["r8"],
        "strategies": ["uniform", "linear_decay"],
        "seeds": [0, 1],
        "train": {"max_steps": 2 if smoke else 20, "batch_size": 4},
        "eval": {"n_generate": 2 if smoke else 8, "max_new_tokens": 8 if smoke else 32},
        "out": str(folder / "out"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_side(path: Path, *, workers: int, threads: int) -> tuple[float, list]:
    """Run the study on `workers` workers of `threads` threads; (wall seconds, stored rows)."""
    study = load_study(path)
    executor = RayExecutor(
        workers=workers, resources=Resources(threads_per_run=threads), log=lambda line: None
    )
    executor.connect()
    try:
        started = time.perf_counter()
        summary = run_study(study, executor=executor, quiet=True, log=lambda line: None)
        wall = time.perf_counter() - started
    finally:
        executor.close()
    if summary.failed or summary.lost:
        sys.exit(f"runs did not finish: {summary.failed + summary.lost}")
    with StudyStore.open(study.store_path, create=False) as store:
        return wall, store.rows()


def overhead_lines(rows: list) -> tuple[float, str]:
    """Mean share (%) of a run's wall time that is not training, and its breakdown."""
    parts = {"train": [], "allocation": [], "evaluation": [], "other": [], "wall": []}
    for row in rows:
        m = row.metrics
        parts["wall"].append(row.seconds)
        parts["train"].append(m["train_seconds"])
        parts["allocation"].append(m.get("allocation_seconds") or 0.0)
        parts["evaluation"].append(m["eval_seconds"])
        parts["other"].append(
            row.seconds - m["train_seconds"] - parts["allocation"][-1] - m["eval_seconds"]
        )
    share = statistics.mean(1.0 - t / w for t, w in zip(parts["train"], parts["wall"])) * 100
    mean = {k: statistics.mean(v) for k, v in parts.items()}
    text = (
        f"per run (mean): wall {mean['wall']:.1f} s = train {mean['train']:.1f} s + "
        f"allocation {mean['allocation']:.1f} s + evaluation {mean['evaluation']:.1f} s + "
        f"other (model load, saving, shipping) {mean['other']:.1f} s"
    )
    return share, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="2 steps on 16 examples")
    args = parser.parse_args()
    cores = args.cores
    sides = [(1, cores), (cores, 1)]  # (workers, threads per run)
    results = {}
    with tempfile.TemporaryDirectory(prefix="study-throughput-") as scratch:
        for workers, threads in sides:
            folder = Path(scratch) / f"w{workers}t{threads}"
            path = write_study(folder, model=args.model, data=args.data, smoke=args.smoke)
            wall, rows = run_side(path, workers=workers, threads=threads)
            results[workers, threads] = (wall, rows)
            print(
                f"{workers} worker(s) × {threads} thread(s): {len(rows)} runs in {wall:.1f} s "
                f"→ {len(rows) / wall * 3600:.1f} runs/hour",
                flush=True,
            )
    serial, parallel = (results[side][0] for side in sides)
    share, text = overhead_lines(results[sides[1]][1])
    print(text)
    print(f"speedup={serial / parallel:.2f}x overhead={share:.1f}%")


if __name__ == "__main__":
    main()
