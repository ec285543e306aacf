"""The training loop: a plain PyTorch loop over the adapter parameters.

Not the HF Trainer: the loop is short, it computes the loss only on response
positions (the Trainer's model call projects every position onto the vocabulary),
it batches by length with dynamic padding, stops on a non-finite loss at the exact
step, and calls AdaLoRA's `update_and_allocate` where it must (through `after_step`).
`bench/train_throughput.py` measures it against a plain Trainer reference.

Precision: bf16 autocast with the LoRA weights and AdamW state in fp32 (see
`compute/precision.py`); under autocast `compute/fast_step.py` is in place.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from adaptive_lora import progress
from adaptive_lora.compute.fast_step import fast_training
from adaptive_lora.compute.loss import response_loss_sum
from adaptive_lora.compute.precision import Precision, autocast_context
from adaptive_lora.config import TrainSettings
from adaptive_lora.data.prompts import TokenizedSplit, collate, length_grouped_batches
from adaptive_lora.evaluation import mean_loss
from adaptive_lora.training.loggers import MetricLoggers


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float):
        super().__init__(f"training loss is {value} at step {step}")
        self.step = step


@dataclass
class TrainOutcome:
    steps: int = 0
    train_loss_curve: list[list[float]] = field(default_factory=list)
    val_loss_curve: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    real_tokens: int = 0  # non-padding tokens the model trained on
    final_train_loss: float = math.nan

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds > 0 else math.nan


def total_steps(n_examples: int, settings: TrainSettings) -> int:
    if settings.max_steps is not None:
        return settings.max_steps
    batches_per_epoch = math.ceil(n_examples / settings.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / settings.grad_accum)
    return max(1, math.ceil(settings.epochs * steps_per_epoch))


def epoch_batches(
    split: TokenizedSplit, settings: TrainSettings, seed: int, epoch: int
) -> list[list[int]]:
    """Index batches of one epoch: length-grouped (less padding) or plainly shuffled."""
    epoch_seed = seed * 1_000_003 + epoch
    if settings.group_by_length:
        return length_grouped_batches(split.lengths, settings.batch_size, epoch_seed)
    order = torch.randperm(len(split.features), generator=torch.Generator().manual_seed(epoch_seed))
    order = order.tolist()
    return [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]


def micro_batch_stream(split: TokenizedSplit, settings: TrainSettings, seed: int):
    """Endless stream of index batches, epoch after epoch, each epoch reshuffled by seed."""
    epoch = 0
    while True:
        yield from epoch_batches(split, settings, seed, epoch)
        epoch += 1


def lr_lambda(settings: TrainSettings, steps: int) -> Callable[[int], float]:
    warmup = int(round(settings.warmup_ratio * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        if settings.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def train_adapter(
    model: torch.nn.Module, train_split: TokenizedSplit, **options: Any
) -> TrainOutcome:
    """Train the trainable (adapter) parameters of `model`; raise NonFiniteLoss on NaN/inf.

    `options` are those of `_train_loop`. Under autocast, `fast_step.fast_training`
    is in place for the duration (frozen weights in bf16, fused LoRA forward);
    LoRA weights stay fp32.
    """
    precision = options["precision"]
    # Attention stays PyTorch SDPA: on SmolLM2 with 2 cores, eager attention was 3-15%
    # faster on short batches (8 x 149 tokens) but 1.5x slower on long ones (8 x 512).
    with fast_training(model, precision.autocast_dtype):
        return _train_loop(model, train_split, **options)


def _train_loop(
    model: torch.nn.Module,
    train_split: TokenizedSplit,
    *,
    settings: TrainSettings,
    seed: int,
    pad_token_id: int,
    precision: Precision,
    val_split: TokenizedSplit | None = None,
    eval_batch_size: int = 16,
    quiet: bool = False,
    after_step: Callable[[int], None] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    loggers: MetricLoggers | None = None,
) -> TrainOutcome:
    steps = total_steps(len(train_split.features), settings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings, steps))
    stream = micro_batch_stream(train_split, settings, seed)
    outcome = TrainOutcome()
    val_every = settings.eval_every
    model.train()
    bar = tqdm(
        total=steps, desc="train", unit="step", disable=quiet, dynamic_ncols=True, file=sys.stderr
    )
    start = time.perf_counter()
    progress.report("training", 0, steps)
    for step in range(1, steps + 1):
        micro = [
            collate([train_split.features[i] for i in next(stream)], pad_token_id)
            for _ in range(settings.grad_accum)
        ]
        step_loss = _backward_micro_batches(model, micro, step, precision, outcome)
        _optimizer_step(params, optimizer, scheduler, settings, step, extra_loss, after_step)
        outcome.steps = step
        outcome.train_loss_curve.append([step, step_loss])
        if loggers:
            loggers.log("train/loss", step_loss, step)
        if val_split is not None and val_every and step % val_every == 0 and step < steps:
            _record_val(
                model, val_split, outcome, step, pad_token_id, eval_batch_size, precision, loggers
            )
        _show_progress(bar, step, steps, step_loss, outcome.real_tokens, start, quiet)
        progress.report("training", step, steps)
    bar.close()
    outcome.seconds = time.perf_counter() - start
    outcome.final_train_loss = (
        outcome.train_loss_curve[-1][1] if outcome.train_loss_curve else math.nan
    )
    if val_split is not None:
        progress.report("validation loss")
        _record_val(
            model, val_split, outcome, steps, pad_token_id, eval_batch_size, precision, loggers
        )
    return outcome


def _optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: TrainSettings,
    step: int,
    extra_loss: Callable[[], torch.Tensor] | None,
    after_step: Callable[[int], None] | None,
) -> None:
    """After the micro-batches' backward: the regulariser's gradient, clipping, the update,
    the schedule, the method's hook, and fresh gradients for the next step."""
    if extra_loss is not None:  # a regulariser on the adapter weights (AdaLoRA), in fp32
        penalty = extra_loss()
        if not torch.isfinite(penalty):
            raise NonFiniteLoss(step, float(penalty))
        penalty.backward()
    if settings.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    scheduler.step()
    if after_step is not None:
        after_step(step)  # AdaLoRA reallocates here, after the optimizer step
    optimizer.zero_grad(set_to_none=True)


