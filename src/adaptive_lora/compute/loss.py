"""The one definition of "the loss": mean cross-entropy on response tokens.

`response_loss_sum` runs the model's backbone and applies the output head only at
the positions that have a label, which is the same number as `model(**batch).loss`
for causal LMs with a plain linear head (a test checks it) but skips the vocabulary
projection for prompt and padding tokens. Training, evaluation and the importance
probe all use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from adaptive_lora.compute.head_loss import head_cross_entropy_sum, supports_fused_loss
from adaptive_lora.data.prompts import IGNORE_INDEX


def causal_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, output head) of a causal LM, whether or not PEFT wraps it."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(causal, causal.base_model_prefix)
    return backbone, causal.get_output_embeddings()


LOSS_CHUNK = 512  # response tokens projected onto the vocabulary at a time (plain route)


def response_loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """(sum of token losses over response tokens, number of those tokens)."""
    backbone, head = causal_parts(model)
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = hidden.last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    n_tokens = int(keep.sum())
    if n_tokens == 0:
        return hidden.sum() * 0.0, 0
    hidden, targets = hidden[keep], targets[keep]
    if supports_fused_loss(head):
        return head_cross_entropy_sum(head, hidden, targets), n_tokens
    if n_tokens <= LOSS_CHUNK:
        return _head_loss(head, hidden, targets), n_tokens
    # fp32 logits over a large vocabulary for thousands of tokens are hundreds of
    # MB; projecting LOSS_CHUNK rows at a time and recomputing them in the
    # backward pass keeps every buffer small.
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n_tokens, LOSS_CHUNK):
        rows = (head, hidden[start : start + LOSS_CHUNK], targets[start : start + LOSS_CHUNK])
        if torch.is_grad_enabled():
            total = total + checkpoint(_head_loss, *rows, use_reentrant=False)
        else:
            total = total + _head_loss(*rows)
    return total, n_tokens


def _head_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


@torch.no_grad()
def response_loss_per_row(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of response tokens) for each row of the batch.

    Evaluation only (no gradient): the per-item records a study resamples. The head is
    applied in blocks of LOSS_CHUNK response tokens with fp32 logits, as the plain route
    of `response_loss_sum` does, so the total over rows is the same loss.
    """
    backbone, head = causal_parts(model)
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = hidden.last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    rows = keep.nonzero()[:, 0]
    hidden, targets = hidden[keep], targets[keep]
    token_losses = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], LOSS_CHUNK):
        stop = start + LOSS_CHUNK
        logits = head(hidden[start:stop]).float()
        token_losses[start:stop] = F.cross_entropy(logits, targets[start:stop], reduction="none")
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, rows, token_losses)
    return sums, keep.sum(dim=1)
