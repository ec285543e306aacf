"""Where and in which precision a run computes: bf16 autocast (CUDA if present, else
CPU) with fp32 adapter weights and optimizer state, or plain fp32.

`auto` means the precision this machine computes fastest. bf16 autocast pays only where
the hardware has bf16 matrix instructions (AMX or AVX512-bf16 on a CPU, a GPU with bf16);
on a CPU without them (AVX2 only: most CPUs made before Zen 4 or Sapphire Rapids) oneDNN
emulates bf16 and a 1024² matmul runs ~50× slower than in fp32, so `auto` is fp32 there.
The choice is made from the CPU's flags and confirmed by a short measured matmul, and kept
in a small cache file per machine, so every run of a study on one machine resolves alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptive_lora.environment import cpu_flags, cpu_model
from adaptive_lora.model.loading import cache_root
from adaptive_lora.records import write_json

# The CPU flags that mean bf16 matmuls run on native instructions.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# A native-bf16 CPU keeps bf16 unless the measured matmul says its kernels do not use the
# instructions (e.g. ONEDNN_MAX_CPU_ISA capped below them): a wide margin, so that the
# noise of a short measurement can never flip the choice from one process to the next.
SLOWER_THAN_FP32 = 1.5


@dataclass(frozen=True)
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    name: str


def resolve_precision(setting: str) -> Precision:
    """`bf16`: bf16 autocast on CUDA if present, else on CPU; `fp32`: no autocast;
    `auto`: whichever of the two `fastest_precision` says this machine computes faster."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "auto":
        setting = fastest_precision(device)
    if setting == "fp32":
        return Precision(device, None, "fp32")
    return Precision(device, torch.bfloat16, f"bf16-autocast-{device.type}")


def fastest_precision(device: torch.device) -> str:
    """ "bf16" or "fp32": what `auto` resolves to on this machine (see the module's note)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if not has_native_bf16():
        return "fp32"
    return _cached_cpu_choice()


def has_native_bf16() -> bool:
    """Does this CPU have bf16 matrix instructions (`NATIVE_BF16_FLAGS`)?"""
    flags = cpu_flags()
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def _machine_key() -> str:
    """What the measured choice depends on: the CPU, its flags, torch and a oneDNN ISA cap."""
    parts = [
        cpu_model(),
        " ".join(sorted(cpu_flags())),
        torch.__version__,
        os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "",
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _cached_cpu_choice() -> str:
    path = cache_root() / "precision.json"
    key = _machine_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get(key) in ("bf16", "fp32"):
        return cached[key]
    ratio = bf16_over_fp32_seconds()
    choice = "fp32" if ratio > SLOWER_THAN_FP32 else "bf16"
    _write_choice(path, {**cached, key: choice})
    return choice


def _write_choice(path: Path, choices: dict[str, str]) -> None:
    """Written atomically; an unwritable cache only means measuring again next time."""
    try:
        write_json(path, choices)
    except OSError:
        pass


def bf16_over_fp32_seconds(size: int = 256, repeats: int = 5) -> float:
    """Seconds of a size² bf16 matmul over an fp32 one on this CPU (best of `repeats`)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        torch.matmul(x, y)  # warm-up: kernel selection and first-touch allocation
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(x, y)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a.bfloat16(), b.bfloat16()) / best(a, b)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on the given device, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
