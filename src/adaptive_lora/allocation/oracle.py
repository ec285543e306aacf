"""The known answer of a planted task: the whole budget on the planted modules.

On `data.source: planted` (`data/planted.py`) the teacher differs from the base model
only on the planted modules, so rank anywhere else is spent on nothing the student
needs to learn. `oracle` puts the budget on the planted set, the same rank on each
planted module (uniform within the set), and rank 0 on every other module (no
adapter there, as `adapters/lora.py` does for rank 0), apportioned to the parameter
budget like every strategy. It is refused in one line on any other data.

**Whatever the run's `min_rank`.** `min_rank` is a floor for strategies that spread
rank over the inventory; with the default `min_rank: 1` it would put rank 1 on every
module and leave the oracle as "uniform plus a little", which is not the known answer
the control needs. The oracle's answer is a *set*, so off the set its rank is 0 at any
`min_rank`; inside it the run's bounds hold (at least rank 1 on each planted module,
since the set is to be adapted uniformly, and at most `max_rank`). A budget below rank
1 on every planted module is refused, like `uniform` below r1.

`planted_overlap` measures any allocation against the planted set (its share of the
budget there, and the overlap of its most-ranked modules with the set); `run.py`
records it for every planted run (`planted_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adaptive_lora.allocation.budget import apportion, tolerance, uniform_cost
from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.data.planted import is_planted, planted_names, planted_settings
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo


def planted_set(ctx: AllocationContext) -> list[str]:
    """The planted modules of the run's data, in inventory order; refused on other data."""
    source = getattr(ctx.data, "source", None)
    if source is None or not is_planted(source):
        raise UserError(
            "strategy oracle allocates on planted data only (data.source: planted, its sites "
            f"in data.options); this allocation's data is {source or 'unknown'!r}"
        )
    return planted_names(planted_settings(ctx.data.options), ctx.inventory)


@register("oracle")
def oracle(ctx: AllocationContext) -> dict[str, int]:
    """The budget on the planted modules only (uniform there, rank 0 elsewhere): planted data."""
    names = set(planted_set(ctx))
    subset = [m for m in ctx.inventory if m.name in names]
    floor = uniform_cost(subset, 1)
    limit = tolerance(ctx.inventory, ctx.budget.params)
    if ctx.budget.params < floor - limit:
        raise UserError(
            f"oracle cannot spend budget {ctx.budget.label}: {ctx.budget.params:,} parameters is "
            f"below the {floor:,} that rank 1 on every planted module costs"
        )
    ranks = apportion(
        subset,
        {m.name: m.cost_per_rank for m in subset},
        ctx.budget.params,
        min_rank=max(1, ctx.min_rank),
        max_rank=ctx.max_rank,
    )
    ranks = _closest(subset, ranks, ctx.budget.params, ctx.max_rank)
    gap = abs(sum(ranks[m.name] * m.cost_per_rank for m in subset) - ctx.budget.params)
    if gap > limit:
        raise UserError(
            f"oracle cannot meet budget {ctx.budget.label} within {limit:,.0f} parameters on the "
            f"planted modules alone (the closest misses by {gap:,}); choose a larger budget"
        )
    return {m.name: ranks.get(m.name, 0) for m in ctx.inventory}


def _closest(subset: Sequence[ModuleInfo], ranks: dict[str, int], budget: int, max_rank):
    """One more rank on the least-ranked planted module, if that lands nearer the budget.

    `apportion` on the planted set keeps an underspend within the set's own tolerance;
    the run checks the inventory's, whose cheapest module may be cheaper than any
    planted one, so overshooting by less than the underspend may be needed to meet it.
    """
    left = budget - sum(ranks[m.name] * m.cost_per_rank for m in subset)
    growable = [m for m in subset if max_rank is None or ranks[m.name] < max_rank]
    if left <= 0 or not growable:
        return ranks
    module = min(growable, key=lambda m: (ranks[m.name], m.cost_per_rank))
    if module.cost_per_rank - left < left:
        return {**ranks, module.name: ranks[module.name] + 1}
    return ranks


@dataclass(frozen=True)
class PlantedOverlap:
    """How an allocation sits on a planted set.

    `budget_share`: the fraction of the allocation's parameters on planted modules (1.0
    for the oracle; for `uniform`, the planted modules' share of the cost of rank 1).
    `overlap`: the fraction of the planted set among the allocation's |P| most-ranked
    modules (P the planted set), ties at the cut shared in proportion, i.e. the expected
    overlap when ties are broken at random (1.0 for the oracle, |P|/N for `uniform`).
    """

    budget_share: float
    overlap: float


def planted_overlap(
    inventory: Sequence[ModuleInfo], ranks: Mapping[str, int], planted: Sequence[str]
) -> PlantedOverlap:
    """`PlantedOverlap` of `ranks` over `inventory` with the planted module names."""
    chosen = set(planted)
    if not chosen or not chosen <= {m.name for m in inventory}:
        raise ValueError("the planted set must be a non-empty subset of the inventory")
    params = {m.name: ranks[m.name] * m.cost_per_rank for m in inventory}
    total = sum(params.values())
    share = sum(params[n] for n in chosen) / total if total else 0.0
    k = len(chosen)
    ordered = sorted((ranks[m.name] for m in inventory), reverse=True)
    cut = ordered[k - 1]  # the rank at the cut; modules above it are all in the top k
    above = [m.name for m in inventory if ranks[m.name] > cut]
    tied = [m.name for m in inventory if ranks[m.name] == cut]
    hits = sum(n in chosen for n in above)
    hits += (k - len(above)) * sum(n in chosen for n in tied) / len(tied)
    return PlantedOverlap(share, hits / k)


def planted_metrics(
    info: Mapping[str, Any], allocation: Any, learned: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """What a planted run records: the planted modules, the teacher's scale and KL, and
    the allocation's `PlantedOverlap` with the planted modules it could adapt.

    `learned`: the ranks the run ended with where training moved them (AdaLoRA's
    `final_ranks`); where its budget went is where it ended, not the rank it started at.
    """
    names = {m.name for m in allocation.inventory}
    planted = [n for n in info["planted_modules"] if n in names]
    ranks = {n: int(learned.get(n, 0)) for n in names} if learned else allocation.ranks
    measured = planted_overlap(allocation.inventory, ranks, planted) if planted else None
    return {
        "modules": list(info["planted_modules"]),
        "target_kl": info["target_kl"],
        "achieved_kl": info["achieved_kl"],
        "kl_on_samples": info["kl_on_samples"],
        "scale": info["scale"],
        "budget_share": measured.budget_share if measured else 0.0,
        "overlap": measured.overlap if measured else 0.0,
        "ranks_measured": "final" if learned else "allocated",
    }
