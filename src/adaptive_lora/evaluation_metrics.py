"""Task metrics: one registry of small functions `(prediction, reference) -> bool | float`.

Every generated answer is scored by each metric a run uses, and each metric's mean
over the scored examples is a `metrics.json` key of the same name. Which metrics a
run uses (`metrics_for_run`):

* the ones `eval.metrics` names, else the data's default: `exact_match` on the
  built-in set, `task_score` on a generated `reasoning_gym:` task, `rouge_l` on any
  other data;
* always `rouge_l`, and `exact_match` on the built-in set, because every run has
  recorded them since the first study (old stores and reports read those keys).

Adding a metric is one function here with `@register_metric`. A metric that can
only be scored on some data sets a `check` that fails before any run starts. A metric
that judges with the task's own scorer (`task_score`) is registered with
`needs_item=True` and gets the example's generator item instead of a reference text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from adaptive_lora.data.builtin import exact_match as builtin_exact_match
from adaptive_lora.data.reasoning_gym import task_score as reasoning_gym_score
from adaptive_lora.errors import UserError

MetricFn = Callable[[str, str], "bool | float"]
# A data check: the references a run will score → a one-line reason they cannot be, or None.
DataCheck = Callable[[Sequence[str]], "str | None"]

# The metric every comparison, ladder and plan is about: each run's held-out loss, the
# `metrics.json` key `evaluation.py` writes (task metrics above are secondary to it).
PRIMARY_METRIC = "test_loss"


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    summary: str
    check: DataCheck | None = None
    needs_item: bool = False  # fn(prediction, example["task_item"]) instead of a reference


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, *, check: DataCheck | None = None, needs_item: bool = False
) -> Callable[[MetricFn], MetricFn]:
    """Register `fn` as metric `name`; its docstring's first line is its summary."""

    def wrap(fn: MetricFn) -> MetricFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METRICS[name] = Metric(name, fn, summary, check, needs_item)
        return fn

    return wrap


def check_metric_names(names: Sequence[str]) -> None:
    """Raise a one-line `UserError` for a metric name the registry does not know."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UserError(
            f"eval.metrics: unknown metric(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(METRICS)}"
        )


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer  # third-party and slow to import: only when scoring

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@register_metric("rouge_l")
def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004) on lower-cased word tokens, via the `rouge-score` package."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@register_metric("exact_match")
def exact_match(prediction: str, reference: str) -> bool:
    """The built-in set's rule: the prediction's first line equals the answer, normalised."""
    return builtin_exact_match(prediction, reference)


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


@register_metric("exact")
def exact(prediction: str, reference: str) -> bool:
    """The whole prediction equals the reference, whitespace runs and case normalised."""
    return _normalise(prediction) == _normalise(reference)


@register_metric("contains")
def contains(prediction: str, reference: str) -> bool:
    """The normalised reference occurs in the normalised prediction (never for an empty one)."""
    needle = _normalise(reference)
    return bool(needle) and needle in _normalise(prediction)


# A number: an optional sign (not a hyphen between two words or digits, as in "3-5"),
# digits with or without comma thousands separators, an optional decimal part.
_NUMBER = re.compile(
    r"(?<![\d.])(?P<sign>(?<![\w)])[-+\u2212])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
)


def last_number(text: str) -> Decimal | None:
    """The last number in `text` as a Decimal (so 1,234 = 1234 = 1234.0 and -0 = 0), or None."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    sign = "-" if last["sign"] in ("-", "\u2212") else ""
    return Decimal(sign + last["int"].replace(",", "") + (last["frac"] or ""))


def _references_have_numbers(references: Sequence[str]) -> str | None:
    if references and all(last_number(text) is None for text in references):
        return (
            f"none of the {len(references)} test references scored contain a number, so "
            "final_number cannot be right on any of them; use rouge_l, exact or contains"
        )
    return None


@register_metric("final_number", check=_references_have_numbers)
def final_number(prediction: str, reference: str) -> bool:
    """The last number in the prediction equals the last number in the reference."""
    expected = last_number(reference)
    return expected is not None and last_number(prediction) == expected


@register_metric("task_score", needs_item=True)
def task_score(prediction: str, item: dict[str, Any]) -> float:
    """A generated task's own scorer (reasoning-gym) on the answer's first line."""
    return reasoning_gym_score(prediction, item)


def default_metrics(builtin: bool, generated: bool = False) -> tuple[str, ...]:
    """The metrics a run reports when `eval.metrics` names none."""
    if generated:
        return ("task_score",)
    return ("exact_match",) if builtin else ("rouge_l",)


def metrics_for_run(
    named: Sequence[str], builtin: bool, generated: bool = False
) -> tuple[str, ...]:
    """Every metric a run scores: the named (or default) ones plus the two recorded always."""
    chosen = tuple(named) or default_metrics(builtin, generated)
    always = ("rouge_l", "exact_match") if builtin else ("rouge_l",)
    return tuple(dict.fromkeys(always + chosen))


def check_metric_data(named: Sequence[str], examples: Sequence[dict[str, Any]]) -> None:
    """Fail with one line if a named metric cannot be scored on these examples' references."""
    check_metric_names(named)
    references = [reference_of(example) for example in examples]
    for name in named:
        if METRICS[name].needs_item and examples and "task_item" not in examples[0]:
            raise UserError(
                f"eval.metrics: {name} scores with a generated task's own scorer; use it with "
                "a `reasoning_gym:<task>` data source"
            )
        check = METRICS[name].check
        reason = check(references) if check is not None else None
        if reason is not None:
            raise UserError(f"eval.metrics: {name}: {reason}")


def reference_of(example: dict[str, Any]) -> str:
    """What a prediction is scored against: the built-in set's short answer, else `output`."""
    return example.get("answer", example["output"])


def score(
    names: Sequence[str], prediction: str, example: dict[str, Any]
) -> dict[str, bool | float]:
    """Each metric's verdict on one prediction for `example`."""
    reference = reference_of(example)
    return {
        name: METRICS[name].fn(
            prediction, example["task_item"] if METRICS[name].needs_item else reference
        )
        for name in names
    }


def mean_scores(names: Sequence[str], records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Each metric's mean over the records that carry its verdict (None if there are none)."""
    means: dict[str, float | None] = {}
    for name in names:
        values = [float(r[name]) for r in records if r.get(name) is not None]
        means[name] = sum(values) / len(values) if values else None
    return means
