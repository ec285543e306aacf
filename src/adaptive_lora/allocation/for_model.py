"""Model → inventory → allocation: the steps `allocate`, `train`, studies and the API share."""

from __future__ import annotations

import warnings
from typing import Any

from adaptive_lora.allocation.budget import resolve_budget
from adaptive_lora.allocation.core import Allocation, AllocationContext, allocate, get_strategy
from adaptive_lora.config import DataSettings
from adaptive_lora.data.calibration import calibration_from_source, make_calibration
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import GenericKindsWarning, ModuleInfo, build_inventory
from adaptive_lora.model.loading import cache_root, load_model, load_skeleton
from adaptive_lora.model.peft_targets import model_type_of


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
    get_strategy(strategy).check_params(params or {})  # fail on a bad parameter before loading
    options = dict(params=params, target=target, min_rank=min_rank, max_rank=max_rank, seed=seed)
    if not get_strategy(strategy).needs_weights:
        return allocation_on_model(load_skeleton(model_spec), strategy, budget, **options)
    loaded = load_model(model_spec)
    return allocation_on_model(
        loaded.model,
        strategy,
        budget,
        tokenizer=loaded.tokenizer,
        data=data,
        fingerprints={"model": loaded.fingerprint.get("sha256", model_spec)},
        **options,
    )


def allocation_on_model(
    model: Any,
    strategy: str,
    budget: str | int,
    *,
    params: dict[str, Any] | None = None,
    target: str = "all",
    min_rank: int = 1,
    max_rank: int | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    data: str = "builtin",
    fingerprints: dict[str, str] | None = None,
) -> Allocation:
    """Allocate for a model already in memory (weights, or a meta-device skeleton).

    Data-driven strategies calibrate on the training split of `data`, tokenized with
    `tokenizer`, split as a run with the default data settings would split it.
    """
    chosen = get_strategy(strategy)
    inventory = build_inventory(model, target)
    model_type = model_type_of(model)
    ctx = AllocationContext(
        inventory=inventory,
        budget=resolve_budget(budget, inventory, model_type),
        min_rank=min_rank,
        max_rank=max_rank,
        seed=seed,
        model_type=model_type,
        model=model if chosen.needs_weights else None,
        fingerprints=fingerprints or {},
        data=DataSettings(source=data),
    )
    if chosen.needs_data:
        if tokenizer is None:
            raise UserError(f"strategy {strategy} calibrates on data: pass the model's tokenizer")
        ctx.calibration = calibration_from_source(data, tokenizer)
    return allocate(strategy, ctx, params)


def skeleton_shapes(
    model_spec: str, target: str = "all"
) -> tuple[list[ModuleInfo], str | None] | None:
    """The model's target modules and its model type from its shapes alone (its config on
    the meta device, no weights): what a budget can be checked against before any model
    loads.

    None when the config cannot be read without the network (a hub id not in the local
    cache) or the skeleton cannot be built: the run then checks its budget itself. A bad
    `target` is its one-line error.
    """
    try:
        skeleton = load_skeleton(model_spec, local_only=True)
    except Exception:  # noqa: BLE001 - a shape-only look that fails leaves it to the run
        return None
    with warnings.catch_warnings():  # generic kinds: the run itself says so
        warnings.simplefilter("ignore", GenericKindsWarning)
        return build_inventory(skeleton, target), model_type_of(skeleton)


def skeleton_inventory(model_spec: str, target: str = "all") -> list[ModuleInfo] | None:
    """`skeleton_shapes`' modules alone."""
    shapes = skeleton_shapes(model_spec, target)
    return shapes[0] if shapes is not None else None


def run_allocation(config: Any, loaded: Any, splits: Any) -> Allocation:
    """The allocation of one configured run, on the loaded model and its training split.

    Data-driven strategies get calibration batches from the *training* split
    only; validation and test never reach them.
    """

    settings = config.allocation
    chosen = get_strategy(settings.strategy)
    inventory = build_inventory(loaded.model, settings.target)
    model_type = model_type_of(loaded.model)
    ctx = AllocationContext(
        inventory=inventory,
        budget=resolve_budget(settings.parsed_budget, inventory, model_type),  # read already
        min_rank=settings.min_rank,
        max_rank=settings.max_rank,
        seed=config.seed,
        model_type=model_type,
        model=loaded.model if chosen.needs_weights else None,
        cache_dir=str(cache_root() / "importance"),
        data=config.data,
        fingerprints={
            "model": str(loaded.fingerprint.get("sha256") or loaded.fingerprint.get("hub_id")),
            "data": splits.data_hash,
        },
    )
    if chosen.needs_data:
        ctx.calibration = make_calibration(
            splits.train,
            loaded.tokenizer,
            max_length=config.data.max_length,
            template=config.data.template,
            data_hash=splits.data_hash,
        )
    return allocate(settings.strategy, ctx, settings.params)
