"""Budgets in parameters and the apportioning every strategy goes through.

The research rule: a budget is a number of trainable parameters, not a rank.
`r8` means "what rank 8 on every target module would cost". A strategy only
says how the budget should be *shared* between modules; `apportion` turns the
shares into integer ranks that meet the budget, so every strategy is matched
the same way and no strategy wins by quietly spending more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# A budget is read where a run's config is read (config.py: a bad one fails before any
# model loads); this module resolves it on an inventory, and re-exports the parser.
from adaptive_lora.config import Budget, parse_budget
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo
from adaptive_lora.model.peft_targets import peft_default_modules

# Relative tolerance of the budget match; the absolute floor is the cost of one
# rank of the cheapest module, since no integer allocation can do better.
RELATIVE_TOLERANCE = 0.005


def uniform_cost(inventory: Sequence[ModuleInfo], rank: int) -> int:
    """Trainable parameters of rank `rank` on every module of the inventory."""
    return rank * sum(m.cost_per_rank for m in inventory)


def resolve_budget(
    spec: Budget | str | int, inventory: Sequence[ModuleInfo], model_type: str | None = None
) -> Budget:
    """`r8` → the parameters of uniform rank 8 on `inventory`; `qv:r8` → those of rank 8 on
    the inventory's modules that PEFT adapts by default on a `model_type` model; a count →
    that count.

    `spec` is a budget already read (`RunConfig`'s `allocation.parsed_budget`) or its text."""
    budget = spec if isinstance(spec, Budget) else parse_budget(spec)
    if budget.rank is None:
        return budget
    modules = inventory
    if budget.placement is not None:
        try:
            modules = peft_default_modules(inventory, model_type)
        except UserError as error:
            raise UserError(f"budget {budget.label}: {error}") from None
    return Budget(budget.label, uniform_cost(modules, budget.rank), budget.rank, budget.placement)


def reference_rank(budget: Budget, inventory: Sequence[ModuleInfo]) -> float:
    """The (possibly fractional) uniform rank that spends exactly this budget."""
    if budget.uniform_rank is not None:
        return float(budget.uniform_rank)
    return budget.params / sum(m.cost_per_rank for m in inventory)


def tolerance(inventory: Sequence[ModuleInfo], budget: int) -> float:
    """The largest |total − budget| an allocation may have."""
    return max(RELATIVE_TOLERANCE * budget, min(m.cost_per_rank for m in inventory))


def _ideal_ranks(
    inventory: Sequence[ModuleInfo],
    shares: Sequence[float],
    budget: int,
    min_rank: int,
    max_rank: float,
) -> list[float]:
    """Real-valued ranks spending the budget in proportion to `shares`, within the bounds.

    Water-filling: modules whose proportional rank falls outside [min, max] are
    fixed at the bound and the rest of the budget is re-shared among the others.
    """
    n = len(inventory)
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        left = budget - sum(fixed[i] * inventory[i].cost_per_rank for i in fixed)
        free_share = sum(shares[i] for i in free)
        if not free:
            return [fixed[i] for i in range(n)]
        if free_share <= 0:
            # Nothing left to share by weight: spread what remains evenly in rank.
            per_rank = left / sum(inventory[i].cost_per_rank for i in free)
            ideal = {i: per_rank for i in free}
        else:
            ideal = {i: shares[i] / free_share * left / inventory[i].cost_per_rank for i in free}
        low = [i for i in free if ideal[i] < min_rank]
        high = [i for i in free if ideal[i] > max_rank]
        if not low and not high:
            fixed.update(ideal)
            return [fixed[i] for i in range(n)]
        # Fix only the side that is most violated first; the other may resolve itself.
        low_gap = sum(min_rank - ideal[i] for i in low)
        if low and (not high or low_gap >= sum(ideal[i] - max_rank for i in high)):
            fixed.update({i: float(min_rank) for i in low})
        else:
            fixed.update({i: float(max_rank) for i in high})


def apportion(
    inventory: Sequence[ModuleInfo],
    shares: Mapping[str, float],
    budget: int,
    *,
    min_rank: int = 1,
    max_rank: int | None = None,
    limit: float | None = None,
) -> dict[str, int]:
    """Integer ranks whose parameter cost matches `budget`, shared in proportion to `shares`.

    `shares[name]` is the (non-negative, unnormalised) share of the *parameter*
    budget that module should get. With `min_rank=0` a module may get rank 0: it is
    left without an adapter (`adapters/lora.py` adapts only modules of rank >= 1).
    Bounds are applied by water-filling, ranks are floored, and the leftover
    parameters go one rank at a time to the modules with the largest fractional
    remainders (largest-remainder rounding,
    ties to the shallower module) while they fit. If the rank bounds leave only
    modules dearer than the leftover, one is grown and paid for by the most
    over-allocated others, or the budget is overshot by less than it would be
    undershot. The result is within `tolerance()` of the budget, or within `limit` when
    one is given: a placement apportions over its own modules only and is held to the
    tolerance of the whole inventory, as every strategy is.

    Raises UserError when the budget cannot be met within the rank bounds (the
    bounds, not the strategy, make some budgets unreachable in integers).
    """
    _check_reachable(inventory, budget, min_rank, max_rank)
    upper = math.inf if max_rank is None else float(max_rank)
    cost_all = sum(m.cost_per_rank for m in inventory)
    weights = [_share(shares, m.name) for m in inventory]
    ideal = _ideal_ranks(inventory, weights, min(budget, upper * cost_all), min_rank, upper)
    ranks = [max(min_rank, math.floor(x + 1e-9)) for x in ideal]
    # Round up at most to ceil(ideal) first. If that leaves more than the
    # tolerance unspent, try each way of spending the rest and keep the one
    # closest to the strategy's shape among those that meet the budget.
    left = _fill(inventory, ideal, ranks, budget, upper, ceil_only=True)
    limit = tolerance(inventory, budget) if limit is None else limit
    # With min_rank 0 (budgets below r1) the aim is the relative tolerance itself; with a
    # floor of one rank everywhere, a leftover within `limit` is kept, as it always was
    # (a swap there would bend the strategy's shape more than the budget gains).
    if left > (RELATIVE_TOLERANCE * budget if min_rank == 0 else limit):
        ranks, left = _complete(inventory, ideal, ranks, budget, min_rank, upper, left, limit)
    if abs(left) > limit:
        raise UserError(
            f"budget {budget:,} cannot be met within {limit:,.0f} parameters under rank bounds "
            f"[{min_rank}, {max_rank}]: the closest allocation is {budget - left:,}; "
            "widen max_rank or change the budget"
        )
    return {m.name: r for m, r in zip(inventory, ranks)}


def _check_reachable(
    inventory: Sequence[ModuleInfo], budget: int, min_rank: int, max_rank: int | None
) -> None:
    """Refuse (one line) rank bounds that no allocation of `budget` can keep."""
    if not inventory:
        raise UserError("no target modules to allocate ranks to")
    if min_rank < 0:
        raise UserError(f"min_rank must be >= 0, got {min_rank}")
    if max_rank is not None and max_rank < min_rank:
        raise UserError(f"max_rank ({max_rank}) must be >= min_rank ({min_rank})")
    cost_all = sum(m.cost_per_rank for m in inventory)
    floor_cost = min_rank * cost_all
    if budget < floor_cost:
        raise UserError(
            f"impossible budget: {budget:,} parameters is below the {floor_cost:,} that "
            f"min_rank={min_rank} on every module costs; raise the budget or lower min_rank"
        )
    if max_rank is not None and budget > max_rank * cost_all + tolerance(inventory, budget):
        raise UserError(
            f"impossible budget: {budget:,} parameters is above the {max_rank * cost_all:,} that "
            f"max_rank={max_rank} on every module costs; lower the budget or raise max_rank"
        )


def check_budget(
    budget: Budget | str | int,
    inventory: Sequence[ModuleInfo],
    min_rank: int = 1,
    max_rank: int | None = None,
) -> Budget:
    """Refuse (one line) a budget no adapter on `inventory` can spend: below what
    `min_rank` on every module costs, above `max_rank` everywhere, or (with min_rank 0)
    below one rank of the cheapest module, where no module would get an adapter.
    Needs only the inventory's shapes (a meta-device skeleton will do); returns the budget
    resolved in parameters."""
    resolved = resolve_budget(budget, inventory)
    _check_reachable(inventory, resolved.params, min_rank, max_rank)
    cheapest = min(m.cost_per_rank for m in inventory)
    if resolved.params < cheapest:
        raise UserError(
            f"impossible budget: {resolved.params:,} parameters is below the {cheapest:,} that "
            "one rank of the cheapest target module costs: no adapter fits; raise the budget"
        )
    return resolved


def _share(shares: Mapping[str, float], name: str) -> float:
    """A module's share as a float; a strategy's bug (negative, NaN) is not the user's."""
    weight = float(shares.get(name, 0.0))
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"share of {name} must be finite and >= 0, got {weight}")
    return weight


