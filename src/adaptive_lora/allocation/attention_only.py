"""A practitioner's placement: the attention projections only, at one rank."""

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.allocation.placement import uniform_within


@register("attention_only")
def attention_only(ctx: AllocationContext) -> dict[str, int]:
    """Equal rank on the attention projections (q, k, v, o; fused qkv), none on the MLP."""
    attention = [m for m in ctx.inventory if m.group == "attention"]
    return uniform_within(ctx, attention, "attention_only")
