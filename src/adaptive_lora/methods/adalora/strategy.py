"""AdaLoRA as a strategy: its *final* allocation is learned during training.

What this registers is the budget side only: AdaLoRA's target is an average rank
(`r8` → target rank 8), so the allocation it starts from is uniform at the
target rank. The run builds PEFT `AdaLoraConfig` adapters at `init_ratio` × the
target instead (`adapter.py` beside this file) and prunes them back during
training; the run record keeps both parameter counts and the final ranks.

Zhang et al. 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning", ICLR.
"""

from adaptive_lora.allocation.budget import reference_rank
from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.errors import UserError

NAME = "adalora"  # the strategy's name; its adapter hooks register under it too


@register(NAME)
def adalora(
    ctx: AllocationContext,
    *,
    init_ratio: float = 1.5,
    tinit_ratio: float = 0.1,
    tfinal_ratio: float = 0.2,
    delta_t: int | None = None,
    orth_reg_weight: float = 0.5,
    beta1: float = 0.85,
    beta2: float = 0.85,
) -> dict[str, int]:
    """AdaLoRA (Zhang et al. 2023): SVD adapters pruned during training to the target rank."""
    if init_ratio < 1.0:
        raise UserError(f"adalora init_ratio must be >= 1, got {init_ratio}")
    if not (0 <= tinit_ratio < 1 and 0 <= tfinal_ratio < 1 and tinit_ratio + tfinal_ratio < 1):
        raise UserError("adalora tinit_ratio + tfinal_ratio must be < 1 (both >= 0)")
    return ctx.apportion({m.name: m.cost_per_rank for m in ctx.inventory})


def target_rank(allocation) -> int:
    """AdaLoRA's target average rank for an allocation's budget."""
    return max(1, round(reference_rank(allocation.budget, allocation.inventory)))
