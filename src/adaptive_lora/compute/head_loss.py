"""Cross-entropy through the output head, a few rows of the vocabulary projection at a time.

The loss of a causal LM is `cross_entropy(hidden @ W_head.T, targets)`. Over a
49k-token vocabulary the logits of a training batch are hundreds of MB in fp32,
and the plain route (project, cast to fp32, log-softmax, NLL, then all of it
again backwards) allocates and page-faults several such buffers per step. This
autograd function keeps only one `(rows, vocab)` block alive at a time and
keeps nothing between forward and backward but the per-token log-sum-exp:

    forward:  loss = sum_t logsumexp(z_t) - z_t[y_t],   z_t = h_t @ W.T  (fp32)
    backward: dL/dh_t = g * (softmax(z_t) - onehot(y_t)) @ W

The logits are recomputed in the backward pass (one extra head matmul), as the
chunked checkpointing it replaces did. Under autocast the matmuls run in the
autocast dtype (as `head(hidden)` would) and the softmax in fp32 (as
`head(hidden).float()` would). The head must be frozen and bias-free, which is
the case for LoRA on every model this tool knows; anything else takes the plain
route in `evaluate.response_loss_sum`.
"""

from __future__ import annotations

import torch

# Rows of logits per block: 128 x 49152 fp32 is 24 MB, under glibc's largest
# mmap threshold (32 MB), so blocks are recycled instead of page-faulted anew.
ROWS_PER_BLOCK = 128


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `tensor` runs in here: the autocast dtype when autocast is on."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def supports_fused_loss(head: torch.nn.Module) -> bool:
    return isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad


class _BlockwiseHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, rows):
        hidden_c = hidden.to(dtype)
        weight_c = weight.to(dtype)  # no copy when the head is already held in `dtype`
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], rows):
            stop = start + rows
            logits = (hidden_c[start:stop] @ weight_c.t()).float()
            block_lse = torch.logsumexp(logits, dim=-1)
            target_logits = logits.gather(1, targets[start:stop, None]).squeeze(1)
            total += (block_lse - target_logits).sum()
            lse[start:stop] = block_lse
        ctx.save_for_backward(hidden_c, weight_c, targets, lse)
        ctx.rows = rows
        ctx.hidden_dtype = hidden.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden_c, weight_c, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden_c)
        for start in range(0, hidden_c.shape[0], ctx.rows):
            stop = start + ctx.rows
            logits = (hidden_c[start:stop] @ weight_c.t()).float()
            probs = logits.sub_(lse[start:stop, None]).exp_()  # softmax, in place
            rows_here = torch.arange(probs.shape[0], device=probs.device)
            probs[rows_here, targets[start:stop]] -= 1.0
            probs.mul_(grad_total)
            grad_hidden[start:stop] = probs.to(hidden_c.dtype) @ weight_c
        return grad_hidden.to(ctx.hidden_dtype), None, None, None, None


def head_cross_entropy_sum(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    rows: int = ROWS_PER_BLOCK,
) -> torch.Tensor:
    """Sum over rows of cross_entropy(head(hidden).float(), targets), block by block.

    `hidden` is (n, d), `targets` (n,). The head must pass `supports_fused_loss`.
    """
    dtype = compute_dtype(hidden)
    # Autocast does not look inside a custom Function's forward on its own terms,
    # so the dtype is decided here and passed in.
    with torch.autocast(hidden.device.type, enabled=False):
        return _BlockwiseHeadCrossEntropy.apply(hidden, head.weight, targets, dtype, rows)
