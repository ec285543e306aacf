"""One run end to end: load → allocate → adapt → train → evaluate → record.

Training is a plain PyTorch loop rather than the HF Trainer: the loop is short,
it computes the loss only on response positions (the Trainer's model call
projects every position onto the vocabulary), it batches by length with
dynamic padding, stops on a non-finite loss at the exact step, and calls
AdaLoRA's `update_and_allocate` where it must. `bench/train_throughput.py`
measures it against a plain Trainer reference.

Precision: bf16 autocast (CPU, or CUDA when present) with the LoRA weights and
AdamW state in fp32; `fp32` turns autocast off.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adaptive_lora.config import RunConfig, TrainSettings
from adaptive_lora.data import TokenizedSplit, collate, length_grouped_batches
from adaptive_lora.environment import environment_manifest, now_iso, peak_memory_mb
from adaptive_lora.errors import UserError
from adaptive_lora.evaluate import autocast_context, mean_loss, response_loss_sum
from adaptive_lora.fast_step import fast_training
from adaptive_lora.records import STATUS_DONE, STATUS_FAILED, RunResult, run_id_for, write_json


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


class MetricLoggers:
    """Optional tensorboard / mlflow sinks for the loss curves (off by default)."""

    def __init__(self, names: list[str], run_dir: Path, run_id: str):
        self.writers: list[Callable[[str, float, int], None]] = []
        self._closers: list[Callable[[], None]] = []
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise UserError(
                        "report_to tensorboard needs `pip install tensorboard`"
                    ) from None
                writer = SummaryWriter(str(run_dir / "tensorboard"))
                self.writers.append(lambda k, v, s, w=writer: w.add_scalar(k, v, s))
                self._closers.append(writer.close)
            elif name == "mlflow":
                try:
                    import mlflow
                except ImportError:
                    raise UserError("report_to mlflow needs `pip install mlflow`") from None
                mlflow.start_run(run_name=run_id)
                self.writers.append(lambda k, v, s: mlflow.log_metric(k, v, step=s))
                self._closers.append(mlflow.end_run)

    def log(self, key: str, value: float, step: int) -> None:
        for write in self.writers:
            write(key, value, step)

    def close(self) -> None:
        for close in self._closers:
            close()


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
    log_every = max(1, steps // 10)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        micro = [
            collate([train_split.features[i] for i in next(stream)], pad_token_id)
            for _ in range(settings.grad_accum)
        ]
        # Mean over every response token of the optimizer step, however it is split.
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
        outcome.steps = step
        outcome.train_loss_curve.append([step, step_loss])
        if loggers:
            loggers.log("train/loss", step_loss, step)
        if val_split is not None and val_every and step % val_every == 0 and step < steps:
            _record_val(
                model, val_split, outcome, step, pad_token_id, eval_batch_size, precision, loggers
            )
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{outcome.real_tokens / elapsed:.0f}")
        if quiet and (step % log_every == 0 or step == steps):
            print(
                f"step {step}/{steps} loss {step_loss:.4f} "
                f"tok/s {outcome.real_tokens / elapsed:.0f} elapsed {elapsed:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    bar.close()
    outcome.seconds = time.perf_counter() - start
    outcome.final_train_loss = (
        outcome.train_loss_curve[-1][1] if outcome.train_loss_curve else math.nan
    )
    if val_split is not None:
        _record_val(
            model, val_split, outcome, steps, pad_token_id, eval_batch_size, precision, loggers
        )
    return outcome


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


# ---- one run, recorded -------------------------------------------------------------------


def execute_run(
    config: RunConfig,
    out_root: Path | str,
    *,
    run_id: str | None = None,
    loaded: Any = None,
    quiet: bool = False,
) -> RunResult:
    """Train and evaluate one configured run and leave a self-describing run folder.

    A bad configuration or input raises `UserError` before the folder is written.
    A run that fails while training (non-finite loss, an exception) returns a
    result with status `failed` and a one-line reason; its folder says so too.
    `loaded` (a `models.LoadedModel`) lets a study load the model once; the
    adapter is removed from it again before returning.
    """
    from adaptive_lora.run_steps import RunSteps

    config.validate()
    run_id = run_id or run_id_for(config.to_dict())
    run_dir = Path(out_root) / run_id
    steps = RunSteps(config, run_dir, run_id, quiet=quiet)
    steps.prepare(loaded)  # loads model and data, allocates: UserErrors surface here
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a previous, interrupted attempt of the same run
    run_dir.mkdir(parents=True)
    manifest = steps.start_manifest()
    try:
        metrics = steps.train_and_evaluate()
        manifest.update(status=STATUS_DONE, ended=now_iso())
        result = RunResult(run_id, run_dir, STATUS_DONE, metrics, manifest)
    except NonFiniteLoss as error:
        manifest.update(
            status=STATUS_FAILED, error=str(error), failed_step=error.step, ended=now_iso()
        )
        result = RunResult(
            run_id, run_dir, STATUS_FAILED, steps.partial_metrics(), manifest, str(error)
        )
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a failed run is recorded, the study goes on
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        manifest.update(status=STATUS_FAILED, error=reason, ended=now_iso())
        result = RunResult(
            run_id, run_dir, STATUS_FAILED, steps.partial_metrics(), manifest, reason
        )
    finally:
        steps.release()
    manifest["peak_memory_mb"] = peak_memory_mb(steps.precision.device)
    write_json(run_dir / "manifest.json", manifest)
    return result


def base_manifest(config: RunConfig, run_id: str, precision: Precision) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": "running",
        "started": now_iso(),
        "seed": config.seed,
        "data_seed": config.data.data_seed,
        "precision": precision.name,
        **environment_manifest(precision.device),
    }
