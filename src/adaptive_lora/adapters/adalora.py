"""AdaLoRA adapters driven correctly through PEFT.

PEFT's `AdaLoraConfig` only reallocates when `update_and_allocate(step)` is
called after every optimizer step and before the gradients are cleared (the HF
Trainer never calls it). Its orthogonal regulariser is added by
`AdaLoraModel.forward` only when the model computes its own loss; this tool's
loss skips that call (it projects only response positions), so
`orthogonal_penalty` adds the same term explicitly.

Budget: AdaLoRA's budget is in ranks — target average rank × modules — and it
masks singular values rather than shrinking matrices, so a run records the
training-time trainable parameters and the final effective ones (unmasked ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from peft import AdaLoraConfig, get_peft_model

from adaptive_lora.adapters.lora import PEFT_PREFIX, AdapterSettings, module_seed
from adaptive_lora.allocation.adalora import target_rank
from adaptive_lora.allocation.core import Allocation


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
    peft_model = get_peft_model(model, config)
    seeded_svd_init(peft_model, run_seed)
    return peft_model, schedule


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


def effective_parameters(allocation: Allocation, ranks: dict[str, int]) -> int:
    """Parameters of the unmasked part: r_i (d_in + d_out) + r_i singular values."""
    cost = {m.name: m.cost_per_rank for m in allocation.inventory}
    return sum(r * (cost[name] + 1) for name, r in ranks.items())
