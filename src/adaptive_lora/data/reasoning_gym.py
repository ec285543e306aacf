"""Generated tasks scored by accuracy: `reasoning_gym:<task>` as a data source.

`reasoning-gym` (PyPI, Apache-2.0) holds 100+ offline procedural generators, each
with its own answer scorer. A study names one as `data.source:
reasoning_gym:basic_arithmetic` with the generator's options in `data.options`
(e.g. `{min_terms: 2, max_terms: 3}`); the examples are Alpaca records whose
`instruction` is the question and whose `output` is the answer, and each keeps the
generator's item (`task_item`) so the task's own scorer can judge a prediction.

**Disjoint and nested splits.** The generator is seeded by `data.data_seed`; items
are de-duplicated by question (a generator may repeat one), and the split is taken
in generation order: the first `n_test` distinct items are the test set, the next
`n_val` the validation set, the following `n_train` the training set. So the test
set does not change with the training size, and a larger training set contains the
smaller one: the data-size axis of a study changes only how much is learnt from.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Any

from adaptive_lora.errors import UserError

PREFIX = "reasoning_gym:"
# Generated per item asked for, before de-duplication: most generators repeat few
# questions, small option ranges repeat many; the error says when this is not enough.
OVERDRAW = 2


def is_reasoning_gym(source: str) -> bool:
    return source.startswith(PREFIX)


def task_name(source: str) -> str:
    return source[len(PREFIX) :]


def _registry() -> dict[str, Any]:
    try:
        from reasoning_gym.factory import DATASETS  # imported only when a study asks for it
    except ImportError:
        raise UserError(
            "reasoning_gym sources need the 'reasoning-gym' package (make setup installs it)"
        ) from None
    return DATASETS


def check_task(source: str) -> str:
    """The task's name if reasoning-gym knows it, else a one-line error listing close names."""
    name = task_name(source)
    known = _registry()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise UserError(
            f"data.source: reasoning-gym has no task {name!r}{hint} "
            f"({len(known)} tasks: python -c 'import reasoning_gym.factory as f; "
            "print(sorted(f.DATASETS))')"
        )
    return name


def _option_names(name: str) -> list[str]:
    config_cls = _registry()[name][1]
    return sorted(
        f for f in getattr(config_cls, "__dataclass_fields__", {}) if f not in ("seed", "size")
    )


def generate_examples(
    source: str, options: Mapping[str, Any], n_items: int, seed: int
) -> list[dict[str, Any]]:
    """`n_items` distinct generated items as Alpaca records, in generation order."""
    name = check_task(source)
    return list(_generate(name, _frozen(options), n_items, seed))


def _frozen(options: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


@functools.lru_cache(maxsize=8)
def _generate(name: str, options: tuple, n_items: int, seed: int) -> tuple:
    """Cached per process: a study's runs on one worker draw the same items once."""
    import reasoning_gym

    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options}
    unknown = sorted(set(kwargs) - set(_option_names(name)))
    if unknown:
        raise UserError(
            f"data.options: {name} has no option(s) {', '.join(unknown)}; "
            f"known: {', '.join(_option_names(name))}"
        )
    try:
        dataset = reasoning_gym.create_dataset(name, size=OVERDRAW * n_items, seed=seed, **kwargs)
    except (AssertionError, ValueError, TypeError) as error:
        raise UserError(
            f"data.options for {name}: {str(error).splitlines()[0] or error!r}"
        ) from None
    seen: set[str] = set()
    records = []
    for item in dataset:
        if item["question"] in seen:
            continue
        seen.add(item["question"])
        records.append(_record(item))
        if len(records) == n_items:
            return tuple(records)
    raise UserError(
        f"{name} with these options generated only {len(records)} distinct questions in "
        f"{OVERDRAW * n_items} draws, fewer than the {n_items} the splits need; widen the "
        "options (e.g. more digits or terms) or ask for fewer examples"
    )


def _record(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "instruction": item["question"],
        "input": "",
        "output": str(item["answer"]),
        "answer": str(item["answer"]),
        "task_item": _plain(item),
    }


def _plain(value: Any) -> Any:
    """The item as JSON would give it back (tuples → lists), so hashes and stores agree."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def nested_splits(records: list[dict[str, Any]], n_train: int, n_val: int, n_test: int) -> tuple:
    """(train, val, test): test first, then validation, then training, in generation order."""
    test = records[:n_test]
    val = records[n_test : n_test + n_val]
    train = records[n_test + n_val : n_test + n_val + n_train]
    return train, val, test


@functools.lru_cache(maxsize=32)
def _scorer(name: str) -> Any:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


def extract_answer(prediction: str) -> str:
    """The answer a task scorer sees: the first non-blank line of the generation, stripped.

    Training teaches the answer alone followed by the end of sequence, so a model that
    learnt the format writes the answer on its first line; anything after it (a second
    attempt, an explanation) is not part of the answer. A trailing full stop is dropped
    ("-4." → "-4") because prose habits add one and no task's answer ends with one here.
    """
    for line in prediction.splitlines():
        if line.strip():
            text = line.strip()
            return text[:-1].rstrip() if text.endswith(".") and len(text) > 1 else text
    return ""


def task_score(prediction: str, item: Mapping[str, Any]) -> float:
    """The task's own scorer (1.0 right, 0.0 wrong, partial credit where the task has it)."""
    name = item["metadata"]["source_dataset"]
    value = _scorer(name)(extract_answer(prediction), dict(item))
    return float(value)
