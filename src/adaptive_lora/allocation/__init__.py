"""Rank-allocation strategies: one file per strategy, found by name in one registry.

Importing this package registers every strategy that only allocates: the import list
below *is* their registry (each module registers its strategy with `@register`).
Adding such a strategy is one new file in this folder plus one name in that list.
A strategy that also brings its own adapter code (AdaLoRA, EVA) is a *method*: it lives
in its own folder in `methods/`, whose import list registers it (that registry sits
above `adapters/`, which a method's adapter code builds on).
"""

# The registry of strategies that only allocate: one line per strategy module.
from adaptive_lora.allocation import (  # noqa: F401
    attention_heavy,
    attention_only,
    empirical,
    linear_decay,
    linear_increase,
    mlp_only,
    oracle,
    peft_default,
    random_control,
    spectral,
    uniform,
)
from adaptive_lora.allocation.budget import (
    Budget,
    apportion,
    resolve_budget,
    tolerance,
    total_params,
)
from adaptive_lora.allocation.core import (
    STRATEGIES,
    Allocation,
    AllocationContext,
    Strategy,
    allocate,
    get_strategy,
    register,
)

__all__ = [
    "STRATEGIES",
    "Allocation",
    "AllocationContext",
    "Budget",
    "Strategy",
    "allocate",
    "apportion",
    "get_strategy",
    "register",
    "resolve_budget",
    "tolerance",
    "total_params",
]
