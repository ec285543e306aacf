"""The importance probe: how much does each target weight matter to the training loss?

One forward and backward pass of the frozen base model (no LoRA) per calibration
batch. No weight requires a gradient; hooks on each target module keep its input x
and, in the backward pass, form its weight gradient G = δᵀx from the gradient δ of
its output, fold G into a running statistic and free it at once, so memory stays
near inference plus one weight's gradient (`grad_nuclear` also keeps a running sum
per target weight; see below).

Metrics, all *intensive* (averaged over the matrix entries) so that a big matrix is
not favoured for being big: the allocation works in parameters already and
charges each module its size there.

* `taylor` — mean over batches of the per-batch first-order Taylor sensitivity
  |W ⊙ G_b| (the loss change from zeroing a weight), then mean over entries.
  Molchanov et al., "Importance Estimation for Neural Network Pruning" (CVPR 2019);
  AdaLoRA, Zhang et al. (ICLR 2023), which likewise scores |w · ∂L/∂w| per batch
  before smoothing; GoRA, He et al. (2025). Taking |·| per batch (not of the
  summed gradient) measures sensitivity, which gradient noise does not cancel.
* `grad_norm` — mean over batches of ‖G_b‖_F / √(d_in·d_out), the root-mean-square
  gradient entry.
* `grad_nuclear` — ‖Ḡ‖_* / √(d_in·d_out) of the *mean* gradient Ḡ over the batches
  seen, estimated as the sum of its top `nuclear_rank` singular values from a
  randomized SVD (`torch.svd_lowrank`, Halko et al. 2011, seeded; an exact SVD
  when `nuclear_rank` covers the whole spectrum). The mean gradient is what a
  low-rank update can follow (GoRA); this metric keeps one
  running sum per target weight, i.e. one extra copy of the target weights.

Early stopping: after every batch from the second on, the Spearman correlation
between the current and the previous score vectors is recorded; with `early_stop`
set, the probe stops once it reaches that value (the ranking has settled).

Only a `Calibration` (training split) is ever read. Results are cached as JSON,
keyed by everything that determines them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from adaptive_lora.allocation.probe_settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRECISION,
    METRICS,
    PRECISIONS,
    ProbeSettings,
)
from adaptive_lora.compute.fast_step import (
    frozen_weights_stored_in,
    keep_freed_memory,
    norm_outputs_cast_to,
)
from adaptive_lora.compute.loss import response_loss_sum
from adaptive_lora.compute.threads import single_thread
from adaptive_lora.data.calibration import Calibration
from adaptive_lora.data.splits import hash_examples
from adaptive_lora.model.inventory import ModuleInfo
from adaptive_lora.model.loading import cache_root
from adaptive_lora.records import write_json

# The probe settings and their constants live in probe_settings; re-exported here.
__all__ = [
    "CACHE_VERSION",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PRECISION",
    "METRICS",
    "PRECISIONS",
    "ImportanceResult",
    "ProbeSettings",
    "cached_importance",
    "importance_cache_dir",
    "importance_cache_key",
    "probe_importance",
    "spearman",
    "weights_fingerprint",
]


# Bump when the meaning of a cached score changes.
CACHE_VERSION = 2  # 2: bf16 probes hold the weights in bf16 (differs by bf16 rounding of W)


@dataclass
class ImportanceResult:
    """Scores per module and what the probe cost."""

    metric: str
    scores: dict[str, float]
    n_batches: int  # batches actually used (fewer than asked when early stopping)
    seconds: float
    peak_rss_mb: float  # highest resident memory sampled during the probe
    # Spearman correlation of the scores after batch b with those after b-1, b = 2, 3, ...
    spearman_trace: list[float | None]
    settings: dict[str, Any] = field(default_factory=dict)
    cache: str = "off"  # "hit", "miss" (computed and stored) or "off"
    cache_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ImportanceResult:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: NaN says it
        return float(spearmanr(list(a), list(b)).statistic)


class _PeakRss:
    """Highest resident set size seen at the sampling points (MB)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = 0.0
        self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss / 2**20)


def _nuclear_estimate(grad_sum: torch.Tensor, n: int, q: int, seed: int) -> float:
    """Sum of the top-q singular values of the mean gradient, over √(numel)."""
    mean = grad_sum / n
    if q >= min(mean.shape):
        singular = torch.linalg.svdvals(mean)  # the whole spectrum: exact and cheaper
    else:
        # svd_lowrank draws from the global generator: fork it so the probe never
        # shifts the random stream of whatever runs after it (training).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, singular, _ = torch.svd_lowrank(mean, q=q, niter=2)
    return float(singular[:q].sum()) / math.sqrt(mean.numel())