def _complete(
    inventory, ideal, ranks, budget, min_rank, upper, left, limit
) -> tuple[list[int], int]:
    """Spend a leftover that the ceil-capped rounding left: the closest way to the budget.

    The relative tolerance is the aim; the cost of one rank of the cheapest module is
    a floor only where no integer allocation can do better. Small budgets (below r1,
    with min_rank 0) leave less than that floor unspent yet more than 0.5%: a swap of
    a cheap rank for a dear one often lands within 0.5%. Among the ways that meet a
    bound, the one closest to the strategy's shape wins.
    """
    aim = RELATIVE_TOLERANCE * budget
    ways = ("overshoot", "fill", "fill+over", "swap", "swap+over")
    start = (list(ranks), left)
    tight = [
        _completion(inventory, ideal, ranks, budget, min_rank, upper, left, w, aim) for w in ways
    ]
    close = [c for c in [start, *tight] if abs(c[1]) <= aim]
    if close:
        return min(close, key=lambda c: _distortion(inventory, ideal, c[0]))
    if left <= limit:
        return start
    candidates = [
        _completion(inventory, ideal, ranks, budget, min_rank, upper, left, w, limit) for w in ways
    ]
    within = [c for c in candidates if abs(c[1]) <= limit]
    if within:
        return min(within, key=lambda c: _distortion(inventory, ideal, c[0]))
    return min(candidates, key=lambda c: abs(c[1]))


