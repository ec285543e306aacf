"""Calibration batches for data-driven strategies, drawn from the training split only.

The research rule: calibration data comes from the *training* split. Validation
chooses models, test reports numbers, and neither may shape an allocation. A
`Calibration` therefore holds nothing but tokenized training features; a strategy
that reads data sees only this object.

    make_calibration(splits.train, tokenizer, max_length=..., template=..., data_hash=...)
    calibration_from_source("data.json", tokenizer)      # what `adaptive-lora allocate` uses
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from adaptive_lora.config import DataSettings
from adaptive_lora.data.prompts import collate, tokenize_examples
from adaptive_lora.data.splits import hash_examples, load_splits

__all__ = ["Calibration", "calibration_from_source", "make_calibration"]


@dataclass
class Calibration:
    """Tokenized training-split features and a deterministic way to batch them."""

    # `input_ids` / `labels` lists, as `data.tokenize_examples(...).features` gives them.
    features: list[dict[str, list[int]]]
    pad_token_id: int
    # Fingerprint of the split the features come from (`Splits.data_hash`).
    data_hash: str
    # Where the features came from, for the run record (source, sizes, max_length...).
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the features themselves: it changes with tokenizer, template or max_length."""
        return hash_examples(
            {"data": self.data_hash, "pad": self.pad_token_id, "features": self.features}
        )

    def batches(
        self, n_batches: int, batch_size: int, seed: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """`n_batches` collated batches of `batch_size` features, fixed by `seed`.

        Features are drawn without replacement from a `random.Random(seed)` shuffle;
        when they run out, a fresh shuffle of the same generator continues the
        stream, so asking for more batches than the data holds cycles through it
        and a longer request begins with the batches of a shorter one.
        """
        if not self.features:
            raise ValueError("calibration has no features")
        if n_batches < 0 or batch_size < 1:
            raise ValueError(
                f"need n_batches >= 0 and batch_size >= 1, got {n_batches}, {batch_size}"
            )
        rng = random.Random(seed)
        pool: list[int] = []
        for _ in range(n_batches):
            picked = []
            while len(picked) < batch_size:
                if not pool:
                    pool = list(range(len(self.features)))
                    rng.shuffle(pool)
                    pool.reverse()  # pop() from the end takes the shuffle in order
                picked.append(pool.pop())
            yield collate([self.features[i] for i in picked], self.pad_token_id)


def make_calibration(
    train_examples: Sequence[dict[str, str]],
    tokenizer: Any,
    *,
    max_length: int,
    template: str = "alpaca",
    data_hash: str,
) -> Calibration:
    """Tokenize the training examples exactly as training will (response-only labels)."""
    split = tokenize_examples(train_examples, tokenizer, max_length, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Calibration(
        features=split.features,
        pad_token_id=int(pad),
        data_hash=data_hash,
        info={
            "n_examples": len(split.features),
            "n_tokens": split.n_tokens,
            "n_label_tokens": split.n_label_tokens,
            "max_length": max_length,
            "template": template,
        },
    )


def calibration_from_source(
    data: str, tokenizer: Any, *, settings: DataSettings | None = None
) -> Calibration:
    """The training split of `data`, split as a run with these `DataSettings` would split it.

    `tokenizer` is the model's (a `LoadedModel.tokenizer`). Raises the
    `UserError` of `make_splits` when the source has fewer examples than the
    splits ask for, rather than calibrating on data a run would hold out.
    """

    settings = settings or DataSettings()
    splits = load_splits(dataclasses.replace(settings, source=data))
    calibration = make_calibration(
        splits.train,
        tokenizer,
        max_length=settings.max_length,
        template=settings.template,
        data_hash=splits.data_hash,
    )
    calibration.info.update(source=data, data_seed=settings.data_seed, split="train")
    return calibration