@contextlib.contextmanager
def _weight_gradients_to(
    model: nn.Module,
    targets: Mapping[str, nn.Module],
    receive: Callable[[str, torch.Tensor], None],
):
    """Hand `receive(name, G)` the gradient of each target's weight, batch by batch.

    G = dL/dW is formed from the module's input x and the gradient δ of its
    output, in the weight's own layout (Linear: δᵀx, (out, in); GPT-2 Conv1D:
    xᵀδ, (in, out)), in the dtype of δ: the product autograd would form under
    autocast. The weights themselves need not require grad, so autograd never
    allocates, transposes or accumulates a `.grad` for them; the input
    embedding's output is made to require grad so the backward pass reaches
    every layer.
    """

    def keep_input(name: str, module: nn.Module, inputs, output) -> None:
        if not torch.is_grad_enabled() or not output.requires_grad:
            return
        x = inputs[0].detach()
        conv1d = type(module).__name__ == "Conv1D"

        def on_output_grad(delta: torch.Tensor) -> None:
            d2 = delta.reshape(-1, delta.shape[-1])
            x2 = x.reshape(-1, x.shape[-1]).to(d2.dtype)
            receive(name, x2.t() @ d2 if conv1d else d2.t() @ x2)

        output.register_hook(on_output_grad)

    def embeddings_require_grad(module, inputs, output):
        return output.detach().requires_grad_(torch.is_grad_enabled())

    handles = [model.get_input_embeddings().register_forward_hook(embeddings_require_grad)]
    for name, module in targets.items():
        handles.append(module.register_forward_hook(functools.partial(keep_input, name)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Statistics:
    """Running per-module statistics of the weight gradients, and the scores they give."""

    def __init__(self, modules: Mapping[str, nn.Module], names: list[str], settings: ProbeSettings):
        self.modules, self.names, self.settings = modules, names, settings
        self.totals = dict.fromkeys(names, 0.0)  # Σ_b per-batch statistic (taylor, grad_norm)
        self.grad_sums: dict[str, torch.Tensor] = {}  # Σ_b G_b (grad_nuclear)
        self.rss = _PeakRss()

    def fold(self, name: str, grad: torch.Tensor) -> None:
        """Add one batch's statistic of G (laid out like the weight) and let G go."""
        metric = self.settings.metric
        if metric == "taylor":
            # G is ours: the product is formed in its memory and summed in fp32,
            # whatever the weights are held in.
            product = grad.mul_(self.modules[name].weight.detach()).abs_()
            self.totals[name] += float(product.sum(dtype=torch.float32)) / product.numel()
        elif metric == "grad_norm":
            norm = torch.linalg.vector_norm(grad, dtype=torch.float32)
            self.totals[name] += float(norm) / math.sqrt(grad.numel())
        elif name in self.grad_sums:
            self.grad_sums[name] += grad
        else:
            self.grad_sums[name] = grad.float()
        self.rss.sample()

    def estimate(self, used: int) -> list[float]:
        """The scores after `used` batches, in the order of `names`."""
        if self.settings.metric != "grad_nuclear":
            return [self.totals[name] / used for name in self.names]
        rank, seed = self.settings.nuclear_rank, self.settings.seed
        # Singular values do not depend on the orientation either (Conv1D or Linear).
        with single_thread():
            return [
                _nuclear_estimate(self.grad_sums[name], used, rank, seed)
                if name in self.grad_sums
                else 0.0
                for name in self.names
            ]


@contextlib.contextmanager
def _probing(
    model: nn.Module,
    held_in: torch.dtype | None,
    targets: Mapping[str, nn.Module],
    receive: Callable[[str, torch.Tensor], None],
):
    """The model set up for the probe: frozen, eval mode, gradients to `receive`.

    Afterwards its `requires_grad` flags, held weights and train/eval mode are as
    they were.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    held = contextlib.ExitStack()
    try:
        # No weight requires grad: autograd computes only the activation gradients,
        # and each target's G is formed by its own hook (no .grad, no accumulation).
        for p, _ in flags:
            p.requires_grad_(False)
        if held_in is not None:
            # Every linear weight held in bf16 for the probe, and norm outputs cast once:
            # the matmuls autocast would run anyway, without casting 106M weights per
            # batch or the same activation once per consuming projection.
            held.enter_context(frozen_weights_stored_in(model, held_in))
            held.enter_context(norm_outputs_cast_to(model, held_in))
        held.enter_context(_weight_gradients_to(model, targets, receive))
        model.eval()
        yield
    finally:
        held.close()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _backward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
    held_in: torch.dtype | None,
    rss: _PeakRss,
) -> None:
    """One forward and backward pass of the training loss on `batch`."""
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.autocast(device.type, torch.bfloat16, enabled=held_in is not None):
        # The training objective itself (mean CE on response tokens), with the
        # vocabulary projection only where there is a label.
        loss_sum, n_tokens = response_loss_sum(model, batch)
        loss = loss_sum / max(n_tokens, 1)
    rss.sample()
    loss.backward()


def _run_batches(
    model: nn.Module,
    calibration: Calibration,
    stats: _Statistics,
    device: torch.device,
    held_in: torch.dtype | None,
) -> tuple[int, list[float | None]]:
    """Fold the calibration batches in; the batches used and the Spearman trace.

    Stops early once successive score vectors reach `settings.early_stop`.
    """
    settings = stats.settings
    trace: list[float | None] = []
    previous: list[float] | None = None
    used = 0
    for batch in calibration.batches(settings.n_batches, settings.batch_size, settings.seed):
        _backward(model, batch, device, held_in, stats.rss)
        used += 1
        current = stats.estimate(used)
        if previous is not None:
            rho = spearman(previous, current)
            trace.append(None if math.isnan(rho) else rho)
            stop = settings.early_stop
            if stop is not None and not math.isnan(rho) and rho >= stop:
                break
        previous = current
    return used, trace


def probe_importance(
    model: nn.Module,
    inventory: Sequence[ModuleInfo],
    calibration: Calibration,
    settings: ProbeSettings,
) -> ImportanceResult:
    """Score every inventory module of the frozen `model` on calibration batches.

    Batches are `calibration.batches(n_batches, batch_size, seed)` of `settings`,
    the model runs in eval mode (no dropout), and the loss is the model's own mean
    cross-entropy over label tokens. Precision "fp32" runs in the model's own
    dtype (exact); "bf16" runs the forward under bf16 autocast (about 1.75× faster
    on CPUs with bf16 support; the statistics are still accumulated in fp32).
    Afterwards the model's `requires_grad` flags, existing `.grad`s and train/eval
    mode are as they were.
    """
    modules = dict(model.named_modules())
    names = [m.name for m in inventory]
    own_dtype = modules[names[0]].weight.dtype
    device = modules[names[0]].weight.device
    held_in = torch.bfloat16 if settings.precision == "bf16" else None
    stats = _Statistics(modules, names, settings)
    keep_freed_memory()  # every batch forms 106M gradient entries (SmolLM2): reuse the memory
    start = time.perf_counter()
    with _probing(model, held_in, {n: modules[n] for n in names}, stats.fold):
        used, trace = _run_batches(model, calibration, stats, device, held_in)
        scores = dict(zip(names, stats.estimate(used)))
    return ImportanceResult(
        metric=settings.metric,
        scores=scores,
        n_batches=used,
        seconds=round(time.perf_counter() - start, 3),
        peak_rss_mb=round(stats.rss.peak, 1),
        spearman_trace=trace,
        settings={
            "n_batches": settings.n_batches,
            "batch_size": settings.batch_size,
            "seed": settings.seed,
            "early_stop": settings.early_stop,
            "nuclear_rank": settings.used_nuclear_rank,
            "precision": settings.precision,
            "dtype": str(held_in or own_dtype).removeprefix("torch."),
        },
    )


def importance_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the score files: `cache_dir` itself, else `models.cache_root()/importance`."""
    if cache_dir is not None:
        return Path(cache_dir)

    return cache_root() / "importance"


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes (a fallback model key)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def importance_cache_key(
    model: nn.Module,
    inventory: Sequence[ModuleInfo],
    calibration: Calibration,
    settings: ProbeSettings,
    *,
    model_fingerprint: str | None = None,
    data_hash: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key of a probe and the fields it hashes.

    The key covers the model (its fingerprint, else a hash of its weights), the
    data (`data_hash`, else the calibration's) and the calibration features
    themselves, every field of `settings` (`nuclear_rank` only for
    `grad_nuclear`) and the target module names.
    """
    key_fields = {
        "version": CACHE_VERSION,
        "model": model_fingerprint or weights_fingerprint(model),
        "data": data_hash or calibration.data_hash,
        "calibration": calibration.fingerprint,
        **settings.key_fields(),
        "targets": hash_examples([m.name for m in inventory]),
    }
    return hash_examples(key_fields), key_fields


def _read_cached(path: Path, key: str) -> ImportanceResult | None:
    """The result stored at `path` under `key`; None when missing, unreadable or stale."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            result = ImportanceResult.from_dict(stored["result"])
            result.cache, result.cache_path = "hit", str(path)
            return result
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or unreadable: compute it again
    return None


def cached_importance(
    model: nn.Module,
    inventory: Sequence[ModuleInfo],
    calibration: Calibration,
    *,
    settings: ProbeSettings,
    model_fingerprint: str | None = None,
    data_hash: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ImportanceResult:
    """`probe_importance`, answered from the JSON cache when the same probe ran before.

    The key is `importance_cache_key`: the model, the data, the calibration
    features, the probe `settings` and the target module names.
    """
    key, key_fields = importance_cache_key(
        model,
        inventory,
        calibration,
        settings,
        model_fingerprint=model_fingerprint,
        data_hash=data_hash,
    )
    path = importance_cache_dir(cache_dir) / f"{settings.metric}-{key[:24]}.json"
    cached = _read_cached(path, key)
    if cached is not None:
        return cached
    result = probe_importance(model, inventory, calibration, settings)
    result.cache, result.cache_path = "miss", str(path)
    write_json(path, {"key": key, "key_fields": key_fields, "result": result.to_dict()})
    return result
