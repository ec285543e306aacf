"""Rank-allocation strategies: one file per strategy, found by name in one registry.

Importing this package registers every built-in strategy.
"""

from adaptive_lora.allocation import adalora as _adalora  # noqa: F401
from adaptive_lora.allocation import (  # noqa: F401
    attention_heavy,
    empirical,
    linear_decay,
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
