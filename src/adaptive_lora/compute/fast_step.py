"""What makes a bf16-autocast LoRA training step fast on a CPU, each part measured.

`fast_training(model, dtype)` is a context manager for the duration of
training. Inside it, the model computes what autocast would compute, with fewer
full-width copies of activations (each one a pass over memory, and on first
touch a page fault per 4 KB):

* frozen base weights are held in bf16 (cast once, not at every matmul);
* PEFT's cast of each LoRA layer's input to fp32 is switched off (autocast cast
  it straight back to bf16 for the low-rank matmul);
* each LoRA layer adds its low-rank product into the base output with one
  in-place `addmm_` (scaling folded in as `alpha`) instead of PEFT's
  `result + lora_B(lora_A(x)) * scaling`, two extra full-width passes forward
  and one backward;
* the output of each pre-projection norm is cast to bf16 once instead of once
  per consuming matmul (q, k, v and their three LoRA A's share one input).

Everything is put back on exit. One difference in arithmetic is accepted: the
gradient reaching a norm's output is summed over its consumers in bf16 rather
than fp32. `bench/train_throughput.py` measures the whole path; the tests check
outputs and gradients against PEFT's own forward.

The fused forward re-implements PEFT's LoRA `Linear.forward` from the layer's parts, as
PEFT `PEFT_TESTED` has them. Before patching, `check_peft_lora` makes sure they are
there (`expect_signature` and `peft_changed` serve `methods/adalora/adapter.py` too): another
PEFT gets a one-line error, never a forward that silently computes something else.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import inspect
from collections.abc import Iterator
from typing import Any, NoReturn

import torch

from adaptive_lora.errors import UserError

# The PEFT whose internals the patches here and in methods/adalora/adapter.py were written against.
PEFT_TESTED = "0.21.2"

# Norms whose output feeds only autocast matmuls, by leaf name (Llama, GPT-2).
_PRE_PROJECTION_NORMS = frozenset(
    {"input_layernorm", "post_attention_layernorm", "norm", "ln_1", "ln_2", "ln_f"}
)


@contextlib.contextmanager
def fast_training(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Run the body with the fast path installed; `dtype` None (fp32 training) changes nothing."""
    if dtype is None:
        yield
        return
    check_peft_lora(model)
    keep_freed_memory()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_lora_inputs_uncast(model))
        stack.enter_context(frozen_weights_stored_in(model, dtype))
        stack.enter_context(fused_lora_forward(model))
        stack.enter_context(norm_outputs_cast_to(model, dtype))
        yield


@contextlib.contextmanager
def frozen_weights_stored_in(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Hold the frozen linear weights in `dtype`, then put the fp32 ones back.

    A tied output head gets its own copy (the input embedding, a lookup, stays
    fp32); both are frozen, so untying them for a while changes nothing.
    """
    originals = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            weight = module.weight
            if weight.requires_grad or weight.dtype == dtype:
                continue
            originals.append((module, weight))
            module.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    try:
        yield
    finally:
        for module, weight in originals:
            module.weight = weight


def peft_changed(what: str) -> NoReturn:
    """The one-line error for a PEFT whose internals are not those a patch knows."""
    import peft

    raise UserError(
        f"PEFT {getattr(peft, '__version__', '?')}: {what}, which adaptive-lora patches; "
        f"install the PEFT it was tested with: pip install peft=={PEFT_TESTED} "
        "(constraints.txt pins it)"
    )


def expect_signature(owner: Any, name: str, params: tuple[str, ...]) -> None:
    """`owner.name` must be a callable whose parameters (after `self`) are `params`: a patch
    that replaces or calls it by another signature would compute something else."""
    label = getattr(owner, "__qualname__", type(owner).__qualname__) + "." + name
    member = getattr(owner, name, None)
    if not callable(member):
        peft_changed(f"{label} is missing")
    try:
        found = tuple(p for p in inspect.signature(member).parameters if p != "self")
    except (TypeError, ValueError):  # no signature to read: not the Python method we know
        found = ("?",)
    if found != params:
        peft_changed(f"{label} takes ({', '.join(found)}), not ({', '.join(params)})")


# What `lora_forward_fused` and `_lora_inputs_uncast` read from each LoRA Linear layer.
_LORA_PARTS = (
    "base_layer", "lora_A", "lora_B", "lora_dropout", "scaling", "lora_variant",
    "active_adapters", "disable_adapters", "merged", "cast_input_dtype_enabled",
)  # fmt: skip


def check_peft_lora(model: torch.nn.Module) -> None:
    """The LoRA layer class and the parts of it the fast path uses are as PEFT_TESTED has
    them; a one-line `UserError` otherwise (before anything is patched)."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        peft_changed("peft.tuners.lora.layer.Linear is missing")
    expect_signature(Linear, "forward", ("x", "args", "kwargs"))
    for layer in _lora_layers(model)[:1]:  # the parts are set by the class's __init__
        missing = [part for part in _LORA_PARTS if not hasattr(layer, part)]
        if missing:
            peft_changed(f"its LoRA Linear layers have no {', '.join(missing)}")


def _lora_layers(model: torch.nn.Module):
    from peft.tuners.lora.layer import Linear as LoraLinear

    return [m for m in model.modules() if type(m) is LoraLinear]


@contextlib.contextmanager
def _lora_inputs_uncast(model: torch.nn.Module) -> Iterator[None]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, before):
            layer.cast_input_dtype_enabled = value


def _single_plain_adapter(layer) -> str | None:
    """The one active vanilla-LoRA adapter of `layer`, or None when the fused path does not apply."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or active[0] in layer.lora_variant:
        return None
    return active[0]


def lora_forward_fused(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT LoRA `Linear.forward` with the low-rank product added in place by one addmm_."""
    name = _single_plain_adapter(layer) if not args and not kwargs else None
    if name is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    down = layer.lora_A[name](layer.lora_dropout[name](x))
    if not result.is_contiguous() or down.dtype != result.dtype:
        return result + layer.lora_B[name](down) * layer.scaling[name]
    # The base output is not saved by its matmul's backward, so updating it in
    # place is safe; autograd's version counter would refuse it otherwise.
    up = layer.lora_B[name].weight.to(result.dtype).t()
    result.view(-1, result.shape[-1]).addmm_(
        down.reshape(-1, down.shape[-1]), up, alpha=layer.scaling[name]
    )
    return result


@contextlib.contextmanager
def fused_lora_forward(model: torch.nn.Module) -> Iterator[None]:
    layers = _lora_layers(model)
    for layer in layers:
        layer.forward = functools.partial(lora_forward_fused, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def norm_outputs_cast_to(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    def cast(module, inputs, output):
        if torch.is_autocast_enabled(output.device.type):
            return output.to(dtype)
        return None

    handles = [
        module.register_forward_hook(cast)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in _PRE_PROJECTION_NORMS and not list(module.children())
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 32 MB for reuse instead of returning them.

    By default glibc hands large blocks back to the kernel (and its mmap
    threshold adapts), so each training step page-faults its activations in
    again. Fixing the threshold at its maximum and raising the trim threshold
    keeps them; peak memory is unchanged, resident memory stays at the peak.
    Returns False where this is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024) and mallopt(m_trim_threshold, 1 << 30))
