"""Held-out loss and perplexity on response tokens, greedy answers, ROUGE-L, exact match.

`response_loss` is the one definition of "the loss" in this tool: mean
cross-entropy of the next-token prediction on response tokens (labels != -100).
Training and evaluation both use it. It runs the model's backbone and applies
the output head only at the positions that have a label, which is the same
number as `model(**batch).loss` for causal LMs with a plain linear head (a test
checks it) but skips the vocabulary projection for prompt and padding tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from adaptive_lora.data import IGNORE_INDEX, TokenizedSplit, collate, exact_match, format_prompt
from adaptive_lora.head_loss import head_cross_entropy_sum, supports_fused_loss


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


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on the given device, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module,
    split: TokenizedSplit,
    *,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> float:
    """Token-weighted mean response loss over a split (NaN for an empty split)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Sorting by length keeps padding small; the mean does not depend on order.
    order = sorted(range(len(split.features)), key=lambda i: len(split.features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        batch = collate(
            [split.features[i] for i in order[start : start + batch_size]], pad_token_id
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_context(device, autocast_dtype):
            loss, n = response_loss_sum(model, batch)
        total += float(loss)
        count += n
    model.train(was_training)
    return total / count if count else math.nan


def perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 50 else math.inf


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004) on lower-cased word tokens, via the `rouge-score` package."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@dataclass
class GenerationResult:
    records: list[dict[str, Any]]
    rouge_l: float | None
    exact_match: float | None


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    *,
    template: str,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> GenerationResult:
    """Greedy answers for `examples` (batched, left padding) scored against their outputs."""
    if not examples:
        return GenerationResult([], None, None)
    was_training = model.training
    model.eval()
    records = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            prompts = [format_prompt(ex, template, tokenizer) for ex in chunk]
            add_special = template != "chat"  # a chat template writes its own special tokens
            encoded = tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=add_special
            ).to(device)
            with autocast_context(device, autocast_dtype):
                output = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for example, ids in zip(chunk, new_tokens):
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                record = {
                    "instruction": example["instruction"],
                    "input": example.get("input", ""),
                    "reference": example["output"],
                    "prediction": text,
                    "rouge_l": rouge_l(text, example["output"]),
                }
                if "answer" in example:
                    record["exact_match"] = exact_match(text, example["answer"])
                records.append(record)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    mean_rouge = sum(r["rouge_l"] for r in records) / len(records)
    matches = [r["exact_match"] for r in records if "exact_match" in r]
    mean_match = sum(matches) / len(matches) if len(matches) == len(records) else None
    return GenerationResult(records, mean_rouge, mean_match)


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
