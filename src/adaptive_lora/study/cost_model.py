"""A run's duration before any run of its study has finished, from this machine's speed.

The model's parameter count comes from its configuration (a skeleton on the meta device:
no weights, about a second); this machine's speed from a matrix product timed here, at
the model's own MLP shape, in the precision and thread count the run will use. A run then
costs its tokens times the model's FLOPs per token (training through LoRA: a forward and a
backward through frozen weights, about 4 N per token; held-out loss 2 N; an answer's tokens
are decoded one at a time, far from the matmul's pace) over that speed, at the share of it
that the training path and the decoder reach (`PATH_EFFICIENCY`, `DECODE_EFFICIENCY`).

It stays an estimate: every example is counted at `max_length`, and the shares were
measured on one machine (the values' comments say which); once runs have finished, the
study's own times replace it (`study/plan.py`).
"""

from __future__ import annotations

import functools
import math
import time

import torch

from adaptive_lora.compute.precision import autocast_context, resolve_precision
from adaptive_lora.config import RunConfig
from adaptive_lora.errors import UserError

TRAIN_FLOPS_PER_PARAM_TOKEN = 4.0
EVAL_FLOPS_PER_PARAM_TOKEN = 2.0
# Calibrated, not measured as such: the values that reproduce one profiled run of the
# regime map's commonest cell on a 2-core AMD EPYC (AVX2 only, fp32, 1 thread; SmolLM2-135M,
# Alpaca n_train = 100, 13 steps of 8, 50 + 100 held-out items, 16 answers of <= 64
# tokens: training 340.0 s, held-out losses 225.2 s, answers 28.6 s) at a one-thread pace
# of 41.5 GFLOP/s (half the 2-thread fp32 peak bench/train_throughput.py measured there).
# The path's value is above 1 because every example is counted at max_length; both are
# rough on other machines and data, which is why the estimate says "rough".
PATH_EFFICIENCY = 1.05
DECODE_EFFICIENCY = 0.23
SETUP_S = 10.0


@functools.lru_cache(maxsize=8)
def model_shape(model: str) -> tuple[int, int, int] | None:
    """(parameters, hidden size, MLP width) from the model's configuration (None if it
    cannot be read)."""
    from adaptive_lora.model.loading import load_skeleton

    try:
        # Never over the network: offline, a hub config took ~24 s to fail.
        skeleton = load_skeleton(model, local_only=True)
    except (UserError, OSError, ValueError, ImportError):
        return None
    config = skeleton.config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 768)
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    params = sum(p.numel() for p in skeleton.parameters())
    return params, int(hidden), int(width or 4 * hidden)


@functools.lru_cache(maxsize=8)
def matmul_flops_per_s(precision: str, threads: int, width: int, depth: int) -> float:
    """FLOP/s of a (512 × width) @ (width × depth) product here, in `precision`, on
    `threads` threads: the shape of a small model's MLP over a batch of tokens."""
    resolved = resolve_precision(precision)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        a, b = torch.randn(512, width), torch.randn(width, depth)
        with autocast_context(resolved.device, resolved.autocast_dtype):
            a @ b  # warm-up: kernels chosen, caches filled
            repeats, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.3:
                a @ b
                repeats += 1
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return 2.0 * 512 * width * depth * repeats / seconds


def estimated_seconds(config: RunConfig, threads: int) -> float | None:
    """One run's seconds on this machine, or None when the model's size is unknown."""
    shape = model_shape(config.model)
    if shape is None:
        return None
    params, hidden, width = shape
    t, d, e = config.train, config.data, config.eval
    steps = t.max_steps or math.ceil(t.epochs * d.n_train / (t.batch_size * t.grad_accum))
    train_tokens = steps * t.batch_size * t.grad_accum * d.max_length
    eval_tokens = (d.n_val + d.n_test) * d.max_length
    answer_tokens = e.n_generate * e.max_new_tokens
    pace = matmul_flops_per_s(t.precision, threads, hidden, width)
    compute = (
        TRAIN_FLOPS_PER_PARAM_TOKEN * train_tokens + EVAL_FLOPS_PER_PARAM_TOKEN * eval_tokens
    ) * params / (PATH_EFFICIENCY * pace)  # fmt: skip
    decode = EVAL_FLOPS_PER_PARAM_TOKEN * answer_tokens * params / (DECODE_EFFICIENCY * pace)
    return SETUP_S + compute + decode
