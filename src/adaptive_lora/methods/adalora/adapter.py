"""AdaLoRA adapters driven correctly through PEFT, and the hooks that make a run use them.

`HOOKS` (registered by this folder's `__init__`) gives the run `build_adalora` in place
of LoRA, and refuses a fixed-rank export.

PEFT's `AdaLoraConfig` only reallocates when `update_and_allocate(step)` is
called after every optimizer step and before the gradients are cleared (the HF
Trainer never calls it). Its orthogonal regulariser is added by
`AdaLoraModel.forward` only when the model computes its own loss; this tool's
loss skips that call (it projects only response positions), so
`orthogonal_penalty` adds the same term explicitly.

Budget: PEFT's AdaLoRA budgets in ranks — target average rank × modules — and keeps
the most important singular-value triplets wherever they are, so the parameters it
ends with depend on where ranks went (measured on SmolLM2 at r8: 2,213,904 final for a
2,442,240 budget). `ParameterBudgetMask` keeps AdaLoRA's importance scores and cubic
schedule but fills the budget in *parameters*: the most important triplets are kept
until their parameters (d_in + d_out + 1 each) reach the schedule's share of the
parameter budget, so the final effective count matches the budget like every other
strategy's. AdaLoRA masks rather than shrinks, so a run records both the
training-time trainable parameters and the final effective ones.

`ParameterBudgetMask` replaces PEFT's `RankAllocator.mask_to_budget` and calls its
private `_element_score` and `_combine_ipt`; `check_rank_allocator` makes sure they are
as the tested PEFT has them before the patch goes in (a one-line error otherwise: a
changed internal must never leave the budget silently counted in ranks).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from peft import AdaLoraConfig

from adaptive_lora.adapters.lora import PEFT_PREFIX, AdapterSettings, module_seed, wrap_with_peft
from adaptive_lora.adapters.methods import BuiltAdapter, MethodHooks
from adaptive_lora.allocation.core import Allocation
from adaptive_lora.compute.fast_step import expect_signature, peft_changed
from adaptive_lora.methods.adalora.strategy import target_rank


@dataclass(frozen=True)
class AdaLoraSchedule:
    total_step: int
    tinit: int
    tfinal: int
    delta_t: int

    @classmethod
    def for_run(cls, steps: int, params: dict[str, Any]) -> AdaLoraSchedule:
        """tinit/tfinal as fractions of the run; reallocate ~10 times in between by default."""
        tinit = int(round(params["tinit_ratio"] * steps))
        tfinal = int(round(params["tfinal_ratio"] * steps))
        budget_phase = max(1, steps - tinit - tfinal)
        delta_t = params["delta_t"] or max(1, budget_phase // 10)
        return cls(steps, tinit, tfinal, delta_t)


def svd_modules(
    peft_model: torch.nn.Module, adapter: str = "default"
) -> dict[str, torch.nn.Module]:
    """{base module name: AdaLoRA SVD layer}."""
    found = {}
    for name, module in peft_model.named_modules():
        lora_e = getattr(module, "lora_E", None)
        if isinstance(lora_e, torch.nn.ParameterDict) and adapter in lora_e:
            found[name.removeprefix(PEFT_PREFIX)] = module
    return found


@torch.no_grad()
def seeded_svd_init(peft_model: torch.nn.Module, run_seed: int, adapter: str = "default") -> None:
    """PEFT's AdaLoRA init (A, B ~ N(0, 0.02²), E = 0) from per-module seeded generators."""
    for name, module in svd_modules(peft_model, adapter).items():
        generator = torch.Generator().manual_seed(module_seed(run_seed, name))
        for tensor in (module.lora_A[adapter], module.lora_B[adapter]):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        module.lora_E[adapter].zero_()


def apply_adalora(
    model: torch.nn.Module,
    allocation: Allocation,
    settings: AdapterSettings,
    run_seed: int,
    total_steps: int,
) -> tuple[Any, AdaLoraSchedule]:
    """Wrap `model` with AdaLoRA adapters on the allocation's modules."""
    params = allocation.params
    target = target_rank(allocation)
    init_r = max(target, int(math.ceil(params["init_ratio"] * target)))
    schedule = AdaLoraSchedule.for_run(total_steps, params)
    modules = dict(model.named_modules())
    conv1d = any(type(modules[name]).__name__ == "Conv1D" for name in allocation.ranks)
    config = AdaLoraConfig(
        target_r=target,
        init_r=init_r,
        tinit=schedule.tinit,
        tfinal=schedule.tfinal,
        deltaT=schedule.delta_t,
        total_step=schedule.total_step,
        beta1=params["beta1"],
        beta2=params["beta2"],
        orth_reg_weight=params["orth_reg_weight"],
        # PEFT scales by α / init_r: α = γ·init_r gives the same γ as every LoRA run.
        lora_alpha=settings.alpha_ratio * init_r,
        lora_dropout=settings.dropout,
        target_modules=sorted(allocation.ranks),
        fan_in_fan_out=conv1d,
        task_type="CAUSAL_LM",
    )
    peft_model = wrap_with_peft(model, config)
    seeded_svd_init(peft_model, run_seed)
    allocator = check_rank_allocator(peft_model)
    allocator.mask_to_budget = ParameterBudgetMask(allocator, allocation.budget.params)
    return peft_model, schedule


