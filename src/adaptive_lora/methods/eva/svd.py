"""PEFT's EVA internals (`peft.tuners.lora.eva`), in the one file that calls them.

Paischer et al. 2024 (EVA): an incremental SVD of each target module's inputs on
training-split batches. The `eva` strategy (`strategy.py`) reads the ranks PEFT gives
(`eva_ranks`); the optional init (`adapter.py`) reads the singular vectors themselves
(`eva_components`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.config import EvaConfig
from peft.tuners.lora.eva import get_eva_state_dict

from adaptive_lora.data.calibration import Calibration
from adaptive_lora.model.inventory import ModuleInfo


def eva_components(
    model: torch.nn.Module,
    target_ranks: dict[str, int],
    calibration: Calibration,
    *,
    rho: float,
    tau: float,
    n_batches: int,
    batch_size: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """PEFT's EVA state dict: module name → its top right-singular vectors (rank × d_in).

    `target_ranks` are the ranks before redistribution. With `rho` = 1 each module gets
    exactly its own rank: PEFT is asked for the largest of them on every module (so the
    budget equals the sum of the caps and nothing is redistributed), and each module's
    components are cut to its own rank. Asking PEFT for the ranks themselves would not
    do: modules that read the same input (q, k, v; gate, up) share one SVD whose cap is
    the largest of theirs, and its redistribution then hands one of them more rows than
    its rank and another fewer.
    """
    fixed = rho == 1.0
    base = max(target_ranks.values()) if fixed else next(iter(target_ranks.values()))
    pattern = {} if fixed else {name: r for name, r in target_ranks.items() if r != base}
    config = LoraConfig(
        r=base,
        target_modules=sorted(target_ranks),
        rank_pattern={"^" + re.escape(name): r for name, r in pattern.items()},
        init_lora_weights="eva",
        eva_config=EvaConfig(rho=rho, tau=tau),
    )
    batches = list(calibration.batches(n_batches, batch_size, seed))
    was_training = model.training
    with torch.no_grad():
        state = get_eva_state_dict(
            model,
            batches,
            peft_config=config,
            forward_fn=_forward_without_loss,
            prepare_model_inputs_fn=_token_mask,
            prepare_layer_inputs_fn=_masked_rows,
            show_progress_bar=False,
            gather_distributed_inputs=False,
        )
    model.train(was_training)
    if fixed:  # the top components, as many as each module's own rank
        state = {name: rows[: target_ranks[name]] for name, rows in state.items()}
    return state


def eva_ranks(
    model: torch.nn.Module,
    inventory: list[ModuleInfo],
    calibration: Calibration,
    *,
    rank: int,
    **settings: Any,
) -> dict[str, int]:
    """The rank PEFT's EVA gives each inventory module (0 where it gives none)."""
    state = eva_components(model, {m.name: rank for m in inventory}, calibration, **settings)
    return {m.name: int(state[m.name].shape[0]) if m.name in state else 0 for m in inventory}


def _token_mask(inputs: dict[str, torch.Tensor], config: LoraConfig) -> torch.Tensor:
    """(batch, seq) mask of the tokens whose layer inputs the SVD sees: real, labelled tokens."""
    mask = inputs["attention_mask"].bool()
    if config.eva_config.use_label_mask and "labels" in inputs:
        mask &= inputs["labels"] != config.eva_config.label_mask_value
    return mask


def _masked_rows(layer_input: Any, mask: torch.Tensor, layer_name: str) -> torch.Tensor:
    """A layer's input rows at the masked tokens, as (tokens, width).

    Written here rather than PEFT's default because some families (OPT's fc1/fc2) see
    their input already flattened to (batch·seq, width), which the default indexes as
    (batch, seq, width) and fails on.
    """
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    return x[mask.reshape(-1)] if x.dim() == 2 else x[mask]


def _forward_without_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    # EVA only needs the layer inputs its hooks see; the labels stay in `inputs` for its
    # label mask, but computing a loss over the vocabulary would only cost time.
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
