"""The importance probe over several calibration seeds, and how far the seeds agree:
what `adaptive-lora importance` reports (are the empirical strategy's scores stable?)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from torch import nn

from adaptive_lora.allocation.importance import (
    ImportanceResult,
    cached_importance,
    probe_importance,
    spearman,
)
from adaptive_lora.allocation.probe_settings import ProbeSettings
from adaptive_lora.data.calibration import Calibration
from adaptive_lora.model.inventory import ModuleInfo


def probe_each_seed(
    model: nn.Module,
    inventory: Sequence[ModuleInfo],
    calibration: Calibration,
    per_seed: Mapping[int, ProbeSettings],
    *,
    model_fingerprint: str,
    use_cache: bool = True,
) -> dict[int, ImportanceResult]:
    """The probe's result for each seed, from the probe cache unless `use_cache` is off."""
    results = {}
    for seed, settings in per_seed.items():
        if not use_cache:
            results[seed] = probe_importance(model, inventory, calibration, settings)
        else:
            results[seed] = cached_importance(
                model,
                inventory,
                calibration,
                settings=settings,
                model_fingerprint=model_fingerprint,
            )
    return results


def _sums(inventory: Sequence[ModuleInfo], scores: Mapping[str, float], key: str) -> dict:
    sums: dict[Any, float] = {}
    for m in inventory:
        group = getattr(m, key)
        sums[group] = sums.get(group, 0.0) + scores[m.name]
    return sums


@dataclass
class SeedSummary:
    """The seeds' scores summed up: mean per module, per layer and kind, agreement."""

    mean: dict[str, float]
    pairs: dict[str, float]  # "a-b" -> Spearman between seeds a and b
    per_layer: dict[Any, float]
    per_kind: dict[Any, float]


def summarise_seeds(
    inventory: Sequence[ModuleInfo], results: Mapping[int, ImportanceResult]
) -> SeedSummary:
    names = [m.name for m in inventory]
    mean = {n: sum(r.scores[n] for r in results.values()) / len(results) for n in names}
    pairs = {
        f"{a}-{b}": spearman(
            [results[a].scores[n] for n in names], [results[b].scores[n] for n in names]
        )
        for a, b in combinations(results, 2)
    }
    return SeedSummary(mean, pairs, _sums(inventory, mean, "layer"), _sums(inventory, mean, "kind"))
