"""The baseline: the same rank on every target module."""

from adaptive_lora.allocation.budget import tolerance, uniform_cost
from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.errors import UserError


@register("uniform")
def uniform(ctx: AllocationContext) -> dict[str, int]:
    """The same rank everywhere (exact for an `rN` budget)."""
    check_uniform_spends(ctx.budget.label, ctx.budget.params, ctx.inventory, ctx.min_rank)
    # Equal rank means a parameter share ∝ cost per rank; for an `rN` budget this
    # is exactly rank N, and the rank bounds are checked like everyone else's.
    return ctx.apportion({m.name: m.cost_per_rank for m in ctx.inventory})


def check_uniform_spends(label: str, params: int, inventory, min_rank: int = 1) -> None:
    """Refuse, in one line, a budget below rank 1 on every target module.

    There `uniform` is no baseline: with `min_rank: 0` the apportioning would hand rank 1
    to some modules and 0 to the rest (not a uniform rank), and with a floor of 1 no
    allocation fits. A placement (`peft_default`, `attention_only`) exists there. With
    `min_rank: 0` a budget within the tolerance of r1 still runs (as rank 1 everywhere).
    """
    floor = uniform_cost(inventory, 1)
    slack = tolerance(inventory, params) if min_rank == 0 else 0
    if params < floor - slack:
        raise UserError(
            f"uniform cannot spend budget {label}: {params:,} parameters is below the "
            f"{floor:,} that rank 1 on every target module costs; below r1 make a placement "
            "the baseline (peft_default: what PEFT trains by default), or use at least r1 "
            "or a narrower `target`"
        )
