import math

import pytest
import torch

from adaptive_lora.allocation.budget import resolve_budget, tolerance
from adaptive_lora.allocation.core import AllocationContext, allocate
from adaptive_lora.allocation.spectral import esd, hill_alpha
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import build_inventory


def test_hill_alpha_on_a_hand_computed_spectrum():
    # ln(λ_i / λ_4) = 3, 2, 1, 0: α = 1 + 4 / 6.
    eigenvalues = [math.e**3, math.e**2, math.e, 1.0]
    assert hill_alpha(eigenvalues, fraction=1.0) == pytest.approx(1 + 4 / 6)
    # Half the spectrum: k = 2, ln(λ_1 / λ_2) = 1, α = 1 + 2 / 1; order does not matter.
    assert hill_alpha(list(reversed(eigenvalues)), fraction=0.5) == pytest.approx(3.0)
    # Zero eigenvalues of a rank-deficient matrix are left out.
    assert hill_alpha([*eigenvalues, 0.0, 0.0], fraction=1.0) == pytest.approx(1 + 4 / 6)
    assert hill_alpha([2.0, 2.0, 2.0]) == math.inf


def test_hill_alpha_of_a_matrix_with_a_known_spectrum():
    # W = U diag(σ) Vᵀ whose σ² are the quantiles of a Pareto law p(λ) ∝ λ^(−α) (λ ≥ 1):
    # its Hill estimate over the top half recovers α.
    torch.manual_seed(0)
    n, alpha = 400, 3.0
    quantiles = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n
    eigenvalues = quantiles ** (-1 / (alpha - 1))
    u, _ = torch.linalg.qr(torch.randn(600, n, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    weight = u @ torch.diag(eigenvalues.sqrt()) @ v.T
    torch.testing.assert_close(esd(weight), eigenvalues, rtol=1e-9, atol=0.0)
    assert hill_alpha(esd(weight), fraction=0.5) == pytest.approx(alpha, rel=0.05)
    # A heavier tail gives a smaller α.
    heavier = quantiles ** (-1 / (2.0 - 1))
    assert hill_alpha(heavier) < hill_alpha(eigenvalues)


def test_bad_fraction_is_a_user_error():
    with pytest.raises(UserError, match="xmin_fraction"):
        hill_alpha([3.0, 2.0, 1.0], fraction=0.0)


def ctx_for(model, budget="r8"):
    inventory = build_inventory(model)
    return AllocationContext(
        inventory=inventory, budget=resolve_budget(budget, inventory), model=model
    )


@pytest.mark.parametrize("budget", ["r8", "r16"])
def test_spectral_meets_the_budget(tiny_model, budget):
    ctx = ctx_for(tiny_model, budget)
    allocation = allocate("spectral", ctx)
    assert abs(allocation.total_params - ctx.budget.params) <= tolerance(
        ctx.inventory, ctx.budget.params
    )
    alphas = allocation.report["spectral_alpha"]
    assert sorted(alphas) == sorted(allocation.ranks)
    assert all(math.isfinite(a) and a > 1 for a in alphas.values())


def test_spectral_gives_lighter_tails_more_rank(llama):
    ctx = ctx_for(llama, "r16")
    # Make one q_proj heavy-tailed (a few large directions): its α drops, and so its rank.
    q0 = llama.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(q0)
        q0.copy_(u @ torch.diag(s * torch.arange(1, s.numel() + 1.0) ** -1.5) @ vh)
    allocation = allocate("spectral", ctx, {"temperature": 2.0})
    alphas, ranks = allocation.report["spectral_alpha"], allocation.ranks
    q_names = [m.name for m in ctx.inventory if m.kind == "q"]
    heavy, light = min(q_names, key=alphas.get), max(q_names, key=alphas.get)
    assert heavy == "model.layers.0.self_attn.q_proj"
    assert ranks[heavy] < ranks[light]
    # Same cost per rank: the ranks follow α^t.
    assert ranks[light] / ranks[heavy] == pytest.approx(
        (alphas[light] / alphas[heavy]) ** 2.0, rel=0.2
    )


def test_spectral_temperature_zero_is_uniform(tiny_model):
    ranks = allocate("spectral", ctx_for(tiny_model, "r8"), {"temperature": 0.0}).ranks
    assert set(ranks.values()) == {8}


def test_spectral_needs_weights(gpt2):
    ctx = ctx_for(gpt2)
    ctx.model = None
    with pytest.raises(UserError, match="spectral needs the model weights"):
        allocate("spectral", ctx)
    with torch.device("meta"):
        from tiny import tiny_llama

        skeleton = tiny_llama()
    with pytest.raises(UserError, match="meta device"):
        allocate("spectral", ctx_for(skeleton))
