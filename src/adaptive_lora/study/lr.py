"""Learning-rate choice per strategy × budget, on validation loss only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adaptive_lora.analysis.stats import describe
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import DONE, RunRow


@dataclass
class LrChoice:
    """The learning rate chosen for one strategy × budget, on validation loss."""

    label: str
    budget: str
    candidates: list[float]
    val_loss_mean: dict[float, float]  # lr → mean validation loss over its finished seeds
    n_seeds: dict[float, int]
    chosen: float | None  # None: no candidate has a finished run yet


def select_lr(study: Study, rows: Sequence[RunRow]) -> dict[tuple[str, str], LrChoice]:
    """Per strategy label × budget, the lr with the lowest mean val_loss across seeds.

    Only finished runs count. With a single candidate it is chosen as is. Test loss
    never enters the choice (DESIGN.md: model selection uses validation).
    """

    by_key: dict[tuple[str, str, float], list[float]] = {}
    for row in rows:
        if row.status == DONE:
            value = row.metrics.get("val_loss")
            if value is not None and math.isfinite(float(value)):
                by_key.setdefault((row.label, row.budget, row.lr), []).append(float(value))
    choices = {}
    for label in study.labels:
        candidates = list(study.lrs_for(label))
        for budget in study.budgets:
            means, counts = {}, {}
            for lr in candidates:
                values = by_key.get((label, budget, lr), [])
                counts[lr] = len(values)
                if values:
                    means[lr] = describe(values)["mean"]
            if len(candidates) == 1:
                chosen = candidates[0]
            else:
                chosen = min(means, key=lambda lr: (means[lr], lr)) if means else None
            choices[(label, budget)] = LrChoice(label, budget, candidates, means, counts, chosen)
    return choices
