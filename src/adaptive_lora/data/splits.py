"""Seeded, disjoint train / validation / test splits, each with a content hash.

How a pool is split is the data setting `split`:

* `test_first` (the default): the test set is drawn first, then validation, then
  training, all from one seeded order of the pool, so a study's test set is the same
  whatever its training size, and a smaller training set is nested in a larger one;
* `train_first`: training first, then validation, then test — the order every study
  published before 2026-12-07 used (its test set moved with the training size);
  studies recorded that way name it so their runs resume and re-run exactly;
* `per_seed`: like `test_first`, but each run seed draws its own order (from the data
  seed and the run seed), so data is a random factor: both strategies of a seed's pair
  share a split, different seeds do not.

Generated tasks (`reasoning_gym:`) always drew their test set first; `per_seed` gives
each seed its own generator seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptive_lora.config import SPLIT_RULES  # noqa: F401 - the rules, named where they are read
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
    test_hash: str = ""  # the test set alone: equal across training sizes under test_first
    # What a made source says about itself (a planted task: its modules, scale and KL).
    info: dict[str, Any] = field(default_factory=dict)


def order_seed(settings: Any, run_seed: int | None) -> int:
    """The seed of the pool's order: the data seed, or with `per_seed` one drawn from the
    data seed and the run seed (a hash, so neighbouring seeds give unrelated orders)."""
    if settings.split != "per_seed":
        return settings.data_seed
    text = f"data seed {settings.data_seed}, run seed {run_seed or 0}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def hash_examples(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_splits(
    examples: Sequence[Example],
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    *,
    test_first: bool = True,
) -> Splits:
    """Shuffle the example indices with `random.Random(seed)` and take disjoint slices:
    the first `n_test` for test, the next `n_val` for validation, the next `n_train`
    for training (`test_first`), or training, validation, test in that order (the
    published studies' `train_first`). Raises `UserError` if the counts are negative
    (or n_train < 1) or add up to more examples than there are.
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
    sizes = (n_test, n_val, n_train) if test_first else (n_train, n_val, n_test)
    first, second, third = (
        _pick(examples, order[: sizes[0]]),
        _pick(examples, order[sizes[0] : sizes[0] + sizes[1]]),
        _pick(examples, order[sizes[0] + sizes[1] : wanted]),
    )
    train, val, test = (third, second, first) if test_first else (first, second, third)
    return _splits(train, val, test, source_hash=hash_examples(list(examples)))


def _splits(
    train: list, val: list, test: list, *, source_hash: str, info: dict | None = None
) -> Splits:
    return Splits(
        train=train,
        val=val,
        test=test,
        data_hash=hash_examples({"train": train, "val": val, "test": test}),
        source_hash=source_hash,
        test_hash=hash_examples(test),
        info=info or {},
    )


def _pick(examples: Sequence[Example], indices: Iterable[int]) -> list[Example]:
    return [examples[i] for i in indices]


ALL_HELD_OUT = "all"  # `data.n_test: all` in a study file: every item the pool leaves over


def pool_size(source: str, options: dict[str, Any]) -> int:
    """How many distinct items a source can give a split: a file's or the built-in set's
    records, a planted task's `pool_size`. A generated task has no finite pool, so
    `n_test: all` cannot mean anything there: a one-line `UserError` says what to write."""
    if reasoning_gym.is_reasoning_gym(source):
        raise UserError(
            f"data.n_test: all: the generated task {source!r} has no finite pool; "
            "give the number of test items (e.g. n_test: 500)"
        )
    if planted.is_planted(source):
        return planted.planted_settings(options).options.pool_size
    return len(load_examples(source))


def held_out_count(source: str, options: dict[str, Any], n_val: int, n_train: int) -> int:
    """`n_test: all` resolved: every item of the pool that the largest training set and
    the validation set leave over (one number for every size of a task, so `test_first`
    and `per_seed` still give every size the same test set). A pool with nothing left
    is refused in one line naming the counts."""
    size = pool_size(source, options)
    left = size - n_train - n_val
    if left < 1:
        raise UserError(
            f"data.n_test: all: the pool of {source!r} has {size} items and the largest "
            f"training set ({n_train}) with validation ({n_val}) leaves none for test"
        )
    return left


def load_splits(settings: Any, run_seed: int | None = None, model: Any = None) -> Splits:
    """The three splits a run with these `DataSettings` (and, for `per_seed`, this run
    seed) trains, selects and reports on.

    A file, the built-in set or a hub set is shuffled by `make_splits`; a generated
    `reasoning_gym:` task draws exactly as many distinct items as the splits need and
    splits them nested (see `data/reasoning_gym.py`), the test set first; a `planted`
    task is sampled from `model` (the run's `LoadedModel`) with a planted delta and split
    nested in a seeded order (see `data/planted.py`).
    """
    source = settings.source
    seed = order_seed(settings, run_seed)
    if settings.n_train < 1 or settings.n_val < 0 or settings.n_test < 0:
        make_splits([], settings.n_train, settings.n_val, settings.n_test, 0)  # its one-line error
    if planted.is_planted(source):
        return _planted_splits(settings, model, seed)
    if not reasoning_gym.is_reasoning_gym(source):
        if settings.options:
            raise UserError(
                f"data.options: only a `reasoning_gym:<task>` or `planted` source takes options, "
                f"not {source!r}"
            )
        examples = load_examples(source)
        return make_splits(
            examples, settings.n_train, settings.n_val, settings.n_test, seed,
            test_first=settings.split != "train_first",
        )  # fmt: skip
    wanted = settings.n_train + settings.n_val + settings.n_test
    records = reasoning_gym.generate_examples(source, settings.options, wanted, seed)
    train, val, test = reasoning_gym.nested_splits(
        records, settings.n_train, settings.n_val, settings.n_test
    )
    # The generator without its seed names the pool: per-seed draws share it.
    generator = {"source": source, "options": dict(settings.options)}
    if settings.split != "per_seed":
        generator["seed"] = seed  # as recorded before per-seed splits existed
    return _splits(train, val, test, source_hash=hash_examples(generator))


def _planted_splits(settings: Any, model: Any, seed: int) -> Splits:
    data = planted.planted_examples(settings.options, settings.template, model)
    train, val, test = planted.nested_splits(
        data.records, settings.n_train, settings.n_val, settings.n_test, seed
    )
    return _splits(train, val, test, source_hash=data.digest, info={"planted": data.info})
