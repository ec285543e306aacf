"""The baseline: the same rank on every target module."""

from adaptive_lora.allocation.budget import tolerance, uniform_cost
from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.errors import UserError


@register("uniform")
def uniform(ctx: AllocationContext) -> dict[str, int]:
    """The same rank everywhere (exact for an `rN` budget)."""
    floor = uniform_cost(ctx.inventory, 1)
    if ctx.min_rank == 0 and ctx.budget.params < floor - tolerance(
        ctx.inventory, ctx.budget.params
    ):
        # With min_rank 0 the apportioning would hand rank 1 to some modules and 0 to
        # the rest: not a uniform rank, so no baseline. Below r1 only adaptive strategies run.
        raise UserError(
            f"uniform cannot spend budget {ctx.budget.label}: {ctx.budget.params:,} parameters "
            f"is below the {floor:,} that rank 1 on every target module costs; use at least r1, "
            "a narrower `target`, or another strategy as the baseline"
        )
    # Equal rank means a parameter share ∝ cost per rank; for an `rN` budget this
    # is exactly rank N, and the rank bounds are checked like everyone else's.
    return ctx.apportion({m.name: m.cost_per_rank for m in ctx.inventory})
