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


def run_allocation(config: Any, loaded: Any, splits: Any) -> Allocation:
    """The allocation of one configured run, on the loaded model and its training split.

    Data-driven strategies get calibration batches from the *training* split
    only; validation and test never reach them.
    """
    from adaptive_lora.models import cache_root

    settings = config.allocation
    chosen = get_strategy(settings.strategy)
    inventory = build_inventory(loaded.model, settings.target)
    ctx = AllocationContext(
        inventory=inventory,
        budget=resolve_budget(settings.budget, inventory),
        min_rank=settings.min_rank,
        max_rank=settings.max_rank,
        seed=config.seed,
        model=loaded.model if chosen.needs_weights else None,
        cache_dir=str(cache_root() / "importance"),
        fingerprints={
            "model": str(loaded.fingerprint.get("sha256") or loaded.fingerprint.get("hub_id")),
            "data": splits.data_hash,
        },
    )
    if chosen.needs_data:
        from adaptive_lora.calibration import make_calibration

        ctx.calibration = make_calibration(
            splits.train,
            loaded.tokenizer,
            max_length=config.data.max_length,
            template=config.data.template,
            data_hash=splits.data_hash,
        )
    return allocate(settings.strategy, ctx, settings.params)
