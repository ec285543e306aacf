"""A seeded random allocation at the same budget: does *where* rank goes matter at all?"""

import numpy as np

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.errors import UserError


@register("random")
def random_allocation(
    ctx: AllocationContext, *, concentration: float = 1.0, seed: int | None = None
) -> dict[str, int]:
    """Random per-module ranks (Gamma(`concentration`) weights), seeded by the run seed.

    A larger `concentration` draws allocations closer to uniform. `seed` fixes
    one allocation for every run instead of one per run seed.
    """
    if concentration <= 0:
        raise UserError(f"random concentration must be > 0, got {concentration}")
    draw_seed = ctx.seed if seed is None else seed
    rng = np.random.default_rng([draw_seed, 0x5EED])
    weights = rng.gamma(concentration, size=len(ctx.inventory))
    return ctx.apportion(
        {m.name: m.cost_per_rank * float(w) for m, w in zip(ctx.inventory, weights)}
    )
