"""Rank that grows linearly with depth: PRILoRA's direction, the reverse of `linear_decay`.

Zhang et al. 2024, "PRILoRA: Pruned and Rank-Increasing Low-Rank Adaptation" (EACL
Findings) raise the rank linearly from the first layer to the last. Its own label in
studies and reports, not a hidden parameter of `linear_decay`.
"""

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.allocation.linear_decay import depth_profile
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import layer_count


@register("linear_increase")
def linear_increase(ctx: AllocationContext, *, ratio: float = 4.0) -> dict[str, int]:
    """Rank grows linearly with depth; last-layer rank is `ratio` × first-layer rank.

    Every module kind in a layer gets the same ideal rank, so the budget's split
    between kinds is the uniform one.
    """
    if ratio < 1.0:
        raise UserError(f"linear_increase ratio must be >= 1, got {ratio}")
    n_layers = layer_count(ctx.inventory)
    return ctx.apportion(
        {
            m.name: m.cost_per_rank * depth_profile(m.layer, n_layers, ratio, reverse=True)
            for m in ctx.inventory
        }
    )
