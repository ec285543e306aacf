"""How a run turns its allocation into trainable adapters: one entry per adapter method.

The recipe (`run.py`) asks `build_adapter` for the adapters of an allocation and gets
a `BuiltAdapter` back: the PEFT model, the training-loop hooks, what building records,
and what to record once training is done. Which method builds them is decided here,
by the strategy, and nowhere else:

* LoRA with the allocation's ranks (every strategy), with EVA's SVD initialisation of
  A when the `eva` strategy asks for it (`adapters/eva_init.py`);
* AdaLoRA (`adapters/adalora.py`), whose ranks are learned during training: it trains
  from `init_ratio` × the target rank, prunes by its own schedule, and records its
  final ranks and parameter count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from adaptive_lora.adapters.adalora import (
    adalora_loss_term,
    adalora_step_hook,
    apply_adalora,
    current_ranks,
    effective_parameters,
)
from adaptive_lora.adapters.eva_init import eva_init_components, load_eva_init, wants_eva_init
from adaptive_lora.adapters.lora import AdapterSettings, apply_lora
from adaptive_lora.allocation.core import Allocation

ADALORA = "adalora"  # the strategy whose adapters are AdaLoRA's (allocation/adalora.py)


@dataclass
class BuiltAdapter:
    """Adapters on the model, ready to train."""

    peft_model: nn.Module
    hooks: dict[str, Any] = field(default_factory=dict)  # train_adapter's after_step, extra_loss
    records: dict[str, Any] = field(default_factory=dict)  # metrics the build itself sets
    # After training: the metrics the method adds (AdaLoRA's final ranks and count).
    finish: Callable[[], dict[str, Any]] = dict


def build_adapter(
    model: nn.Module,
    allocation: Allocation,
    settings: AdapterSettings,
    seed: int,
    *,
    total_steps: int,
    calibration: Callable[[], Any],
) -> BuiltAdapter:
    """The adapters of `allocation` on `model`, by the method its strategy calls for.

    `calibration` gives the training split's calibration batches, read only by a method
    that needs them (EVA's initialisation) and before PEFT wraps the model.
    """
    if allocation.strategy == ADALORA:
        return _adalora(model, allocation, settings, seed, total_steps)
    records: dict[str, Any] = {}
    # EVA's optional init reads the base model's layer inputs: before PEFT wraps it.
    components = (
        eva_init_components(model, allocation, calibration())
        if wants_eva_init(allocation)
        else None
    )
    peft_model = apply_lora(model, allocation, settings, seed)
    if components is not None:
        records["eva_init_modules"] = load_eva_init(peft_model, components)
    return BuiltAdapter(peft_model, records=records)


def _adalora(
    model: nn.Module, allocation: Allocation, settings: AdapterSettings, seed: int, steps: int
) -> BuiltAdapter:
    peft_model, schedule = apply_adalora(model, allocation, settings, seed, steps)
    init_r = peft_model.peft_config["default"].init_r
    records = {
        "adalora_schedule": vars(schedule) | {"init_r": init_r},
        "initial_ranks": {name: init_r for name in allocation.ranks},
    }

    def finish() -> dict[str, Any]:
        final = current_ranks(peft_model)
        effective = effective_parameters(allocation, final)
        budget = allocation.budget.params
        return {
            "final_ranks": final,
            "effective_params": effective,
            "effective_deviation_pct": 100.0 * (effective - budget) / budget,
        }

    hooks = {
        "after_step": adalora_step_hook(peft_model),
        "extra_loss": adalora_loss_term(peft_model),
    }
    return BuiltAdapter(peft_model, hooks, records, finish)
