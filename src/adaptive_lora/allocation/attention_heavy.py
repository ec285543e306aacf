"""More rank to attention projections than to MLP projections."""

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.errors import UserError


@register("attention_heavy")
def attention_heavy(ctx: AllocationContext, *, multiple: float = 2.0) -> dict[str, int]:
    """Attention modules get `multiple` × the rank of MLP modules, at the same budget."""
    if multiple <= 0:
        raise UserError(f"attention_heavy multiple must be > 0, got {multiple}")
    return ctx.apportion(
        {
            m.name: m.cost_per_rank * (multiple if m.group == "attention" else 1.0)
            for m in ctx.inventory
        }
    )
