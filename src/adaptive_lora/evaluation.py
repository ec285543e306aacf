"""Held-out loss and perplexity on response tokens; greedy answers scored by task metrics.

The metrics themselves (ROUGE-L, exact match, final number, ...) are one registry
in `evaluation_metrics`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptive_lora.compute.loss import response_loss_sum
from adaptive_lora.compute.precision import autocast_context
from adaptive_lora.data.prompts import TokenizedSplit, collate, format_prompt
from adaptive_lora.evaluation_metrics import mean_scores, reference_of, score


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


@dataclass
class GenerationResult:
    """Generated answers with each metric's verdict, and each metric's mean."""

    records: list[dict[str, Any]]
    means: dict[str, float | None] = field(default_factory=dict)

    @property
    def rouge_l(self) -> float | None:
        return self.means.get("rouge_l")

    @property
    def exact_match(self) -> float | None:
        return self.means.get("exact_match")


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
    metrics: Sequence[str] = ("rouge_l",),
) -> GenerationResult:
    """Greedy answers for `examples` (batched, left padding), each scored by every metric.

    Each record holds the prompt fields, `reference`, `prediction` and one verdict
    per metric name (the reference is the built-in set's short answer where there
    is one, else `output`).
    """
    if not examples:
        return GenerationResult([], {name: None for name in metrics})
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
                records.append(
                    {
                        "instruction": example["instruction"],
                        "input": example.get("input", ""),
                        "reference": example["output"],
                        "prediction": text,
                        **score(metrics, text, reference_of(example)),
                    }
                )
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return GenerationResult(records, mean_scores(metrics, records))


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
