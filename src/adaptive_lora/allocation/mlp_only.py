"""A practitioner's placement: the MLP projections only, at one rank."""

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.allocation.placement import uniform_within


@register("mlp_only")
def mlp_only(ctx: AllocationContext) -> dict[str, int]:
    """Equal rank on the MLP projections (gate, up, down; c_fc, c_proj), none on attention."""
    mlp = [m for m in ctx.inventory if m.group == "mlp"]
    return uniform_within(ctx, mlp, "mlp_only")
