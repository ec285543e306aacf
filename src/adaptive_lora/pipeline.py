"""The steps shared by `allocate`, `train` and studies: model → inventory → allocation."""

from __future__ import annotations

from typing import Any

from adaptive_lora.allocation import (
    Allocation,
    AllocationContext,
    allocate,
    get_strategy,
    resolve_budget,
)
from adaptive_lora.inventory import build_inventory


def allocation_for(
    *,
    model_spec: str,
    strategy: str,
    budget: str,
    params: dict[str, Any] | None = None,
    target: str = "all",
    min_rank: int = 1,
    max_rank: int | None = None,
    seed: int = 0,
    data: str = "builtin",
) -> Allocation:
    """Allocate for a model named by spec, loading weights only if the strategy needs them."""
    chosen = get_strategy(strategy)
    chosen.check_params(params or {})  # fail on a bad parameter before any loading
    if chosen.needs_weights:
        from adaptive_lora.models import load_model

        loaded = load_model(model_spec)
        model, fingerprints = loaded.model, {"model": loaded.fingerprint.get("sha256", model_spec)}
    else:
        from adaptive_lora.models import load_skeleton

        model, fingerprints, loaded = load_skeleton(model_spec), {}, None
    inventory = build_inventory(model, target)
    ctx = AllocationContext(
        inventory=inventory,
        budget=resolve_budget(budget, inventory),
        min_rank=min_rank,
        max_rank=max_rank,
        seed=seed,
        model=model if chosen.needs_weights else None,
        fingerprints=fingerprints,
    )
    if chosen.needs_data:
        from adaptive_lora.calibration import calibration_from_source

        ctx.calibration = calibration_from_source(data, loaded)
    return allocate(strategy, ctx, params)
