"""Prompts and response-only labels: template an example, tokenize it, batch it.

Records are Alpaca-format dicts with string fields `instruction`, `input` (may be "")
and `output`; labels are -100 on prompt and padding tokens so that only the response
is trained on and evaluated.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptive_lora.data.sources import Example
from adaptive_lora.errors import UserError

IGNORE_INDEX = -100  # the label value that torch's cross-entropy (and HF models) skip


TEMPLATES: tuple[str, ...] = ("alpaca", "chat")


# The Stanford Alpaca templates (github.com/tatsu-lab/stanford_alpaca, train.py),
# with the "\n" after "### Response:" that alpaca-lora and most fine-tunes use.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(example: Example, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt text that precedes the response, ending where the answer begins.

    "alpaca": the Stanford Alpaca template; the no-input variant when `input` is empty or
    blank. "chat": the tokenizer's chat template on one user turn (instruction, then
    input after a blank line), with the generation prompt for the assistant turn.
    """
    instruction = example["instruction"]
    input_ = example.get("input") or ""
    if template == "alpaca":
        if input_.strip():
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "the 'chat' prompt template needs a tokenizer with a chat template, and this "
                "model's tokenizer has none; use the 'alpaca' template"
            )
        content = instruction + ("\n\n" + input_ if input_.strip() else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise UserError(f"unknown prompt template '{template}'; valid: {', '.join(TEMPLATES)}")


@dataclass
class TokenizedSplit:
    """Token ids and labels for a list of examples.

    `features[j]` has `input_ids` and `labels` (same length, not shifted: HF causal LMs
    shift inside); prompt positions are labelled `IGNORE_INDEX`. `kept[j]` is the index
    in the input list of the example that `features[j]` came from.
    """

    features: list[dict[str, list[int]]]
    kept: list[int]
    n_truncated: int  # kept examples cut at max_length (the response tail and EOS lost)
    n_dropped: int  # examples left out because their prompt alone fills max_length
    n_tokens: int  # tokens over all features
    n_label_tokens: int  # tokens that carry a label (response tokens + EOS)

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, max_length: int, template: str = "alpaca"
) -> TokenizedSplit:
    """Tokenize prompt and response separately and label only the response.

    input_ids = prompt ids + response ids + [eos], labels = [-100] * len(prompt) +
    response ids + [eos] (a record with `output_ids` gives its response ids, see
    `_response_ids`). The Alpaca prompt gets the tokenizer's usual special tokens
    (e.g. BOS); a chat prompt gets none, since the chat template already writes them;
    the response never gets any. Sequences longer than `max_length` are cut from the
    right and counted in `n_truncated`. An example whose prompt alone is `max_length`
    tokens or more would have no label left: it is dropped (counted in `n_dropped`)
    rather than cut from the left, which would lose the instruction it should follow.
    Raises `UserError` if no example fits.
    """
    if max_length < 2:
        raise UserError(f"max_length must be at least 2 tokens, got {max_length}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise UserError("the tokenizer has no EOS token; set one (tokenizer.eos_token)")
    prompt_ids = prompt_token_ids(examples, tokenizer, template)
    response_ids = _response_ids(examples, tokenizer, eos_id)

    features, kept = [], []
    n_truncated = n_dropped = 0
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        if len(prompt) >= max_length:
            n_dropped += 1
            continue
        input_ids = prompt + response
        labels = [IGNORE_INDEX] * len(prompt) + response
        if len(input_ids) > max_length:
            n_truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        features.append({"input_ids": input_ids, "labels": labels})
        kept.append(i)
    if examples and not features:
        raise UserError(
            f"no example fits in max_length={max_length} tokens (every prompt is longer); "
            "raise max_length"
        )
    return TokenizedSplit(
        features=features,
        kept=kept,
        n_truncated=n_truncated,
        n_dropped=n_dropped,
        n_tokens=sum(len(f["input_ids"]) for f in features),
        n_label_tokens=sum(sum(x != IGNORE_INDEX for x in f["labels"]) for f in features),
    )


def prompt_token_ids(examples: Sequence[Example], tokenizer: Any, template: str) -> list[list[int]]:
    """Each example's prompt as the model reads it in training: formatted by `template`,
    with the tokenizer's special tokens for the Alpaca template only, no trailing EOS."""
    prompts = [format_prompt(ex, template, tokenizer) for ex in examples]
    prompt_ids = _token_ids(tokenizer, prompts, add_special_tokens=template == "alpaca")
    return [_drop_trailing_eos(ids, tokenizer.eos_token_id) for ids in prompt_ids]


def _response_ids(examples: Sequence[Example], tokenizer: Any, eos_id: int) -> list[list[int]]:
    """Each response's labelled tokens: its text tokenized, then EOS.

    A record that carries its response as tokens (`output_ids`: a planted task's teacher
    samples, `data/planted.py`) is taken token for token, so the labels are exactly what
    was sampled; its EOS is there only where the sample ended (`output_complete`), not
    where it was cut at the sampling length.
    """
    texts = _token_ids(tokenizer, [ex["output"] for ex in examples], False)
    ids = []
    for example, from_text in zip(examples, texts):
        if "output_ids" in example:
            ending = [eos_id] if example.get("output_complete", True) else []
            ids.append(list(example["output_ids"]) + ending)
        else:
            ids.append(from_text + [eos_id])
    return ids


def _token_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"])


def _drop_trailing_eos(ids: list[int], eos_id: int) -> list[int]:
    # Some tokenizers append EOS as a special token; inside a training sequence it would
    # teach the model to stop before answering.
    return ids[:-1] if ids and ids[-1] == eos_id else list(ids)


def collate(
    features: Sequence[dict[str, list[int]]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence: `input_ids`, `attention_mask`, `labels` (long).

    Pads get `pad_token_id`, attention 0 and label -100, on the right (training) or the
    left (generation).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not features:
        raise ValueError("collate needs at least one feature")
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n_pad = longest - len(f["input_ids"])
        rows = {
            "input_ids": (f["input_ids"], pad_token_id),
            "attention_mask": ([1] * len(f["input_ids"]), 0),
            "labels": (f.get("labels", f["input_ids"]), IGNORE_INDEX),
        }
        for key, (values, pad) in rows.items():
            padding = [pad] * n_pad
            batch[key].append(
                list(values) + padding if padding_side == "right" else padding + list(values)
            )
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of indices of similar length; every index exactly once, fixed by `seed`.

    Shuffle all indices, cut them into mega-batches of 50 * batch_size, sort each
    mega-batch by length (longest first, ties by shuffled position), split it into
    batches and shuffle the batch order with the same generator. Only the very last
    batch may be smaller than `batch_size`. (The mega-batch idea is the HF Trainer's
    `group_by_length` sampler: little padding, yet a random order.)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = 50 * batch_size
    batches = []
    for start in range(0, len(order), mega):
        # sorted() is stable, so equal lengths keep their shuffled order.
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches
