"""Held-out loss and perplexity on response tokens, greedy answers, ROUGE-L, exact match."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptive_lora.compute.loss import response_loss_sum
from adaptive_lora.compute.precision import autocast_context
from adaptive_lora.data.builtin import exact_match
from adaptive_lora.data.prompts import TokenizedSplit, collate, format_prompt


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
