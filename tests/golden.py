"""Golden re-runs: a few short runs on tiny models built in code, every number they
compute stored per CPU family, so that a change which moves a number is seen.

What decides whether two runs pool is `NUMERICS_VERSION` (`environment.py`), not the bytes
of the source: code may be renamed, moved, formatted and sped up freely as long as these
runs give the same numbers to the last digit. A change that means to move them bumps
`NUMERICS_VERSION` and re-records, on every family it can reach:

    .venv/bin/python tests/golden.py --record

The numbers depend on the CPU's kernels (a bf16 sum's order is the matrix-instruction
family's; fp32 kernels are chosen by ISA too), so each family has its own file in
`tests/golden/`. On a family with no file the test is skipped and says how to record one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # `tiny`, when run as a script

from adaptive_lora.compute.precision import resolve_precision  # noqa: E402
from adaptive_lora.config import RunConfig  # noqa: E402
from adaptive_lora.environment import NUMERICS_VERSION, matrix_family  # noqa: E402
from adaptive_lora.run import execute_run  # noqa: E402
from tiny import save_tiny, tiny_gpt2, tiny_llama  # noqa: E402

GOLDEN_DIR = HERE / "golden"

# name → (model, strategy, precision). Together they pass through every stage a study's
# numbers come from: allocation (rule-based, the gradient probe, AdaLoRA), the LoRA and
# AdaLoRA adapters on Llama and GPT-2 (fused Conv1D), the fp32 and bf16 training steps,
# held-out losses, per-item records and greedy generation.
RUNS: dict[str, tuple[str, str, str]] = {
    "llama-uniform-auto": ("llama", "uniform", "auto"),
    "llama-linear_decay-bf16": ("llama", "linear_decay", "bf16"),
    "gpt2-attention_heavy-auto": ("gpt2", "attention_heavy", "auto"),
    "llama-empirical-fp32": ("llama", "empirical", "fp32"),
    "llama-adalora-auto": ("llama", "adalora", "auto"),
}
# What varies between any two runs of the same numbers: times, throughput, memory, and
# where a cache file lies (keys holding these words, at any depth).
VARIES = ("seconds", "per_second", "memory", "rss", "path")


def family() -> str:
    """This machine's CPU family as golden files are named (`AMX-bf16`, `AVX2`, ...)."""
    return matrix_family(resolve_precision("bf16").device)


def golden_path(name: str | None = None) -> Path:
    return GOLDEN_DIR / f"{(name or family()).replace(' ', '_').replace('/', '_')}.json"


def run_config(model_folder: Path, strategy: str, precision: str) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": str(model_folder),
            # The split the numbers were recorded with (before test_first was the default).
            "data": {"source": "builtin", "n_train": 24, "n_val": 8, "n_test": 8,
                     "split": "train_first"},
            "allocation": {"strategy": strategy, "budget": "r4"},
            # One thread: a sum split over threads is summed in another order.
            "train": {"max_steps": 4, "batch_size": 4, "lr": 5e-3, "threads": 1,
                      "precision": precision},
            "eval": {"n_generate": 3, "max_new_tokens": 6, "batch_size": 8},
        }
    )  # fmt: skip


def _computed(value: Any) -> Any:
    """`value` without the keys (at any depth) that vary between runs of the same numbers."""
    if isinstance(value, dict):
        return {k: _computed(v) for k, v in value.items() if not any(w in k for w in VARIES)}
    return value


def numbers(metrics: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Every number a run computed: its metrics but times and memory, and its answers."""
    kept = _computed(metrics)
    lines = (run_dir / "generations.jsonl").read_text().splitlines()
    kept["generations"] = [json.loads(line) for line in lines]
    return json.loads(json.dumps(kept))  # as stored: tuples become lists


def golden_runs(work: Path) -> dict[str, dict[str, Any]]:
    """Run every golden run in `work` and return name → its numbers and precision."""
    folders = {
        "llama": save_tiny(tiny_llama(), work / "llama"),
        "gpt2": save_tiny(tiny_gpt2(), work / "gpt2"),
    }
    found = {}
    for name, (model, strategy, precision) in RUNS.items():
        torch.manual_seed(0)  # as the test suite's autouse fixture leaves it
        result = execute_run(run_config(folders[model], strategy, precision), work, quiet=True)
        assert result.status == "done", f"golden run {name} failed: {result.error}"
        found[name] = {
            "precision": result.manifest["precision"],
            "numbers": numbers(result.metrics, result.run_dir),
        }
    return found


def record() -> Path:
    with tempfile.TemporaryDirectory() as work:
        os.environ["ADAPTIVE_LORA_CACHE"] = str(Path(work) / "cache")  # as the tests: no cache
        runs = golden_runs(Path(work))
    path = golden_path()
    path.parent.mkdir(exist_ok=True)
    document = {
        "numerics_version": NUMERICS_VERSION,
        "family": family(),
        "torch": torch.__version__,
        "runs": runs,
    }
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path


def differences(expected: Any, found: Any, where: str = "") -> list[str]:
    """Where two stored structures differ, to the last digit of every float.

    Only the stored keys are compared: a key the code records since (a new metric, a new
    field of the generation records, such as `hit_token_limit`) moves no stored number,
    while a stored key gone or changed is a difference.
    """
    if isinstance(expected, dict) and isinstance(found, dict):
        return [
            d
            for k in sorted(expected)
            for d in differences(expected[k], found.get(k, _MISSING), f"{where}.{k}")
        ]
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        return [d for i, (a, b) in enumerate(zip(expected, found)) for d in differences(a, b, f"{where}[{i}]")]  # fmt: skip
    return [] if expected == found else [f"{where.lstrip('.')}: {expected!r} → {found!r}"]


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write this family's file")
    if parser.parse_args().record:
        print(f"recorded {record()} (numerics version {NUMERICS_VERSION})")


if __name__ == "__main__":
    main()
