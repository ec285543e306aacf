"""The numbers of a report, computed once from the store and written to stats.json."""

from __future__ import annotations

import json
import math
from typing import Any

from adaptive_lora.analysis import stats
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    RunRow,
)

PRIMARY = "test_loss"


# (metric key, name in prose, lower is better)
SECONDARY = (
    ("val_loss", "validation loss", True),
    ("rouge_l", "ROUGE-L", False),
    ("exact_match", "exact match", False),
)


LOSS_DECIMALS = 4


def _value(row: RunRow, key: str) -> float:
    value = row.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def summarise(by_seed: dict[int, float]) -> dict[str, Any]:
    """`stats.describe` of the finite values, plus the 95% t interval of their mean."""
    finite = [v for v in by_seed.values() if math.isfinite(v)]
    out = stats.describe(finite)
    out["ci_t"] = stats.mean_ci_t(finite)
    out["values"] = {k: by_seed[k] for k in sorted(by_seed)}
    return out


def analyse(
    study: Study, rows: list[RunRow], *, n_boot: int = 10000, boot_seed: int = 0
) -> dict[str, Any]:
    """Everything the report shows, as plain data (also written as stats.json)."""
    choices = study.select_lr(rows)
    done = [r for r in rows if r.status == DONE]
    counts = {
        status: sum(1 for r in rows if r.status == status)
        for status in (DONE, FAILED, RUNNING, PENDING)
    }
    counts[PENDING] += len(study.runs) - len(rows)  # specs never stored yet
    analysis: dict[str, Any] = {
        "study": study.name,
        "baseline": study.baseline,
        "spec_hash": study.spec_hash,
        "n_runs": len(study.runs),
        "counts": counts,
        "lr_selection": [
            {
                "label": c.label,
                "budget": c.budget,
                "candidates": c.candidates,
                "val_loss_mean": {str(lr): v for lr, v in c.val_loss_mean.items()},
                "n_seeds": {str(lr): n for lr, n in c.n_seeds.items()},
                "chosen": c.chosen,
            }
            for c in choices.values()
        ],
        "budgets": {},
    }
    for budget in study.budgets:
        chosen: dict[str, list[RunRow]] = {}
        for label in study.labels:
            lr = choices[(label, budget)].chosen
            chosen[label] = sorted(
                (r for r in done if r.label == label and r.budget == budget and r.lr == lr),
                key=lambda r: r.seed,
            )
        strategies = {}
        for label, runs in chosen.items():
            strategies[label] = {
                "lr": choices[(label, budget)].chosen,
                "seeds": [r.seed for r in runs],
                "missing_seeds": [s for s in study.seeds if s not in {r.seed for r in runs}],
                "run_ids": [r.id for r in runs],
                PRIMARY: summarise({r.seed: _value(r, PRIMARY) for r in runs}),
                "trainable_params": stats.describe(
                    [v for r in runs if math.isfinite(v := _value(r, "trainable_params"))]
                ),
                "deviation_pct": stats.describe(
                    [v for r in runs if math.isfinite(v := _value(r, "deviation_pct"))]
                ),
                "train_seconds": stats.describe(
                    [v for r in runs if math.isfinite(v := _value(r, "train_seconds"))]
                ),
                "wall_seconds": stats.describe([r.seconds for r in runs if r.seconds]),
            }
        primary = {
            label: {r.seed: _value(r, PRIMARY) for r in runs} for label, runs in chosen.items()
        }
        comparisons = (
            stats.compare_family(
                primary, study.baseline, n_boot=n_boot, seed=boot_seed, metric="test loss"
            )
            if len(primary) > 1
            else {}
        )
        secondary = {}
        for key, name, lower in SECONDARY:
            values = {
                label: {r.seed: _value(r, key) for r in runs} for label, runs in chosen.items()
            }
            if not any(math.isfinite(v) for by_seed in values.values() for v in by_seed.values()):
                continue
            secondary[key] = {
                "name": name,
                "lower_is_better": lower,
                "summary": {label: summarise(v) for label, v in values.items()},
                "comparisons": stats.compare_family(
                    values,
                    study.baseline,
                    lower_is_better=lower,
                    n_boot=n_boot,
                    seed=boot_seed,
                    metric=name,
                )
                if len(values) > 1
                else {},
            }
        analysis["budgets"][budget] = {
            "strategies": strategies,
            "comparisons": comparisons,
            "secondary": secondary,
        }
    return analysis


_ENV_WORDS = (
    "version",
    "device",
    "host",
    "git",
    "commit",
    "cpu",
    "gpu",
    "cuda",
    "platform",
    "thread",
    "python",
    "torch",
    "transformers",
    "peft",
    "sha256",
    "fingerprint",
    "hash",
    "dtype",
    "precision",
)


_ENV_SKIP = ("second", "time", "started", "ended", "date", "load_")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix] = text if len(text) <= 100 else text[:97] + "..."


def environment(rows: list[RunRow], limit: int = 40) -> dict[str, list[str]]:
    """Versions, device, host, commits and fingerprints recorded in the run manifests.

    Several distinct values for one key are all listed: a study whose runs ran
    under different versions says so.
    """
    found: dict[str, set[str]] = {}
    for row in rows:
        if row.status != DONE:
            continue
        flat: dict[str, str] = {}
        _flatten("", row.manifest, flat)
        for key, text in flat.items():
            low = key.lower()
            if any(w in low for w in _ENV_WORDS) and not any(s in low for s in _ENV_SKIP):
                found.setdefault(key, set()).add(text)
    return {key: sorted(found[key]) for key in sorted(found)[:limit]}
