"""Rank that falls linearly with depth, from the first layer to the last."""

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import layer_count


def depth_profile(layer: int, n_layers: int, ratio: float, reverse: bool) -> float:
    """Relative rank of `layer`: `ratio` at the first layer down to 1 at the last."""
    position = layer / (n_layers - 1) if n_layers > 1 else 0.0
    if reverse:
        position = 1.0 - position
    return ratio - (ratio - 1.0) * position


@register("linear_decay")
def linear_decay(
    ctx: AllocationContext, *, ratio: float = 4.0, reverse: bool = False
) -> dict[str, int]:
    """Rank falls linearly with depth; first-layer rank is `ratio` × last-layer rank.

    `reverse=True` makes rank grow with depth instead. Every module kind in a
    layer gets the same ideal rank, so the budget's split between kinds is the
    uniform one.
    """
    if ratio < 1.0:
        raise UserError(f"linear_decay ratio must be >= 1 (use reverse=true to flip), got {ratio}")
    n_layers = layer_count(ctx.inventory)
    return ctx.apportion(
        {
            m.name: m.cost_per_rank * depth_profile(m.layer, n_layers, ratio, reverse)
            for m in ctx.inventory
        }
    )