def _backward_micro_batches(
    model: torch.nn.Module,
    micro: list[dict[str, torch.Tensor]],
    step: int,
    precision: Precision,
    outcome: TrainOutcome,
) -> float:
    """Forward and backward over one optimizer step's micro-batches; the step's mean loss.

    The loss is the mean over every response token of the optimizer step, however the
    step is split into micro-batches.
    """
    step_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    step_loss = 0.0
    for batch in micro:
        batch = {k: v.to(precision.device) for k, v in batch.items()}
        with autocast_context(precision.device, precision.autocast_dtype):
            loss_sum, _ = response_loss_sum(model, batch)
        loss = loss_sum / max(step_tokens, 1)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(step, float(loss))
        loss.backward()
        step_loss += float(loss.detach())
        outcome.real_tokens += int(batch["attention_mask"].sum())
    return step_loss


def _show_progress(bar, step: int, steps: int, loss: float, tokens: int, start: float, quiet: bool):
    """The progress bar, or (quiet) a log line at every tenth of the run and at its end."""
    elapsed = time.perf_counter() - start
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / elapsed:.0f}")
    if quiet and (step % max(1, steps // 10) == 0 or step == steps):
        print(
            f"step {step}/{steps} loss {loss:.4f} tok/s {tokens / elapsed:.0f} "
            f"elapsed {elapsed:.0f}s",
            file=sys.stderr,
            flush=True,
        )


def _record_val(model, val_split, outcome, step, pad_token_id, batch_size, precision, loggers):
    if not val_split.features:
        return
    value = mean_loss(
        model,
        val_split,
        pad_token_id=pad_token_id,
        batch_size=batch_size,
        device=precision.device,
        autocast_dtype=precision.autocast_dtype,
    )
    outcome.val_loss_curve.append([step, value])
    if loggers:
        loggers.log("val/loss", value, step)
    model.train()
