"""Shares of a budget from per-module scores: helpers both data-driven strategies use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo


def tempered_shares(
    inventory: Sequence[ModuleInfo], values: Mapping[str, float], temperature: float
) -> dict[str, float]:
    """Parameter shares cost_i · (v_i / mean v)^t: ideal rank_i ∝ v_i^t.

    `values` are per-entry (intensive) quantities, so a module's parameter share
    is its cost per rank times its tempered value: t = 0 gives every module the
    same rank (exactly the uniform allocation), t = 1 gives ranks proportional to
    the values, i.e. each module's budget per rank-unit ∝ its value; larger t
    sharpens the contrast. Dividing by the mean only keeps v^t in floating range.
    """
    if not temperature >= 0:
        raise UserError(f"temperature must be >= 0 (0 = uniform ranks), got {temperature}")
    mean = sum(values[m.name] for m in inventory) / len(inventory)
    if temperature > 0 and not mean > 0:
        raise UserError(
            "every module scored zero, so there is nothing to allocate by; "
            "check the calibration data (does it have label tokens?)"
        )
    return {
        m.name: m.cost_per_rank * ((values[m.name] / mean) ** temperature if temperature else 1.0)
        for m in inventory
    }
