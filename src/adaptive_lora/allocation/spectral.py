"""Rank from the weights' spectra: modules that look less trained get more.

Heavy-Tailed Self-Regularization (Martin & Mahoney, JMLR 2021; Nature
Communications 2021) reads how well trained a weight matrix is from the
empirical spectral density (ESD) of its correlation matrix WᵀW: the better
trained, the heavier its power-law tail p(λ) ∝ λ^(−α), i.e. the *smaller* α.
AlphaLoRA (Qing et al., EMNLP 2024) allocates LoRA capacity by this measure,
giving more to layers with *larger* α ("under-trained"), as does TempBalance
(Zhou et al., NeurIPS 2023) for learning rates. Data-free: only base weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from adaptive_lora.allocation.core import AllocationContext, register
from adaptive_lora.allocation.shares import tempered_shares
from adaptive_lora.compute.threads import single_thread
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import weight_matrix


def hill_alpha(eigenvalues: Sequence[float] | torch.Tensor, fraction: float = 0.5) -> float:
    """Hill estimate of the power-law exponent α of an ESD's upper tail.

    With eigenvalues sorted λ_1 ≥ … ≥ λ_n and k = max(2, round(fraction · n))
    the tail size:

        α = 1 + k / Σ_{i=1..k} ln(λ_i / λ_k)

    (λ_min = λ_k; `fraction` = 0.5 is the "xmin at the median" choice of
    TempBalance and AlphaLoRA's PL_Alpha_Hill.) Zero eigenvalues (a rank-deficient
    matrix) are left out. Returns +inf when the tail is flat (all top-k equal).
    """
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"spectral xmin_fraction must be in (0, 1], got {fraction}")
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()
    lam = torch.sort(lam[lam > 0], descending=True).values
    if lam.numel() < 2:
        return math.inf
    k = min(lam.numel(), max(2, round(fraction * lam.numel())))
    log_sum = float(torch.log(lam[:k] / lam[k - 1]).sum())
    return 1.0 + k / log_sum if log_sum > 0 else math.inf


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of WᵀW (squared singular values of W), float64, descending."""
    matrix = weight.detach().to("cpu", torch.float64)
    if matrix.shape[0] < matrix.shape[1]:
        matrix = matrix.T  # same singular values; LAPACK is faster on tall matrices
    with single_thread():
        return torch.linalg.svdvals(matrix) ** 2


@register("spectral", needs_weights=True)
def spectral(
    ctx: AllocationContext, *, temperature: float = 1.0, xmin_fraction: float = 0.5
) -> dict[str, int]:
    """Rank ∝ α^temperature, α the Hill power-law exponent of each weight's spectrum.

    Larger α = lighter tail = less trained (Martin & Mahoney 2021) = more rank,
    as in AlphaLoRA (Qing et al. 2024). temperature 0 gives the uniform
    allocation. A module whose top spectrum is flat (α = inf) is given the
    largest finite α of the model. Records `spectral_alpha` per module in
    `ctx.report`.
    """
    if ctx.model is None:
        raise UserError("spectral needs the model weights (load the model, not its skeleton)")
    modules = dict(ctx.model.named_modules())
    start = time.perf_counter()
    alphas = {}
    for m in ctx.inventory:
        weight = weight_matrix(modules[m.name])
        if weight.is_meta:
            raise UserError("spectral needs the model weights, but they are on the meta device")
        alphas[m.name] = hill_alpha(esd(weight), xmin_fraction)
    finite = [a for a in alphas.values() if math.isfinite(a)]
    cap = max(finite) if finite else 1.0
    alphas = {name: a if math.isfinite(a) else cap for name, a in alphas.items()}
    ctx.report["spectral_alpha"] = alphas
    ctx.report["spectral"] = {
        "xmin_fraction": xmin_fraction,
        "seconds": round(time.perf_counter() - start, 3),
        "n_flat": len(ctx.inventory) - len(finite),
    }
    return ctx.apportion(tempered_shares(ctx.inventory, alphas, temperature))
