"""Rank-allocation strategies: one file per strategy, found by name in one registry.

Importing this package registers every built-in strategy: the import list below *is*
the registry (each module registers its strategy with `@register`). Adding a
strategy is one new file in this folder plus one name in that list.
"""

# The registry: one line per strategy module.
from adaptive_lora.allocation import (  # noqa: F401
    adalora,
    attention_heavy,
    empirical,
    eva,
    linear_decay,
    linear_increase,
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
