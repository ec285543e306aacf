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
A metric that must know how the answer's generation ended, or the study's declared
answer pattern (`final_number`), is registered with `needs_scoring=True` and gets a
`Scoring` as its third argument.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from adaptive_lora.data.builtin import exact_match as builtin_exact_match
from adaptive_lora.data.reasoning_gym import is_reasoning_gym
from adaptive_lora.data.reasoning_gym import task_score as reasoning_gym_score
from adaptive_lora.errors import UserError

# (prediction, reference) → verdict; with `needs_item`, the task's item for the reference;
# with `needs_scoring`, a `Scoring` after them.
MetricFn = Callable[..., "bool | float"]
# A data check: the references a run will score → a one-line reason they cannot be, or None.
DataCheck = Callable[[Sequence[str]], "str | None"]

# A generation record's key: whether the answer stopped at `eval.max_new_tokens`.
HIT_TOKEN_LIMIT = "hit_token_limit"
# A run's `metrics.json` keys (`cut_off_counts`): how many answers stopped at that limit,
# and how many of those had no answer line.
CUT_OFF_KEYS = ("answers_at_token_limit", "answers_without_answer_line")

# The metric every comparison, ladder and plan is about: each run's held-out loss, the
# `metrics.json` key `evaluation.py` writes (task metrics above are secondary to it).
PRIMARY_METRIC = "test_loss"


@dataclass(frozen=True)
class Scoring:
    """What a metric may know of an answer besides its text and the reference."""

    # The generation stopped because it reached `eval.max_new_tokens`, not at its own end.
    hit_token_limit: bool = False
    # `eval.answer_pattern`: a regular expression whose first group (or whole match)
    # holds the answer; "" when the study declares none.
    answer_pattern: str = ""


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    summary: str
    check: DataCheck | None = None
    needs_item: bool = False  # fn(prediction, example["task_item"]) instead of a reference
    needs_scoring: bool = False  # fn(prediction, reference, Scoring)


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    *,
    check: DataCheck | None = None,
    needs_item: bool = False,
    needs_scoring: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Register `fn` as metric `name`; its docstring's first line is its summary."""

    def wrap(fn: MetricFn) -> MetricFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METRICS[name] = Metric(name, fn, summary, check, needs_item, needs_scoring)
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


# A number: an optional sign (not a hyphen between two words or digits, as in "3-5"), an
# optional currency symbol, digits with or without comma thousands separators, then a
# decimal part, a fraction ("1/2") or the fraction of a mixed number ("3 1/2"), and an
# optional percent sign (read as written: "50%" is 50).
_NUMBER = re.compile(
    r"(?<![\d.])(?P<sign>(?<![\w)])[-+\u2212])?[$\u20ac\u00a3\u00a5]?[ \t]?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)"
    r"(?:(?P<frac>\.\d+)|[ \t]+(?P<num>\d+)/(?P<mixed>\d+)|/(?P<den>\d+))?"
    r"(?:[ \t]?%)?"
)
# GSM8K's answer line, `#### 72`; and its calculator annotations, `<<48/2=24>>`, which
# repeat a step's result and are dropped before an answer is read.
_ANSWER_LINE = re.compile(r"^[ \t]*####[ \t]*(?P<answer>.*)$", re.MULTILINE)
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")
# An "=" whose right-hand side starts with a number: the result of a written calculation.
_EQUALS = re.compile(r"=[ \t]*(?=[-+\u2212$\u20ac\u00a3\u00a5]?[ \t]?\d)")


def _value(match: re.Match[str]) -> Fraction | None:
    whole = Fraction(match["int"].replace(",", "") + (match["frac"] or ""))
    if match["mixed"] is not None:
        if int(match["mixed"]) == 0:
            return None
        whole += Fraction(int(match["num"]), int(match["mixed"]))
    elif match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        whole /= int(match["den"])
    return -whole if match["sign"] in ("-", "\u2212") else whole


def numbers(text: str) -> list[Fraction]:
    """Every number in `text`, in order, as exact fractions (1,234 = 1234.0; 1/2 = 0.5;
    3 1/2 = 3.5; $-free, %-free; -0 = 0)."""
    values = (_value(m) for m in _NUMBER.finditer(text))
    return [v for v in values if v is not None]


def last_number(text: str) -> Fraction | None:
    """The last number in `text` (see `numbers`), or None."""
    found = numbers(text)
    return found[-1] if found else None


