"""Where and in which precision a run computes: bf16 autocast (CUDA if present, else
CPU) with fp32 adapter weights and optimizer state, or plain fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    name: str


def resolve_precision(setting: str) -> Precision:
    """`auto`/`bf16`: bf16 autocast on CUDA if present, else on CPU; `fp32`: no autocast."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "fp32":
        return Precision(device, None, "fp32")
    return Precision(device, torch.bfloat16, f"bf16-autocast-{device.type}")


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on the given device, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
