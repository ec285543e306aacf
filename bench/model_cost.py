"""What one run of a study's cell costs on a second model: the price of a replication.

Run from the repository root, with no study on the cores (takes them for ~10 minutes):

    .venv/bin/python bench/model_cost.py [--study configs/regime-map.yaml] [--run RUN_ID]
        [--models smollm2-135m gemma3-270m] [--replication configs/regime-map-gemma3.yaml]

Takes one finished run's stored configuration (by default the first finished uniform r4,
seed 1 run of the Alpaca n_train = 100 cell) and trains it again on each model, one
after the other, on one thread each (what a run gets under `run --workers 2` on two
cores). Each model is loaded once before its clock starts, so a first load's one-off
cache build (Gemma-3's GGUF joined and de-quantized) is printed apart and not counted.
A run's seconds are its wall time through `execute_run` (data, allocation, training,
evaluation, saving), with training and evaluation shown apart.

With `--replication`, what the replication study has left to its first look (and at
most, if every sequential look goes on; runs already done in its store not counted) is
priced at the last model's measured run time, two runs at a time. The last line reads
`ratio=<last/first>x run=<s>s replication=<h>h`.

`--smoke` (2 steps, 2 generated answers) checks that the benchmark runs, nothing more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from adaptive_lora.config import RunConfig
from adaptive_lora.model.loading import load_model
from adaptive_lora.run import execute_run
from adaptive_lora.study.plan import read_rows, stored_rows, would_run
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import RunRow, StudyStore

ROOT = Path(__file__).resolve().parents[1]


def stored_run(study_path: Path, run_id: str | None) -> RunRow:
    """The named finished run, or the first finished uniform r4 seed-1 Alpaca n = 100 run."""
    study = load_study(study_path)
    with StudyStore.open(study.store_path, create=False) as store:
        rows = [row for row in store.rows() if row.status == "done"]
    if run_id is not None:
        found = [row for row in rows if row.id == run_id]
        if not found:
            sys.exit(f"no finished run {run_id} in {study.store_path}")
        return found[0]
    for row in rows:
        data = row.config["data"]
        if (row.strategy, row.budget, row.seed) == ("uniform", "r4", 1) and (
            data["n_train"] == 100 and str(data["source"]).endswith(".json")
        ):
            return row
    sys.exit(f"no finished uniform r4 seed-1 run on Alpaca n_train = 100 in {study.store_path}")


def timed_run(config: dict, model: str, scratch: Path) -> dict[str, float]:
    """Train `config` on `model` (loaded before the clock starts); its seconds."""
    config = {**config, "model": model}
    started = time.perf_counter()
    loaded = load_model(model)
    load = time.perf_counter() - started
    started = time.perf_counter()
    result = execute_run(RunConfig.from_dict(config), scratch / model, loaded=loaded, quiet=True)
    wall = time.perf_counter() - started
    if result.status != "done":
        sys.exit(f"{model}: the run failed: {result.error}")
    metrics = result.metrics
    return {
        "load": load,
        "wall": wall,
        "train": metrics["train_seconds"],
        "eval": metrics["eval_seconds"],
        "steps": metrics["steps"],
        "params": loaded.fingerprint["n_params"],
    }


def replication_lines(path: Path, seconds: float) -> tuple[str, float]:
    """The replication study's runs still to do, priced at `seconds` each, two at a time:
    the expanded runs not yet done (on an empty store, the tuning runs) and the reporting
    runs to come. A study already under way is priced for what it has left."""
    study = load_study(path)
    rows = read_rows(study)
    done = sum(row is not None and row.status == "done" for row in rows.values())
    # What a plain `run` started now would execute (failed runs wait for --retry-failed).
    left = len(would_run(study, rows, retry_failed=False, lock_held=False))
    stored = stored_rows(rows)
    first, most = (left + study.runs_to_come(most=m, rows=stored) for m in (False, True))
    hours = lambda runs: runs * seconds / 2 / 3600  # noqa: E731
    text = (
        f"replication {path} ({done} runs done): {first} runs left to its first look "
        f"≈ {hours(first):.1f} h with 2 workers; up to {most} runs if every look goes on "
        f"≈ {hours(most):.1f} h"
    )
    return text, hours(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=ROOT / "configs" / "regime-map.yaml")
    parser.add_argument("--run", help="a finished run of the study (default: see above)")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--replication", type=Path, help="a study file to price")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="2 steps, 2 answers")
    args = parser.parse_args()
    row = stored_run(args.study, args.run)
    config = {**row.config, "train": {**row.config["train"], "threads": args.threads}}
    if args.smoke:
        config["train"]["max_steps"] = 2
        config["eval"] = {**config["eval"], "n_generate": 2}
    print(f"run {row.id} of {args.study} ({row.strategy} {row.budget} seed {row.seed}), "
          f"{args.threads} thread(s)", flush=True)  # fmt: skip
    timings = {}
    with tempfile.TemporaryDirectory(prefix="model-cost-") as scratch:
        for model in args.models:
            t = timings[model] = timed_run(config, model, Path(scratch))
            print(
                f"{model} ({t['params'] / 1e6:.1f}M parameters; load {t['load']:.1f} s, "
                f"not counted): run {t['wall']:.1f} s = train {t['train']:.1f} s "
                f"({t['steps']:.0f} steps, {t['train'] / t['steps']:.2f} s/step) + evaluation "
                f"{t['eval']:.1f} s + the rest {t['wall'] - t['train'] - t['eval']:.1f} s",
                flush=True,
            )
    first, last = timings[args.models[0]], timings[args.models[-1]]
    hours = float("nan")
    if args.replication is not None:
        text, hours = replication_lines(args.replication, last["wall"])
        print(text)
    print(f"ratio={last['wall'] / first['wall']:.2f}x run={last['wall']:.1f}s "
          f"replication={hours:.1f}h")  # fmt: skip


if __name__ == "__main__":
    main()
