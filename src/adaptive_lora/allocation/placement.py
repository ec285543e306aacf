"""Placements: equal rank on one set of modules, rank 0 (no adapter) on every other.

What practitioners train is a placement — PEFT's default targets (q and v on Llama),
attention only, the MLP only — at one rank. `attention_only`, `mlp_only` and
`peft_default` are those placements apportioned to the parameter budget like every
strategy, so they compete with `uniform` on equal parameters.

A module outside the placement gets rank 0 whatever the run's `min_rank`: the placement
*is* the set of modules that carry an adapter (PEFT's `target_modules`), and
`adapters/lora.py` already leaves a rank-0 module without one. `min_rank` is the floor of
the strategies that spread rank over every target module; a placement keeps it within
its own modules (at least rank 1 there). The run's `target` still defines what an `rN`
budget measures, so `mlp_only` at r8 spends what `uniform` at r8 spends.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaptive_lora.allocation.budget import apportion, tolerance, uniform_cost
from adaptive_lora.allocation.core import AllocationContext
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo


def uniform_within(
    ctx: AllocationContext, chosen: Sequence[ModuleInfo], strategy: str
) -> dict[str, int]:
    """Ranks for every inventory module: equal on `chosen` (N or N+1 where the budget is
    not a whole rank of them), 0 elsewhere, within the tolerance of the whole inventory.

    A budget below rank 1 on each chosen module is a one-line `UserError` naming the
    smallest budget that works.
    """
    budget = ctx.budget
    if not chosen:
        raise UserError(
            f"{strategy}: none of its modules is among the target modules; widen `target`"
        )
    floor = max(1, ctx.min_rank)
    smallest = uniform_cost(chosen, floor)
    if budget.params < smallest:
        raise UserError(
            f"{strategy} cannot spend budget {budget.label} ({budget.params:,} parameters): "
            f"rank {floor} on each of its {len(chosen)} modules costs {smallest:,}; use a "
            f"budget of at least {smallest} parameters"
        )
    try:
        ranks = apportion(
            chosen,
            {m.name: m.cost_per_rank for m in chosen},  # equal rank: shares ∝ cost per rank
            budget.params,
            min_rank=floor,
            max_rank=ctx.max_rank,
            # Held to the whole inventory's tolerance, as every strategy is (`allocate`).
            limit=tolerance(ctx.inventory, budget.params),
        )
    except UserError as error:
        costs = ", ".join(f"{c:,}" for c in sorted({m.cost_per_rank for m in chosen}))
        raise UserError(
            f"{strategy} at budget {budget.label}: {error} (a rank of its modules costs "
            f"{costs} parameters)"
        ) from None
    return {m.name: ranks.get(m.name, 0) for m in ctx.inventory}
