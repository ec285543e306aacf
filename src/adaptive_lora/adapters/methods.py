"""How a run turns its allocation into trainable adapters, and what a method may change.

The recipe (`run.py`) asks `build_adapter` for the adapters of an allocation and gets
a `BuiltAdapter` back: the PEFT model, the training-loop hooks, what building records,
and what to record once training is done. Every strategy gets LoRA with the
allocation's ranks unless its method registered `MethodHooks` that say otherwise:

* `build` replaces LoRA entirely (AdaLoRA, `methods/adalora/`: ranks learned in training);
* `init` sets the LoRA weights from the base model (EVA's SVD init, `methods/eva/`);
* `export_refusal` / `export_caveat` tell `adapters/export.py` what a LoRA config file
  cannot carry.

This module dispatches on which hooks a method has, never on its name. Methods register
their hooks from above (`methods/__init__.py` is that registry), as strategies register
with `allocation.core.register`: a strategy with no hooks is plain LoRA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from adaptive_lora.adapters.lora import AdapterSettings, apply_lora
from adaptive_lora.allocation.core import Allocation


@dataclass
class BuiltAdapter:
    """Adapters on the model, ready to train."""

    peft_model: nn.Module
    hooks: dict[str, Any] = field(default_factory=dict)  # train_adapter's after_step, extra_loss
    records: dict[str, Any] = field(default_factory=dict)  # metrics the build itself sets
    # After training: the metrics the method adds (AdaLoRA's final ranks and count).
    finish: Callable[[], dict[str, Any]] = dict


# (model, allocation, settings, run seed, total steps) -> the method's own adapters.
BuildHook = Callable[[nn.Module, Allocation, AdapterSettings, int, int], BuiltAdapter]
# (base model, allocation, calibration) -> None, or what to apply to the LoRA model once
# PEFT has wrapped it, which returns the metrics it records.
InitHook = Callable[
    [nn.Module, Allocation, Callable[[], Any]],
    Callable[[nn.Module], dict[str, Any]] | None,
]


@dataclass(frozen=True)
class MethodHooks:
    """What a method changes about plain LoRA; a hook left None keeps LoRA's behaviour."""

    build: BuildHook | None = None  # builds the adapters itself (no LoRA)
    init: InitHook | None = None  # initialises LoRA from the base model, before PEFT wraps it
    # Why no fixed-rank LoRA config describes this method's adapters (export refuses).
    export_refusal: str | None = None
    # What an exported LoRA config leaves out for these strategy params ("" for nothing).
    export_caveat: Callable[[dict[str, Any]], str] | None = None


PLAIN_LORA = MethodHooks()
METHODS: dict[str, MethodHooks] = {}


def register_method(strategy: str, hooks: MethodHooks) -> None:
    """Attach a method's hooks to the strategy of that name."""
    METHODS[strategy] = hooks


def method_hooks(strategy: str) -> MethodHooks:
    """The hooks of `strategy`'s method; plain LoRA's (none) if it registered none."""
    return METHODS.get(strategy, PLAIN_LORA)


def build_adapter(
    model: nn.Module,
    allocation: Allocation,
    settings: AdapterSettings,
    seed: int,
    *,
    total_steps: int,
    calibration: Callable[[], Any],
) -> BuiltAdapter:
    """The adapters of `allocation` on `model`, by the hooks its strategy's method has.

    `calibration` gives the training split's calibration batches, read only by an `init`
    hook that needs them, and before PEFT wraps the model.
    """
    hooks = method_hooks(allocation.strategy)
    if hooks.build is not None:
        return hooks.build(model, allocation, settings, seed, total_steps)
    # An init hook reads the base model's layer inputs: before PEFT wraps it.
    apply_init = hooks.init(model, allocation, calibration) if hooks.init else None
    peft_model = apply_lora(model, allocation, settings, seed)
    records = apply_init(peft_model) if apply_init is not None else {}
    return BuiltAdapter(peft_model, records=records)