def _distortion(inventory, ideal, ranks) -> float:
    """How far integer ranks are from the ideal ones: relative error, weighted by parameters.

    Relative, because a strategy's shape is a set of ratios (attention 1.5x the
    MLP, layer 0 twice the last): one rank off an ideal of 3.5 bends it more than
    one rank off 5.3.
    """
    return sum(
        m.cost_per_rank * ((r - x) / max(x, 1.0)) ** 2 for m, r, x in zip(inventory, ranks, ideal)
    )


def _completion(inventory, ideal, ranks, budget, min_rank, upper, left, how, limit):
    """One way to spend (or overshoot) a leftover the ceil-capped rounding could not."""
    ranks = list(ranks)
    if how == "overshoot":
        # One more rank on the module that deserves it most, if that lands closest.
        by_need = sorted(range(len(inventory)), key=lambda i: (-(ideal[i] - ranks[i]), i))
        for i in by_need:
            if ranks[i] < upper and inventory[i].cost_per_rank > left:
                ranks[i] += 1
                left -= inventory[i].cost_per_rank
                break
        return ranks, left
    if how.startswith("swap"):
        left = _swap_in_expensive(inventory, ideal, ranks, budget, min_rank, upper, left, limit)
    left = _fill(inventory, ideal, ranks, budget, upper)
    # A last rank on the cheapest module that can grow, when over is closer than under.
    growable = [i for i in range(len(inventory)) if ranks[i] < upper]
    if how.endswith("+over") and left > 0 and growable:
        j = min(growable, key=lambda i: (inventory[i].cost_per_rank, i))
        if inventory[j].cost_per_rank - left < left:
            ranks[j] += 1
            left -= inventory[j].cost_per_rank
    return ranks, left


def _fill(inventory, ideal, ranks, budget, upper, ceil_only: bool = False) -> int:
    """Largest-remainder rounding in parameters: add ranks while they fit; return what is left."""
    left = budget - sum(r * m.cost_per_rank for r, m in zip(ranks, inventory))
    # Largest remainder first; ties go to the shallower module.
    order = sorted(range(len(inventory)), key=lambda i: (-(ideal[i] - ranks[i]), i))
    added = True
    while added and left > 0:
        added = False
        for i in order:
            cost = inventory[i].cost_per_rank
            cap = min(upper, math.ceil(ideal[i] - 1e-9)) if ceil_only else upper
            if ranks[i] < cap and cost <= left:
                ranks[i] += 1
                left -= cost
                added = True
    return left


def _swap_in_expensive(inventory, ideal, ranks, budget, min_rank, upper, left, limit) -> int:
    """When only modules dearer than the leftover can still grow, grow one and pay it back.

    The payback takes ranks from the most over-allocated cheaper modules (cheapest,
    then deepest first on ties) until the overshoot is within tolerance, then the
    leftover is filled again. A try is kept only if it gets closer to the budget.
    """
    growable = sorted(
        (
            i
            for i in range(len(inventory))
            if ranks[i] < upper and inventory[i].cost_per_rank > left
        ),
        key=lambda i: (-(ideal[i] - ranks[i]), i),
    )
    for j in growable:
        trial = list(ranks)
        trial[j] += 1
        trial_left = left - inventory[j].cost_per_rank
        while trial_left < -limit:
            # Only cheaper modules pay: taking a rank from one as dear as j undoes the move.
            donors = [
                i
                for i in range(len(inventory))
                if trial[i] > min_rank and inventory[i].cost_per_rank < inventory[j].cost_per_rank
            ]
            if not donors:
                break
            i = min(
                donors,
                key=lambda i: (round(ideal[i] - trial[i], 9), inventory[i].cost_per_rank, -i),
            )
            trial[i] -= 1
            trial_left += inventory[i].cost_per_rank
        if trial_left < -limit:
            continue
        if trial_left > 0:
            trial_left = _fill(inventory, ideal, trial, budget, upper, ceil_only=True)
        if abs(trial_left) < abs(left):
            ranks[:] = trial
            left = trial_left
        if abs(left) <= limit:
            break
    return left


def total_params(inventory: Sequence[ModuleInfo], ranks: Mapping[str, int]) -> int:
    """Trainable LoRA parameters of an allocation: Σ r_i (d_in + d_out)."""
    return sum(ranks[m.name] * m.cost_per_rank for m in inventory)
