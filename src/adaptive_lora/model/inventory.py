"""The adaptable modules of a causal language model.

A rank-allocation strategy never looks at the model itself: it looks at this
inventory, one `ModuleInfo` per linear projection that can carry a LoRA pair.
A projection's kind is decided by its leaf name and the name of its parent
inside the transformer block (GPT-2 names both its attention output and its
MLP output `c_proj`). The families whose names are known:

* Llama (SmolLM2), Qwen2, Qwen3, Mistral, Gemma-2, Gemma-3: `nn.Linear`
  `self_attn.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj`.
* Phi-3: fused `self_attn.qkv_proj` (kind `qkv`) and `mlp.gate_up_proj` (kind
  `gate_up`), then `o_proj` and `down_proj`.
* GPT-2 (DialoGPT): `transformers.pytorch_utils.Conv1D` layers whose weight is
  stored (in, out); fused `attn.c_attn` (q, k and v), `attn.c_proj`, `mlp.c_fc`
  and `mlp.c_proj`.
* GPT-NeoX and Falcon: fused `attention.query_key_value` (Falcon:
  `self_attention.…`), `dense`, and `mlp.dense_h_to_4h` / `mlp.dense_4h_to_h`
  (kinds `fc` and `proj`, the up and down projections of an MLP without a gate).
* OPT: `self_attn.{q,k,v,out}_proj` and `fc1` / `fc2` directly in the block.

A linear projection inside a numbered block that no rule names still gets an
inventory entry, with a generic kind (`attn_generic` if its path inside the
block mentions attention, else `mlp_generic`): strategies work on it, and
`build_inventory` warns while `inventory_report` says so for the allocation report.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from adaptive_lora.errors import UserError

# The generic kinds say only which group a projection belongs to, not what it does.
GENERIC_KINDS = ("attn_generic", "mlp_generic")
ATTENTION_KINDS = ("q", "k", "v", "o", "qkv", "attn_generic")
MLP_KINDS = ("gate", "up", "down", "gate_up", "fc", "proj", "mlp_generic")
ALL_KINDS = ATTENTION_KINDS + MLP_KINDS

# Target selections a config may name; a list of kinds is accepted too.
TARGET_GROUPS = {
    "all": ALL_KINDS,
    "attention": ATTENTION_KINDS,
    "mlp": MLP_KINDS,
}

_LAYER_INDEX = re.compile(r"\.(?:h|layers|layer|blocks|decoder\.layers)\.(\d+)\.")

# (parent inside the block, leaf) -> kind; parent "" is the block itself (OPT's fc1/fc2).
_KIND_BY_NAME = {
    # GPT-2: the parent tells the two `c_proj` apart.
    ("attn", "c_attn"): "qkv",
    ("attn", "c_proj"): "o",
    ("mlp", "c_fc"): "fc",
    ("mlp", "c_proj"): "proj",
    # Llama, Qwen2/3, Mistral, Gemma-2/3; Phi-3's fused qkv_proj; OPT's out_proj.
    ("self_attn", "q_proj"): "q",
    ("self_attn", "k_proj"): "k",
    ("self_attn", "v_proj"): "v",
    ("self_attn", "o_proj"): "o",
    ("self_attn", "out_proj"): "o",
    ("self_attn", "qkv_proj"): "qkv",
    ("mlp", "gate_proj"): "gate",
    ("mlp", "up_proj"): "up",
    ("mlp", "down_proj"): "down",
    ("mlp", "gate_up_proj"): "gate_up",  # Phi-3
    ("mlp", "fc1"): "fc",
    ("mlp", "fc2"): "proj",
    ("", "fc1"): "fc",  # OPT
    ("", "fc2"): "proj",
    # GPT-NeoX (`attention`) and Falcon (`self_attention`).
    ("attention", "query_key_value"): "qkv",
    ("attention", "dense"): "o",
    ("self_attention", "query_key_value"): "qkv",
    ("self_attention", "dense"): "o",
    ("mlp", "dense_h_to_4h"): "fc",
    ("mlp", "dense_4h_to_h"): "proj",
}


@dataclass(frozen=True)
class ModuleInfo:
    """One adaptable projection: where it is, what it does and what a rank costs."""

    name: str  # full module name as `model.named_modules()` gives it
    layer: int  # transformer block index, 0 = nearest the embeddings
    kind: str  # one of ALL_KINDS
    d_in: int
    d_out: int

    @property
    def group(self) -> str:
        """`attention` or `mlp`."""
        return "attention" if self.kind in ATTENTION_KINDS else "mlp"

    @property
    def cost_per_rank(self) -> int:
        """Parameters of one rank of a LoRA pair: A is r×d_in, B is d_out×r."""
        return self.d_in + self.d_out

    def to_dict(self) -> dict:
        return {**asdict(self), "group": self.group, "cost_per_rank": self.cost_per_rank}


def _is_conv1d(module: nn.Module) -> bool:
    # Compared by name so the check does not import GPT-2 code it does not need.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a linear-like module, or None if it is not one."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if _is_conv1d(module):
        # Conv1D stores its weight as (in, out), the transpose of nn.Linear.
        d_in, d_out = module.weight.shape
        return int(d_in), int(d_out)
    return None


def _place(name: str) -> tuple[int, list[str]] | None:
    """(block index, path inside the block) of a module, or None outside numbered blocks."""
    match = _LAYER_INDEX.search("." + name + ".")
    if match is None:
        return None
    inside = ("." + name + ".")[match.end() :].strip(".")
    return int(match.group(1)), inside.split(".") if inside else []


def _kind_of(inside: list[str]) -> str | None:
    """A projection's kind from its path inside its block (None for the block itself)."""
    if not inside:
        return None
    parent = inside[-2] if len(inside) > 1 else ""
    kind = _KIND_BY_NAME.get((parent, inside[-1]))
    if kind is not None:
        return kind
    # Unknown naming: keep the module, but only claim the group its path suggests.
    attention = any("attn" in part or "attention" in part for part in inside)
    return "attn_generic" if attention else "mlp_generic"


