"""The adaptable modules of a causal language model.

A rank-allocation strategy never looks at the model itself: it looks at this
inventory, one `ModuleInfo` per linear projection that can carry a LoRA pair.
Two architecture families are understood by name:

* GPT-2 (DialoGPT): `transformers.pytorch_utils.Conv1D` layers whose weight is
  stored (in, out); attention is one fused `attn.c_attn` (q, k and v) and
  `attn.c_proj`; the MLP is `mlp.c_fc` and `mlp.c_proj` (same leaf name as the
  attention output, which is why kinds are decided by the parent too).
* Llama (SmolLM2) and relatives: `nn.Linear` `self_attn.{q,k,v,o}_proj` and
  `mlp.{gate,up,down}_proj`.

Other names fall back to generic rules (`fc`, `proj`) so a new family still gets
an inventory, with kinds that say honestly that they are generic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from adaptive_lora.errors import UserError

ATTENTION_KINDS = ("q", "k", "v", "o", "qkv")
MLP_KINDS = ("gate", "up", "down", "fc", "proj")
ALL_KINDS = ATTENTION_KINDS + MLP_KINDS

# Target selections a config may name; a list of kinds is accepted too.
TARGET_GROUPS = {
    "all": ALL_KINDS,
    "attention": ATTENTION_KINDS,
    "mlp": MLP_KINDS,
}

_LAYER_INDEX = re.compile(r"\.(?:h|layers|layer|blocks|decoder\.layers)\.(\d+)\.")

# (parent, leaf) -> kind. The parent matters: GPT-2 names both its attention
# output and its MLP output `c_proj`.
_KIND_BY_NAME = {
    ("attn", "c_attn"): "qkv",
    ("attn", "c_proj"): "o",
    ("mlp", "c_fc"): "fc",
    ("mlp", "c_proj"): "proj",
    ("self_attn", "q_proj"): "q",
    ("self_attn", "k_proj"): "k",
    ("self_attn", "v_proj"): "v",
    ("self_attn", "o_proj"): "o",
    ("self_attn", "qkv_proj"): "qkv",
    ("mlp", "gate_proj"): "gate",
    ("mlp", "up_proj"): "up",
    ("mlp", "down_proj"): "down",
    ("mlp", "fc1"): "fc",
    ("mlp", "fc2"): "proj",
    ("attention", "query_key_value"): "qkv",
    ("attention", "dense"): "o",
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


def _kind_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) < 2:
        return None
    parent, leaf = parts[-2], parts[-1]
    kind = _KIND_BY_NAME.get((parent, leaf))
    if kind is not None:
        return kind
    # Generic fallbacks for families not listed above: an MLP-ish parent.
    if parent in ("mlp", "feed_forward", "ffn"):
        return "fc" if "fc" in leaf or "in" in leaf else "proj"
    return None


def _layer_of(name: str) -> int | None:
    match = _LAYER_INDEX.search("." + name + ".")
    return int(match.group(1)) if match else None


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
    that need no weights can be answered without loading any.
    """
    kinds = set(resolve_targets(target))
    inventory = []
    for name, module in model.named_modules():
        features = _features(module)
        if features is None:
            continue
        kind = _kind_of(name)
        layer = _layer_of(name)
        if kind is None or layer is None or kind not in kinds:
            continue
        inventory.append(ModuleInfo(name, layer, kind, *features))
    if not inventory:
        raise UserError(
            f"no adaptable modules of kind(s) {sorted(kinds)} found in "
            f"{type(model).__name__}; check the model and the `target` setting"
        )
    return inventory


def layer_count(inventory: Iterable[ModuleInfo]) -> int:
    return 1 + max(m.layer for m in inventory)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as (d_out, d_in), whatever its storage convention."""
    return module.weight.T if _is_conv1d(module) else module.weight
