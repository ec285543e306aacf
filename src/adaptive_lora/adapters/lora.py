"""Allocation → PEFT `LoraConfig`, and seeded adapter initialisation.

Two research rules live here:

* PEFT pattern keys are regexes matched as `(.*\\.)?(key)$` and the first match
  wins, so every key is a `^`-anchored, escaped full module name, checked to
  match exactly one module of the model (a silent miss would train wrong ranks).
* One effective scale for every module: α_i = γ·r_i (γ = `alpha_ratio`), so
  α_i/r_i = γ everywhere; with rsLoRA one α for all, scaling γ·√(r_ref/r_i).
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from adaptive_lora.allocation.budget import reference_rank
from adaptive_lora.allocation.core import Allocation

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class AdapterSettings:
    """How an allocation becomes LoRA adapters (recorded with every run)."""

    alpha_ratio: float = 2.0  # γ = α/r of every module
    rslora: bool = False  # scale by α/√r (Kalajdzievski 2023) instead of α/r
    dropout: float = 0.0


def wrap_with_peft(model: nn.Module, config) -> PeftModel:
    """`peft.get_peft_model`, without the FutureWarning every run printed: PEFT asks the
    model for `is_gradient_checkpointing`, which transformers 5 deprecates in favour of
    `is_activation_checkpointing` (PEFT's call, nothing a user can change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, config)


def pattern_key(module_name: str) -> str:
    """A PEFT pattern key that can only match `module_name` itself."""
    return "^" + re.escape(module_name)


def _peft_matches(key: str, module_name: str) -> bool:
    # The same test PEFT applies (peft.utils.other.get_pattern_key).
    return re.match(rf"(.*\.)?({key})$", module_name) is not None


def check_pattern_keys(keys: Iterable[str], module_names: list[str], expected: Mapping[str, str]):
    """Raise if any key matches anything but exactly its own module."""
    for key in keys:
        hits = [name for name in module_names if _peft_matches(key, name)]
        if hits != [expected[key]]:
            raise RuntimeError(f"PEFT pattern {key!r} matches {hits}, expected [{expected[key]!r}]")


def build_lora_config(
    allocation: Allocation,
    settings: AdapterSettings,
    model_module_names: list[str],
    *,
    fan_in_fan_out: bool = False,
) -> LoraConfig:
    """Compile an allocation into a LoraConfig with per-module rank and alpha patterns.

    Modules of rank 0 (an allocation with `min_rank: 0`) get no adapter at all.
    """
    ranks = adapted_ranks(allocation.ranks)
    default_rank = Counter(ranks.values()).most_common(1)[0][0]
    gamma = settings.alpha_ratio
    rank_pattern = {pattern_key(name): r for name, r in ranks.items()}
    if settings.rslora:
        # One α for all: scaling α/√r_i equals γ for a module at the reference rank.
        alpha = gamma * math.sqrt(reference_rank(allocation.budget, allocation.inventory))
        alpha_pattern = {}
    else:
        alpha = gamma * default_rank
        alpha_pattern = {pattern_key(name): gamma * r for name, r in ranks.items()}
    expected = {pattern_key(name): name for name in ranks}
    check_pattern_keys(rank_pattern, model_module_names, expected)
    check_pattern_keys(alpha_pattern, model_module_names, expected)
    return LoraConfig(
        r=default_rank,
        lora_alpha=alpha,
        lora_dropout=settings.dropout,
        target_modules=sorted(ranks),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=settings.rslora,
        fan_in_fan_out=fan_in_fan_out,  # GPT-2's Conv1D stores weights as (in, out)
        bias="none",
        task_type="CAUSAL_LM",
    )


def adapted_ranks(ranks: Mapping[str, int]) -> dict[str, int]:
    """The modules that carry an adapter: rank >= 1."""
    return {name: r for name, r in ranks.items() if r > 0}


def module_seed(run_seed: int, module_name: str) -> int:
    """A 63-bit seed from (run seed, module name), independent of any global RNG."""
    digest = hashlib.sha256(f"{run_seed}:{module_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def lora_modules(peft_model: nn.Module, adapter: str = "default") -> dict[str, nn.Module]:
    """{base module name: LoRA layer} of a PEFT model."""
    found = {}
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            found[name.removeprefix(PEFT_PREFIX)] = module
    return found


@torch.no_grad()
def seeded_init(peft_model: nn.Module, run_seed: int, adapter: str = "default") -> None:
    """Initialise every LoRA pair from a generator seeded by (run seed, module name).

    A is drawn like PEFT's default (Kaiming-uniform with a=√5, i.e. U(±1/√d_in)),
    B is zero so training starts from the base model. Two strategies with the
    same seed therefore get identical A wherever their ranks agree.
    """
    for name, module in lora_modules(peft_model, adapter).items():
        lora_a = module.lora_A[adapter].weight  # (r, d_in)
        generator = torch.Generator().manual_seed(module_seed(run_seed, name))
        bound = 1.0 / math.sqrt(lora_a.shape[1])
        values = torch.rand(lora_a.shape, generator=generator, dtype=torch.float32)
        lora_a.copy_((values * 2.0 - 1.0) * bound)
        module.lora_B[adapter].weight.zero_()


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def apply_lora(
    model: nn.Module, allocation: Allocation, settings: AdapterSettings, run_seed: int
) -> PeftModel:
    """Wrap `model` with the allocation's adapters, seeded, and check the parameter count."""
    modules = dict(model.named_modules())
    conv1d = any(
        type(modules[name]).__name__ == "Conv1D" for name in adapted_ranks(allocation.ranks)
    )
    config = build_lora_config(allocation, settings, list(modules), fan_in_fan_out=conv1d)
    peft_model = wrap_with_peft(model, config)
    seeded_init(peft_model, run_seed)
    check_ranks(peft_model, adapted_ranks(allocation.ranks))
    trainable = trainable_parameters(peft_model)
    if trainable != allocation.total_params:
        raise RuntimeError(
            f"PEFT built {trainable} trainable parameters, the allocation says "
            f"{allocation.total_params}"
        )
    return peft_model


def check_ranks(peft_model: nn.Module, ranks: Mapping[str, int], adapter: str = "default") -> None:
    """Every module carries exactly the rank the allocation gave it."""
    built = {name: m.r[adapter] for name, m in lora_modules(peft_model, adapter).items()}
    if built != dict(ranks):
        wrong = sorted(set(built.items()) ^ set(ranks.items()))[:4]
        raise RuntimeError(f"PEFT ranks differ from the allocation, e.g. {wrong}")
