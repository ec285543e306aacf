"""The modules PEFT adapts when a `LoraConfig` names none: its default targets per model type.

The strategy `peft_default` and the budget `qv:rN` both mean "what PEFT would adapt on
this model" (q and v on Llama, `c_attn` on GPT-2): the placement most LoRA users train.
Both read it here, from PEFT's own table keyed by `config.model_type`, so they follow
the installed PEFT rather than a copy of it, and match module names by PEFT's own rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo


def model_type_of(model: Any) -> str | None:
    """The model's `config.model_type` (`llama`, `gpt2`, ...), or None without a config."""
    return getattr(getattr(model, "config", None), "model_type", None)


def peft_default_targets(model_type: str | None) -> tuple[str, ...] | str:
    """PEFT's default LoRA targets for a model type: module names, or one regex.

    A type PEFT has no default for is a one-line `UserError` (PEFT itself would ask for
    `target_modules`).
    """
    # Imported here: PEFT takes a second to import, and shape-only work never needs it.
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if model_type is None:
        raise UserError(
            "PEFT's default target modules depend on the model's type (config.model_type), "
            "and this model has none; use attention_only or mlp_only, or an rN budget"
        )
    targets = DEFAULTS.get(model_type)
    if targets is None:
        raise UserError(
            f"PEFT has no default target modules for model type {model_type!r}; use "
            "attention_only or mlp_only, and an rN or parameter-count budget instead of qv:rN"
        )
    return targets if isinstance(targets, str) else tuple(targets)


def peft_matches(targets: tuple[str, ...] | str, name: str) -> bool:
    """PEFT's test (`check_target_module_exists`): a regex must match the whole name, a
    list entry the name or its last dotted parts."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == key or name.endswith("." + key) for key in targets)


def peft_default_modules(
    inventory: Sequence[ModuleInfo], model_type: str | None
) -> list[ModuleInfo]:
    """The inventory's modules that PEFT adapts by default on a model of this type.

    None of them among the target modules (a `target` that leaves them out) is a
    one-line `UserError`.
    """
    targets = peft_default_targets(model_type)
    chosen = [m for m in inventory if peft_matches(targets, m.name)]
    if not chosen:
        named = targets if isinstance(targets, str) else ", ".join(targets)
        raise UserError(
            f"none of PEFT's default target modules for {model_type} ({named}) is among the "
            "target modules; widen `target` (e.g. all)"
        )
    return chosen