def resolve_targets(target: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a target selection (`all`, `attention`, `mlp` or a list of kinds) into kinds."""
    if isinstance(target, str):
        if target in TARGET_GROUPS:
            return TARGET_GROUPS[target]
        target = [t.strip() for t in target.split(",") if t.strip()]
    unknown = [t for t in target if t not in ALL_KINDS]
    if unknown or not target:
        raise UserError(
            f"unknown target module kind(s) {unknown or target!r}: use 'all', 'attention', "
            f"'mlp' or a list of {', '.join(ALL_KINDS)}"
        )
    return tuple(target)


def build_inventory(model: nn.Module, target: str | Sequence[str] = "all") -> list[ModuleInfo]:
    """List the adaptable modules of `model`, in module order, restricted to `target` kinds.

    Works on a model on the meta device (only shapes are read), so strategies
    that need no weights can be answered without loading any. Projections with
    a generic kind are listed too, and a warning names how many there are.
    """
    kinds = set(resolve_targets(target))
    inventory = []
    for name, module in model.named_modules():
        features = _features(module)
        place = _place(name) if features is not None else None
        kind = _kind_of(place[1]) if place is not None else None
        if kind is None or kind not in kinds:
            continue
        inventory.append(ModuleInfo(name, place[0], kind, *features))
    if not inventory:
        raise UserError(
            f"no adaptable modules of kind(s) {sorted(kinds)} found in "
            f"{type(model).__name__}; check the model and the `target` setting"
        )
    report = inventory_report(inventory)
    if report:
        warnings.warn(report["inventory_note"], GenericKindsWarning, stacklevel=2)
    return inventory


class GenericKindsWarning(UserWarning):
    """The inventory met projection names it does not know and gave them generic kinds."""


def inventory_report(inventory: Iterable[ModuleInfo]) -> dict[str, Any]:
    """What an allocation report must say about the inventory: {} when every kind is known.

    Otherwise `inventory_note` (one line) and `generic_modules` (their names), so an
    unclassified architecture is never allocated for silently.
    """
    generic = [m.name for m in inventory if m.kind in GENERIC_KINDS]
    if not generic:
        return {}
    note = (
        f"{len(generic)} projection(s) have names no known architecture uses (e.g. "
        f"{generic[0]}); they got the generic kinds {', '.join(GENERIC_KINDS)} (attention "
        "or MLP guessed from the module path), so per-kind strategies see them as one kind"
    )
    return {"inventory_note": note, "generic_modules": generic}


def layer_count(inventory: Iterable[ModuleInfo]) -> int:
    return 1 + max(m.layer for m in inventory)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as (d_out, d_in), whatever its storage convention."""
    return module.weight.T if _is_conv1d(module) else module.weight