def check_rank_allocator(peft_model: Any) -> Any:
    """PEFT's RankAllocator, checked to be what `ParameterBudgetMask` replaces and calls
    (see the module doc); raises a one-line `UserError` otherwise."""
    tuner = peft_model.base_model
    expect_signature(tuner, "update_and_allocate", ("global_step",))  # adalora_step_hook
    allocator = getattr(tuner, "rankallocator", None)
    if allocator is None:
        peft_changed(f"{type(tuner).__name__} has no rankallocator")
    expect_signature(allocator, "mask_to_budget", ("model", "budget"))
    expect_signature(allocator, "_element_score", ("n",))
    expect_signature(allocator, "_combine_ipt", ("ipt_E", "ipt_AB"))
    expect_signature(allocator, "update_and_allocate", ("model", "global_step", "force_mask"))
    missing = [a for a in ("init_bgt", "target_bgt", "adapter_name") if not hasattr(allocator, a)]
    if missing:
        peft_changed(f"RankAllocator has no {', '.join(missing)}")
    # The replacement only counts if the allocator reaches the mask through the attribute.
    try:
        source = inspect.getsource(type(allocator).update_and_allocate)
    except (OSError, TypeError):
        source = ""
    if "self.mask_to_budget(" not in source:
        peft_changed("RankAllocator.update_and_allocate no longer calls self.mask_to_budget")
    return allocator


class ParameterBudgetMask:
    """AdaLoRA's `mask_to_budget` with the budget counted in parameters (see module doc).

    Called by PEFT's `RankAllocator.update_and_allocate(model, step)` with the rank
    budget its cubic schedule gives for the step; that rank budget is mapped linearly
    onto parameters, from all initial triplets (no masking) to `final_params`.
    """

    def __init__(self, allocator: Any, final_params: int):
        self.allocator = allocator
        self.final_params = final_params

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, rank_budget: int) -> dict[str, list[bool]]:
        scores, costs, values = self._triplets(model)
        allocator = self.allocator
        initial = sum(float(c) * len(s) for c, s in zip(costs.values(), scores.values()))
        span = max(1, allocator.init_bgt - allocator.target_bgt)
        shrink = (allocator.init_bgt - rank_budget) / span  # 0 at the start, 1 at the end
        params = initial - shrink * (initial - self.final_params)
        flat = torch.cat([s for s in scores.values()])
        cost = [float(costs[n]) for n, s in scores.items() for _ in range(len(s))]
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[_fill(torch.argsort(flat, descending=True).tolist(), cost, params)] = True
        pattern, start = {}, 0
        for name, score in scores.items():
            mask = keep[start : start + len(score)]
            values[name].masked_fill_(~mask.view(-1, 1), 0.0)
            pattern[name] = mask.tolist()
            start += len(score)
        return pattern

    def _triplets(self, model: torch.nn.Module):
        """Per lora_E parameter: its triplets' importance, parameters per triplet, the E itself.

        The importance is PEFT's own (`_element_score`, `_combine_ipt`): E's score plus the
        mean scores of A's row and B's column of the triplet.
        """
        allocator, adapter = self.allocator, self.allocator.adapter_name
        named = dict(model.named_parameters())
        scores, costs, values = {}, {}, {}
        for name, value in named.items():
            if f"lora_E.{adapter}" not in name:
                continue
            a_name = name.replace("lora_E", "lora_A")
            b_name = name.replace("lora_E", "lora_B")
            a_score = allocator._element_score(a_name).mean(dim=1, keepdim=True)
            b_score = allocator._element_score(b_name).mean(dim=0).view(-1, 1)
            ab = torch.cat([a_score, b_score], dim=1)
            scores[name] = allocator._combine_ipt(allocator._element_score(name), ab).view(-1)
            costs[name] = named[a_name].shape[1] + named[b_name].shape[0] + 1
            values[name] = value
        return scores, costs, values


