"""The baseline: the same rank on every target module."""

from adaptive_lora.allocation.core import AllocationContext, register


@register("uniform")
def uniform(ctx: AllocationContext) -> dict[str, int]:
    """The same rank everywhere (exact for an `rN` budget)."""
    if ctx.budget.rank is not None:
        return {m.name: ctx.budget.rank for m in ctx.inventory}
    # An explicit parameter count: equal rank means a parameter share ∝ cost per rank.
    return ctx.apportion({m.name: m.cost_per_rank for m in ctx.inventory})
