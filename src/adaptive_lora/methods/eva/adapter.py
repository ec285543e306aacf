"""EVA's initialisation (Paischer et al. 2024): each LoRA A from its module's input SVD.

Optional for the `eva` strategy (`init_from_svd=true`): A_i holds the top r_i right-
singular vectors of module i's inputs on training-split batches (r_i = the allocation's
rank, so no further redistribution: ρ = 1), B stays zero, so training still starts from
the base model. Off by default, so that `eva` differs from the other strategies in its
ranks only. `HOOKS` (registered by this folder's `__init__`) hands the run this init and
tells an export that a LoRA config cannot carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from adaptive_lora.adapters.lora import lora_modules
from adaptive_lora.adapters.methods import MethodHooks
from adaptive_lora.allocation.core import Allocation
from adaptive_lora.data.calibration import Calibration
from adaptive_lora.methods.eva.svd import eva_components


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


def eva_init(
    base_model: torch.nn.Module, allocation: Allocation, calibration: Callable[[], Calibration]
) -> Callable[[torch.nn.Module], dict[str, Any]] | None:
    """The init hook: None unless the allocation asks for `init_from_svd`; else the
    components read now, from the base model, and the step that loads them once PEFT
    has wrapped it (recording how many modules it set)."""
    if not allocation.params.get("init_from_svd"):
        return None
    components = eva_init_components(base_model, allocation, calibration())

    def load(peft_model: torch.nn.Module) -> dict[str, Any]:
        return {"eva_init_modules": load_eva_init(peft_model, components)}

    return load


def export_caveat(params: dict[str, Any]) -> str:
    """The SVD init needs the calibration activations: a LoRA config cannot hold it."""
    if not params.get("init_from_svd"):
        return ""
    return " (init_from_svd is not carried: A starts from PEFT's default init)"


HOOKS = MethodHooks(init=eva_init, export_caveat=export_caveat)
