"""The baseline: the same rank on every target module."""

from adaptive_lora.allocation.core import AllocationContext, register


@register("uniform")
def uniform(ctx: AllocationContext) -> dict[str, int]:
    """The same rank everywhere (exact for an `rN` budget)."""
    # Equal rank means a parameter share ∝ cost per rank; for an `rN` budget this
    # is exactly rank N, and the rank bounds are checked like everyone else's.
    return ctx.apportion({m.name: m.cost_per_rank for m in ctx.inventory})
