"""EVA's initialisation (Paischer et al. 2024): each LoRA A from its module's input SVD.

Optional for the `eva` strategy (`init_from_svd=true`): A_i holds the top r_i right-
singular vectors of module i's inputs on training-split batches (r_i = the allocation's
rank, so no further redistribution: ρ = 1), B stays zero, so training still starts from
the base model. Off by default, so that `eva` differs from the other strategies in its
ranks only.
"""

from __future__ import annotations

import torch

from adaptive_lora.adapters.lora import lora_modules
from adaptive_lora.allocation.core import Allocation
from adaptive_lora.allocation.eva import eva_components
from adaptive_lora.data.calibration import Calibration


def wants_eva_init(allocation: Allocation) -> bool:
    return allocation.strategy == "eva" and bool(allocation.params.get("init_from_svd"))


def eva_init_components(
    base_model: torch.nn.Module, allocation: Allocation, calibration: Calibration
) -> dict[str, torch.Tensor]:
    """Singular vectors for every module at exactly its allocated rank (before PEFT wraps)."""
    p = allocation.params
    return eva_components(
        base_model,
        dict(allocation.ranks),
        calibration,
        rho=1.0,
        tau=p["tau"],
        n_batches=p["n_batches"],
        batch_size=p["batch_size"],
        seed=p["calibration_seed"],
    )


@torch.no_grad()
def load_eva_init(peft_model: torch.nn.Module, components: dict[str, torch.Tensor]) -> int:
    """Copy each module's components into its lora_A; the number of modules set.

    A module whose inputs gave fewer converged components than its rank keeps its
    seeded rows beyond them (PEFT's EVA would shrink its rank instead, which would
    break the budget match).
    """
    done = 0
    for name, module in lora_modules(peft_model).items():
        if name not in components:
            continue
        weight = module.lora_A["default"].weight  # (r, d_in)
        rows = components[name][: weight.shape[0]].to(weight.dtype)
        weight[: rows.shape[0]].copy_(rows)
        done += 1
    return done
