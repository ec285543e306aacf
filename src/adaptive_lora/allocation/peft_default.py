"""The placement most LoRA users train: the modules PEFT adapts when none are named."""

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.allocation.placement import uniform_within
from adaptive_lora.errors import UserError
from adaptive_lora.model.peft_targets import peft_default_modules, peft_default_targets


@register("peft_default")
def peft_default(ctx: AllocationContext) -> dict[str, int]:
    """Equal rank on PEFT's default targets (q, v on Llama; c_attn on GPT-2), none elsewhere.

    The targets are PEFT's own, looked up by the model's `config.model_type`; a type PEFT
    has no default for is refused in one line.
    """
    try:
        chosen = peft_default_modules(ctx.inventory, ctx.model_type)
    except UserError as error:
        raise UserError(f"peft_default: {error}") from None
    targets = peft_default_targets(ctx.model_type)
    ctx.report["peft_default_targets"] = targets if isinstance(targets, str) else list(targets)
    return uniform_within(ctx, chosen, "peft_default")
