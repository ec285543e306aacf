"""Held-out loss and perplexity on response tokens; greedy answers scored by task metrics.

The metrics themselves (ROUGE-L, exact match, final number, ...) are one registry
in `evaluation_metrics`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from adaptive_lora import progress
from adaptive_lora.compute.loss import response_loss_per_row, response_loss_sum
from adaptive_lora.compute.precision import autocast_context
from adaptive_lora.data.prompts import TokenizedSplit, collate, format_prompt
from adaptive_lora.evaluation_metrics import (
    HIT_TOKEN_LIMIT,
    Scoring,
    cut_off_counts,
    mean_scores,
    score,
)


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
        progress.step(start, len(order))
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


@dataclass
class ItemLosses:
    """Each item's response-token loss sum and token count, in the split's order."""

    loss_sum: list[float]
    tokens: list[int]

    @property
    def mean(self) -> float:
        """Token-weighted mean over the items: the split's loss."""
        count = sum(self.tokens)
        return math.fsum(self.loss_sum) / count if count else math.nan

    def item_means(self) -> list[float]:
        return [s / n if n else math.nan for s, n in zip(self.loss_sum, self.tokens)]


@torch.no_grad()
def item_losses(
    model: torch.nn.Module,
    split: TokenizedSplit,
    *,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> ItemLosses:
    """Per-item response loss over a split (the test set's per-item records).

    Batches go in length order to keep padding small; results come back in the
    split's own order, so item j of every run of a study is the same test example.
    """
    was_training = model.training
    model.eval()
    n = len(split.features)
    sums, counts = [0.0] * n, [0] * n
    order = sorted(range(n), key=lambda i: len(split.features[i]["input_ids"]))
    for start in range(0, n, batch_size):
        progress.step(start, n)
        chunk = order[start : start + batch_size]
        batch = collate([split.features[i] for i in chunk], pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_context(device, autocast_dtype):
            row_sums, row_counts = response_loss_per_row(model, batch)
        for i, value, count in zip(chunk, row_sums.tolist(), row_counts.tolist()):
            sums[i], counts[i] = value, int(count)
    model.train(was_training)
    return ItemLosses(sums, counts)


def perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 50 else math.inf


@dataclass
class GenerationResult:
    """Generated answers with each metric's verdict, each metric's mean, and how many
    answers stopped at the token limit (`cut_off_counts`)."""

    records: list[dict[str, Any]]
    means: dict[str, float | None] = field(default_factory=dict)
    cut_off: dict[str, int] = field(default_factory=dict)

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
    stop_at_line_end: bool = False,
    answer_pattern: str = "",
) -> GenerationResult:
    """Greedy answers for `examples`, each scored by every metric; records in input order.

    Batched greedy decoding with the KV cache (`greedy_decode`), prompts grouped by
    length so a batch carries little padding, and each sequence stopped at its end of
    sequence — or, with `stop_at_line_end` (short-answer tasks scored on the first
    line), at the first line break after some text: tokens past it cannot change a
    verdict. A stopped sequence leaves the batch, so no step is spent on it.

    Each record holds the prompt fields, `reference`, `prediction`, `hit_token_limit`
    (the answer stopped because it reached `max_new_tokens`, not at its own end) and one
    verdict per metric name (the reference is the built-in set's short answer where
    there is one, else `output`). `answer_pattern` is the study's declared answer
    pattern, for the metrics that read one (`evaluation_metrics.Scoring`).
    """
    if not examples:
        return GenerationResult([], {name: None for name in metrics}, cut_off_counts([]))
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    try:
        texts = _decode_by_length(
            tokenizer, examples, template, batch_size, device,
            decode=lambda ids, mask: greedy_decode(
                model, ids, mask, max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                line_tokens=_line_tokens(tokenizer) if stop_at_line_end else None,
                device=device, autocast_dtype=autocast_dtype,
            ),
        )  # fmt: skip
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    records = [
        _record(example, *texts[i], metrics, answer_pattern) for i, example in enumerate(examples)
    ]
    return GenerationResult(
        records, mean_scores(metrics, records), cut_off_counts(records, answer_pattern)
    )


def _decode_by_length(
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    template: str,
    batch_size: int,
    device: torch.device,
    decode: Callable[[torch.Tensor, torch.Tensor], Decoded],
) -> dict[int, tuple[str, bool]]:
    """Each example's decoded answer and whether it hit the token limit, by its index;
    prompts batched by token length (so a batch carries little padding) and left-padded;
    `decode(input_ids, mask)` decodes one batch."""
    prompts = [format_prompt(ex, template, tokenizer) for ex in examples]
    add_special = template != "chat"  # a chat template writes its own special tokens
    lengths = [len(tokenizer(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]
    order = sorted(range(len(examples)), key=lambda i: (lengths[i], i))
    texts: dict[int, tuple[str, bool]] = {}
    for start in range(0, len(order), batch_size):
        progress.step(start, len(order))
        chunk = order[start : start + batch_size]
        encoded = tokenizer(
            [prompts[i] for i in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special,
        ).to(device)
        decoded = decode(encoded["input_ids"], encoded["attention_mask"])
        for i, ids, limit in zip(chunk, decoded.tokens, decoded.hit_limit):
            texts[i] = (tokenizer.decode(ids, skip_special_tokens=True).strip(), limit)
    return texts


def _record(
    example: dict[str, Any],
    prediction: str,
    hit_limit: bool,
    metrics: Sequence[str],
    answer_pattern: str,
) -> dict[str, Any]:
    """One generation record: the prompt fields, reference, prediction, whether it hit the
    token limit, and each verdict."""
    scoring = Scoring(hit_token_limit=hit_limit, answer_pattern=answer_pattern)
    return {
        "instruction": example["instruction"],
        "input": example.get("input", ""),
        "reference": example["output"],
        "prediction": prediction,
        HIT_TOKEN_LIMIT: hit_limit,
        **score(metrics, prediction, example, scoring),
    }


class Decoded(NamedTuple):
    """A batch's new tokens per row, and whether each row stopped at `max_new_tokens`
    (False: it ended itself, at the end-of-sequence token or a line break)."""

    tokens: list[list[int]]
    hit_limit: list[bool]


@torch.no_grad()
def greedy_decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    line_tokens: tuple[torch.Tensor, torch.Tensor] | None,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> Decoded:
    """Greedy continuations of a left-padded batch, each ending where its answer ends.

    The KV cache carries the prompt; a sequence that produced the end-of-sequence token
    (or, with `line_tokens`, a line break after some text) leaves the batch at once:
    its rows are dropped from the cache, so later steps compute only the answers still
    being written (`model.generate` keeps every row to the end of the longest answer).
    Positions follow the attention mask, as `generate` computes them for left padding.
    Returns each row's new tokens, without the end-of-sequence token, and whether the
    row was still going when `max_new_tokens` stopped it.
    """
    # One autocast context for the whole loop: autocast caches each weight's bf16 copy
    # until the context ends, so a context per step would cast every weight again.
    with autocast_context(device, autocast_dtype):
        return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, line_tokens)


def _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, line_tokens):
    device = input_ids.device
    rows = torch.arange(input_ids.shape[0], device=device)
    answers: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    ended = [False] * input_ids.shape[0]  # a row that ended itself, before the limit
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    seen_text = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
        use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    # transformers 5 names the KV cache `cache` (argument and output; `past_key_values`
    # is deprecated there); constraints.txt pins the version this runs with.
    cache, next_position = out.cache, positions[:, -1] + 1
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        done = token == eos_token_id
        if line_tokens is not None:
            breaks, blank = (t.to(device) for t in line_tokens)
            done |= seen_text & torch.isin(token, breaks)
            seen_text = seen_text | ~torch.isin(token, blank)
        for row, value, stop in zip(rows.tolist(), token.tolist(), done.tolist()):
            ended[row] = stop
            if not (stop and value == eos_token_id):
                answers[row].append(value)
        live = (~done).nonzero().squeeze(1)
        if step + 1 == max_new_tokens or live.numel() == 0:
            break
        if live.numel() < rows.numel():  # finished answers leave the batch and the cache
            cache.batch_select_indices(live)
            rows, token, seen_text = rows[live], token[live], seen_text[live]
            attention_mask, next_position = attention_mask[live], next_position[live]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows.numel(), 1))], 1)
        out = model(
            input_ids=token[:, None], attention_mask=attention_mask,
            position_ids=next_position[:, None], cache=cache, use_cache=True,
        )  # fmt: skip
        cache, next_position = out.cache, next_position + 1
    return Decoded(answers, [not stop for stop in ended])


@functools.lru_cache(maxsize=4)
def _line_tokens(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids whose text holds a line break, ids whose text is blank), over the vocabulary."""
    breaks, blank = [], []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if "\n" in text:
            breaks.append(token_id)
        if not text.strip():
            blank.append(token_id)
    return torch.tensor(breaks, dtype=torch.long), torch.tensor(blank, dtype=torch.long)


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