def _fill(order: list[int], cost: list[float], budget: float) -> list[int]:
    """Triplets to keep: in order of importance, each that still fits the budget; then one
    more (the most important of the cheapest left) if overshooting by it is closer."""
    kept, total, dropped = [], 0.0, []
    for index in order:
        if total + cost[index] <= budget:
            kept.append(index)
            total += cost[index]
        else:
            dropped.append(index)
    if dropped:
        cheapest = min(cost[i] for i in dropped)
        extra = next(i for i in dropped if cost[i] == cheapest)
        if total + cheapest - budget < budget - total:
            kept.append(extra)
    return kept


def orthogonal_penalty(peft_model: torch.nn.Module, adapter: str = "default") -> torch.Tensor:
    """AdaLoRA's regulariser: mean over A and B of ‖P Pᵀ − I‖_F (A) / ‖Pᵀ P − I‖_F (B)."""
    total, count = None, 0
    for module in svd_modules(peft_model, adapter).values():
        for cov in (
            module.lora_A[adapter] @ module.lora_A[adapter].T,
            module.lora_B[adapter].T @ module.lora_B[adapter],
        ):
            eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            term = torch.linalg.matrix_norm(cov - eye, ord="fro")
            total = term if total is None else total + term
            count += 1
    return total / count


def adalora_loss_term(peft_model: torch.nn.Module):
    """The extra loss term the training loop adds for AdaLoRA."""
    weight = peft_model.peft_config["default"].orth_reg_weight

    def term() -> torch.Tensor:
        return weight * orthogonal_penalty(peft_model)

    return term


def adalora_step_hook(peft_model: torch.nn.Module):
    """Called after each optimizer step, before gradients are cleared."""

    def after_step(step: int) -> None:
        peft_model.base_model.update_and_allocate(step)

    return after_step


def current_ranks(peft_model: torch.nn.Module, adapter: str = "default") -> dict[str, int]:
    """Ranks left unmasked: the non-zero singular values of each module's E."""
    return {
        name: int(torch.count_nonzero(module.lora_E[adapter]))
        for name, module in svd_modules(peft_model, adapter).items()
    }


def keep_a_zeroed_rank(peft_model: Any, adapter: str = "default") -> int:
    """Before the adapter is saved: a module pruned to rank 0 keeps one masked triplet.

    PEFT saves an AdaLoRA adapter cut to its final `rank_pattern`; a module whose pattern
    keeps nothing would be written as zero-sized A and B, which PEFT itself warns about
    as an unsaved shard. Its masked singular value is 0, so keeping that one triplet
    saves a rank-1 module with E = 0: the saved adapter computes exactly what was
    trained, and `final_ranks` (counted before this) still says 0. Returns how many
    modules it changed."""
    pattern = getattr(peft_model.peft_config[adapter], "rank_pattern", None) or {}
    changed = 0
    for name, keep in pattern.items():
        if isinstance(keep, list) and keep and not any(keep):
            pattern[name] = [True, *keep[1:]]
            changed += 1
    return changed


def effective_parameters(allocation: Allocation, ranks: dict[str, int]) -> int:
    """Parameters of the unmasked part: r_i (d_in + d_out) + r_i singular values."""
    cost = {m.name: m.cost_per_rank for m in allocation.inventory}
    return sum(r * (cost[name] + 1) for name, r in ranks.items())


def build_adalora(
    model: torch.nn.Module, allocation: Allocation, settings: AdapterSettings, seed: int, steps: int
) -> BuiltAdapter:
    """The run's AdaLoRA adapters, their training hooks, and the records before and after."""
    peft_model, schedule = apply_adalora(model, allocation, settings, seed, steps)
    init_r = peft_model.peft_config["default"].init_r
    records = {
        "adalora_schedule": vars(schedule) | {"init_r": init_r},
        "initial_ranks": {name: init_r for name in allocation.ranks},
    }

    def finish() -> dict[str, Any]:
        final = current_ranks(peft_model)
        keep_a_zeroed_rank(peft_model)  # for the save that follows: no zero-sized tensors
        effective = effective_parameters(allocation, final)
        budget = allocation.budget.params
        return {
            "final_ranks": final,
            "effective_params": effective,
            "effective_deviation_pct": 100.0 * (effective - budget) / budget,
        }

    hooks = {
        "after_step": adalora_step_hook(peft_model),
        "extra_loss": adalora_loss_term(peft_model),
    }
    return BuiltAdapter(peft_model, hooks, records, finish)


HOOKS = MethodHooks(
    build=build_adalora,
    # AdaLoRA prunes its ranks while it trains: fixed ranks would not be what it ran.
    export_refusal=(
        "adalora learns its ranks during training, so no fixed-rank LoRA config "
        "describes it; export a fixed-rank strategy"
    ),
)
