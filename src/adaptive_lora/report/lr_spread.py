"""How firmly each learning rate was chosen: validation loss per rate and tuning seed.

A rate is chosen on the mean validation loss over a few tuning seeds (`study.lr`). When
the chosen rate beats the runner-up by less than the spread between seeds at the chosen
rate (the sd of its validation losses across the tuning seeds), another draw of tuning
seeds could have chosen the other rate: the choice was decided by seed noise, and the
report says so (in the reference study attention_heavy took 2e-3 over 1e-3 by 0.00004
against a seed sd of 0.0069). The per-seed values also draw the learning-rate figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptive_lora.study.store import DONE, RunRow


def _by_seed(choice: dict[str, Any], rows: Sequence[RunRow]) -> dict[float, dict[int, float]]:
    """Rate → {tuning seed: validation loss} of the finished runs the choice looked at."""
    seeds = set(choice["seeds"])
    out: dict[float, dict[int, float]] = {float(lr): {} for lr in choice["candidates"]}
    for row in rows:
        if row.label != choice["label"] or row.budget != choice["budget"]:
            continue
        if row.status != DONE or row.seed not in seeds or row.lr not in out:
            continue
        value = row.metrics.get("val_loss")
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[row.lr][row.seed] = float(value)
    return out


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def spread(choice: dict[str, Any], rows: Sequence[RunRow]) -> dict[str, Any]:
    """The spread of one choice (a `LrChoice.to_dict()`): per rate the values by seed, the
    mean and sd; the runner-up, the gap to it and whether the gap is within the noise."""
    by_seed = _by_seed(choice, rows)
    rates = {
        str(lr): {"by_seed": values, "mean": float(np.mean(list(values.values()))),
                  "sd": _sd(list(values.values()))}
        for lr, values in by_seed.items() if values
    }  # fmt: skip
    out: dict[str, Any] = {"rates": rates, "runner_up": None, "gap": None, "seed_sd": None}
    chosen = choice["chosen"]
    if chosen is None or str(float(chosen)) not in rates:
        out["within_noise"] = None
        return out
    means = {float(lr): choice["val_loss_mean"][lr] for lr in choice["val_loss_mean"]}
    others = {lr: m for lr, m in means.items() if lr != float(chosen)}
    if not others:
        out["within_noise"] = None
        return out
    runner_up = min(others, key=lambda lr: others[lr])
    gap = others[runner_up] - means[float(chosen)]
    seed_sd = rates[str(float(chosen))]["sd"]
    out.update(runner_up=runner_up, gap=gap, seed_sd=seed_sd)
    # An unfinished choice may still change; a single tuning seed has no spread to compare.
    decided = choice["complete"] and math.isfinite(seed_sd)
    out["within_noise"] = bool(gap < seed_sd) if decided else None
    return out
