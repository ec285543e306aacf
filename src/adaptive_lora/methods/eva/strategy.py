"""EVA's data-driven rank redistribution, matched to this tool's parameter budget.

Paischer et al. 2024, "One Initialization to Rule them All: Fine-tuning via Explained
Variance Adaptation" (EVA), as PEFT ships it (`peft.tuners.lora.eva`): an incremental
SVD of each target module's inputs on training-split batches; the components with the
largest explained-variance ratios across all modules win a rank budget of
r × (number of modules) *ranks*, each module capped at ρ·r.

This strategy takes PEFT's ranks as the allocation's *shape* (module i's share of the
parameter budget ∝ r_i^EVA × its cost per rank) and apportions them to the *parameter*
budget like every other strategy, so that only the ranks differ between strategies.
PEFT's own rank budget and ranks are recorded beside it. EVA's initialisation of A from
the singular vectors is a separate switch (`init_from_svd`, off by default; the run
applies it, see `adapter.py` beside this file) so that, off, EVA differs from the other
strategies in its ranks only; on, label the study entry as its own variant. PEFT's EVA
code is called from `svd.py` only.
"""

from __future__ import annotations

import json
from typing import Any

from adaptive_lora.allocation.budget import reference_rank
from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.allocation.importance import importance_cache_dir, weights_fingerprint
from adaptive_lora.data.splits import hash_examples
from adaptive_lora.errors import UserError
from adaptive_lora.methods.eva.svd import eva_ranks
from adaptive_lora.records import write_json

NAME = "eva"  # the strategy's name; its adapter hooks register under it too
CACHE_VERSION = 1


@register(NAME, needs_data=True)
def eva(
    ctx: AllocationContext,
    *,
    rho: float = 2.0,
    tau: float = 0.99,
    n_batches: int = 8,
    batch_size: int = 4,
    calibration_seed: int = 0,
    init_from_svd: bool = False,
) -> dict[str, int]:
    """EVA (Paischer et al. 2024): ranks by explained variance of each module's inputs.

    `rho` caps a module at ρ × the reference rank (PEFT's default 2); `tau` is PEFT's
    convergence threshold on the cosine similarity of successive singular vectors.
    The SVD sees `n_batches` batches of `batch_size` training examples (cycled until
    every needed component converges), drawn by `calibration_seed` (a constant, so
    every seed of a study shares one allocation). Results are cached like the
    importance probe's. `init_from_svd` only tells the run to initialise A from the
    singular vectors; the ranks do not depend on it.
    """
    if ctx.model is None or ctx.calibration is None:
        raise UserError("eva needs the model weights and training data")
    if rho < 1.0 or not 0.0 < tau <= 1.0:
        raise UserError(f"eva needs rho >= 1 and 0 < tau <= 1, got rho={rho}, tau={tau}")
    if n_batches < 1 or batch_size < 1:
        raise UserError(
            f"eva needs n_batches >= 1 and batch_size >= 1, got {n_batches}, {batch_size}"
        )
    rank = max(1, round(reference_rank(ctx.budget, ctx.inventory)))
    settings = dict(rank=rank, rho=rho, tau=tau, n_batches=n_batches, batch_size=batch_size,
                    seed=calibration_seed)  # fmt: skip
    peft_ranks, cache = _cached_eva_ranks(ctx, settings)
    ctx.report["eva"] = {
        "peft_rank_budget": rank * len(ctx.inventory),
        "peft_reference_rank": rank,
        "peft_ranks": peft_ranks,
        "peft_params": sum(peft_ranks[m.name] * m.cost_per_rank for m in ctx.inventory),
        "init_from_svd": init_from_svd,
        "cache": cache,
        **{k: v for k, v in settings.items() if k != "rank"},
    }
    return ctx.apportion({m.name: m.cost_per_rank * peft_ranks[m.name] for m in ctx.inventory})


def _cached_eva_ranks(ctx: AllocationContext, settings: dict[str, Any]) -> tuple[dict, str]:
    """PEFT's EVA ranks for this model, data and settings: from the cache, else computed."""
    key_fields = {
        "version": CACHE_VERSION,
        "model": ctx.fingerprints.get("model") or weights_fingerprint(ctx.model),
        "data": ctx.fingerprints.get("data") or ctx.calibration.data_hash,
        "calibration": ctx.calibration.fingerprint,
        "targets": hash_examples([m.name for m in ctx.inventory]),
        **settings,
    }
    key = hash_examples(key_fields)
    path = importance_cache_dir(ctx.cache_dir) / f"eva-{key[:24]}.json"
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["ranks"], "hit"
    except (OSError, ValueError, KeyError):
        pass  # missing or unreadable: compute it again
    ranks = eva_ranks(ctx.model, ctx.inventory, ctx.calibration, **settings)
    write_json(path, {"key": key, "key_fields": key_fields, "ranks": ranks})
    return ranks, "miss"
