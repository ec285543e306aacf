"""The blockwise head cross-entropy equals the plain one, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from adaptive_lora.compute.head_loss import head_cross_entropy_sum, supports_fused_loss


def frozen_head(vocab=97, dim=24, seed=0):
    head = torch.nn.Linear(dim, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, dim, generator=torch.Generator().manual_seed(seed)))
    head.weight.requires_grad_(False)
    return head


def plain_and_fused(head, n, rows, autocast):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(n, head.in_features, generator=generator)
    targets = torch.randint(0, head.out_features, (n,), generator=generator)
    results = []
    for fused in (False, True):
        h = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                loss = head_cross_entropy_sum(head, h, targets, rows=rows)
            else:
                loss = F.cross_entropy(head(h).float(), targets, reduction="sum")
        (loss * 0.5).backward()  # a non-unit upstream gradient
        results.append((loss.detach(), h.grad))
    return results


@pytest.mark.parametrize("n,rows", [(5, 128), (37, 8), (64, 16)])
def test_fp32_matches_plain_cross_entropy(n, rows):
    (plain, plain_grad), (fused, fused_grad) = plain_and_fused(frozen_head(), n, rows, False)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_matches_plain_cross_entropy():
    (plain, plain_grad), (fused, fused_grad) = plain_and_fused(frozen_head(), 50, 16, True)
    assert fused.dtype == torch.float32
    # Same bf16 matmuls, fp32 softmax: equal up to fp32 summation order.
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=2e-2, atol=2e-3)


def test_trainable_or_biased_heads_take_the_plain_route():
    assert supports_fused_loss(frozen_head())
    trainable = torch.nn.Linear(4, 7, bias=False)
    assert not supports_fused_loss(trainable)
    biased = torch.nn.Linear(4, 7)
    biased.requires_grad_(False)
    assert not supports_fused_loss(biased)