@dataclass(frozen=True)
class Reading:
    """Where a text's answer was read (`pattern`, `####`, `=`, `last`) and its value."""

    where: str
    value: Fraction | None


def answer_line(text: str, pattern: str = "") -> str | None:
    """The text of `text`'s answer line: the declared pattern's last match (its first
    group, or the whole match), else the last GSM8K `#### ...` line; None without one."""
    if pattern:
        found = list(re.finditer(pattern, text, re.MULTILINE))
        if not found:
            return None
        last = found[-1]
        return (last.group(1) if last.re.groups else last.group(0)) or ""
    lines = _ANSWER_LINE.findall(text)
    return lines[-1] if lines else None


def read_answer(text: str, pattern: str = "") -> Reading:
    """The number `text` answers with, read where the task puts it.

    1. With a declared answer pattern (`eval.answer_pattern`): the first number of its
       last match; no match, no answer.
    2. GSM8K's answer line `#### N`: its first number.
    3. Else, where the text writes calculations, the result of its last one: the number
       after its last "=" (GSM8K's worked answers may go on past it: "= 480 ... in 8
       hours").
    4. Else its last number.
    """
    line = answer_line(text, pattern)
    if line is not None or pattern:
        found = numbers(line or "")
        return Reading("pattern" if pattern else "####", found[0] if found else None)
    plain = _CALCULATOR.sub("", text)
    equals = list(_EQUALS.finditer(plain))
    if equals:
        after = numbers(plain[equals[-1].end() :])
        return Reading("=", after[0] if after else None)
    return Reading("last", last_number(plain))


def _references_have_numbers(references: Sequence[str]) -> str | None:
    if references and all(read_answer(text).value is None for text in references):
        return (
            f"none of the {len(references)} test references scored contain a number, so "
            "final_number cannot be right on any of them; use rouge_l, exact or contains"
        )
    return None


@register_metric("final_number", check=_references_have_numbers, needs_scoring=True)
def final_number(prediction: str, reference: str, scoring: Scoring = Scoring()) -> bool:
    """The number the prediction answers with equals the reference's (see `read_answer`).

    An answer cut off by the token limit before an answer line (`#### N`, or the declared
    pattern) is wrong whatever its last number: its last number is wherever the limit
    fell, often one the question gave.
    """
    expected = read_answer(reference, scoring.answer_pattern).value
    if expected is None:
        expected = read_answer(reference).value  # a reference without the declared line
    if expected is None:
        return False
    if scoring.hit_token_limit and answer_line(prediction, scoring.answer_pattern) is None:
        return False
    return read_answer(prediction, scoring.answer_pattern).value == expected


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


def metrics_of_source(named: Sequence[str], source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the metrics a run on data `source` is scored by — `eval.metrics`, else the data's
    default —, the ones it records besides them because every run does)."""
    builtin, generated = source == "builtin", is_reasoning_gym(source)
    chosen = tuple(named) or default_metrics(builtin, generated)
    scored = metrics_for_run(named, builtin, generated)
    return chosen, tuple(m for m in scored if m not in chosen)


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
    names: Sequence[str],
    prediction: str,
    example: dict[str, Any],
    scoring: Scoring = Scoring(),
) -> dict[str, bool | float]:
    """Each metric's verdict on one prediction for `example`."""
    reference = reference_of(example)
    verdicts: dict[str, bool | float] = {}
    for name in names:
        metric = METRICS[name]
        against = example["task_item"] if metric.needs_item else reference
        extra = (scoring,) if metric.needs_scoring else ()
        verdicts[name] = metric.fn(prediction, against, *extra)
    return verdicts


def cut_off_counts(records: Sequence[dict[str, Any]], answer_pattern: str = "") -> dict[str, int]:
    """How many answers reached the token limit (`hit_token_limit` in their records), and
    how many of those without an answer line (`#### N`, or the declared pattern)."""
    cut = [r for r in records if r.get(HIT_TOKEN_LIMIT)]
    without = sum(answer_line(r["prediction"], answer_pattern) is None for r in cut)
    return dict(zip(CUT_OFF_KEYS, (len(cut), without)))


def mean_scores(names: Sequence[str], records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Each metric's mean over the records that carry its verdict (None if there are none)."""
    means: dict[str, float | None] = {}
    for name in names:
        values = [float(r[name]) for r in records if r.get(name) is not None]
        means[name] = sum(values) / len(values) if values else None
    return means
