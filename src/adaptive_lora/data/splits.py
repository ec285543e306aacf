"""Seeded, disjoint train / validation / test splits, each with a content hash."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptive_lora.data import planted, reasoning_gym
from adaptive_lora.data.sources import Example, load_examples
from adaptive_lora.errors import UserError


@dataclass
class Splits:
    """Three disjoint subsets of the examples, and fingerprints to record with a run.

    `data_hash` fingerprints the chosen subsets (it changes with the data seed);
    `source_hash` the whole source list (it changes only when the data does).
    """

    train: list[Example]
    val: list[Example]
    test: list[Example]
    data_hash: str
    source_hash: str
    # What a made source says about itself (a planted task: its modules, scale and KL).
    info: dict[str, Any] = field(default_factory=dict)


def hash_examples(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_splits(
    examples: Sequence[Example], n_train: int, n_val: int, n_test: int, seed: int
) -> Splits:
    """Shuffle the example indices with `random.Random(seed)` and take disjoint slices:
    the first `n_train` for train, the next `n_val` for validation, the next `n_test`
    for test. Raises `UserError` if the counts are negative (or n_train < 1) or add up
    to more examples than there are.
    """
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise UserError(
            f"split sizes must be n_train >= 1, n_val >= 0, n_test >= 0; got "
            f"n_train={n_train}, n_val={n_val}, n_test={n_test}"
        )
    wanted = n_train + n_val + n_test
    if wanted > len(examples):
        raise UserError(
            f"the data set has {len(examples)} examples but the splits ask for {wanted} "
            f"({n_train} train + {n_val} val + {n_test} test); ask for fewer"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    train, val, test = (
        _pick(examples, order[:n_train]),
        _pick(examples, order[n_train : n_train + n_val]),
        _pick(examples, order[n_train + n_val : wanted]),
    )
    return Splits(
        train=train,
        val=val,
        test=test,
        data_hash=hash_examples({"train": train, "val": val, "test": test}),
        source_hash=hash_examples(list(examples)),
    )


def _pick(examples: Sequence[Example], indices: Iterable[int]) -> list[Example]:
    return [examples[i] for i in indices]


def load_splits(settings: Any, model: Any = None) -> Splits:
    """The three splits a run with these `DataSettings` trains, selects and reports on.

    A file, the built-in set or a hub set is shuffled by `make_splits`; a generated
    `reasoning_gym:` task draws exactly as many distinct items as the splits need and
    splits them nested (see `data/reasoning_gym.py`), the test set first; a `planted`
    task is sampled from `model` (the run's `LoadedModel`) with a planted delta and split
    nested in a seeded order (see `data/planted.py`).
    """
    source = settings.source
    if settings.n_train < 1 or settings.n_val < 0 or settings.n_test < 0:
        make_splits([], settings.n_train, settings.n_val, settings.n_test, 0)  # its one-line error
    if planted.is_planted(source):
        return _planted_splits(settings, model)
    if not reasoning_gym.is_reasoning_gym(source):
        if settings.options:
            raise UserError(
                f"data.options: only a `reasoning_gym:<task>` or `planted` source takes options, "
                f"not {source!r}"
            )
        examples = load_examples(source)
        return make_splits(
            examples, settings.n_train, settings.n_val, settings.n_test, settings.data_seed
        )
    wanted = settings.n_train + settings.n_val + settings.n_test
    records = reasoning_gym.generate_examples(source, settings.options, wanted, settings.data_seed)
    train, val, test = reasoning_gym.nested_splits(
        records, settings.n_train, settings.n_val, settings.n_test
    )
    generator = {"source": source, "options": dict(settings.options), "seed": settings.data_seed}
    return Splits(
        train=train,
        val=val,
        test=test,
        data_hash=hash_examples({"train": train, "val": val, "test": test}),
        source_hash=hash_examples(generator),
    )


def _planted_splits(settings: Any, model: Any) -> Splits:
    data = planted.planted_examples(settings.options, settings.template, model)
    train, val, test = planted.nested_splits(
        data.records, settings.n_train, settings.n_val, settings.n_test, settings.data_seed
    )
    return Splits(
        train=train,
        val=val,
        test=test,
        data_hash=hash_examples({"train": train, "val": val, "test": test}),
        source_hash=data.digest,
        info={"planted": data.info},
    )
