"""Generated tasks: disjoint nested splits, the task's own scorer, answer extraction."""

from __future__ import annotations

import pytest

from adaptive_lora.config import DataSettings
from adaptive_lora.data.reasoning_gym import extract_answer, task_score
from adaptive_lora.data.splits import load_splits
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import check_metric_data, metrics_for_run, score

ARITH = "reasoning_gym:basic_arithmetic"
SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}


def _settings(**changes) -> DataSettings:
    base = dict(source=ARITH, n_train=60, n_val=10, n_test=20, data_seed=3, options=SMALL)
    return DataSettings(**{**base, **changes})


def test_splits_are_disjoint_seeded_and_nested_across_sizes():
    small, large = load_splits(_settings()), load_splits(_settings(n_train=240))
    questions = lambda split: [ex["instruction"] for ex in split]  # noqa: E731
    every = questions(large.train) + questions(large.val) + questions(large.test)
    assert len(set(every)) == len(every) == 270
    # The test and validation sets do not move with the training size; training is nested.
    assert large.test == small.test and large.val == small.val
    assert large.train[:60] == small.train
    assert load_splits(_settings()).data_hash == small.data_hash
    assert load_splits(_settings(data_seed=4)).data_hash != small.data_hash
    example = small.train[0]
    assert example["output"] == example["answer"] and example["task_item"]["question"]


def test_an_unknown_task_lists_close_names_and_bad_options_name_the_key():
    with pytest.raises(UserError, match="close names: basic_arithmetic"):
        load_splits(_settings(source="reasoning_gym:basic_arithmetc"))
    with pytest.raises(UserError, match="no option.*max_term"):
        load_splits(_settings(options={"max_term": 3}))
    with pytest.raises(UserError, match="only a `reasoning_gym"):
        load_splits(_settings(source="builtin"))
    # Two one-digit terms with + only: far fewer distinct questions than asked for.
    tiny = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
            "operators": ["+"], "allow_negation": False}  # fmt: skip
    with pytest.raises(UserError, match="distinct questions"):
        load_splits(_settings(options=tiny, n_train=3000))


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("-4", "-4"),
        ("  -4  \nbecause 5 - 3 - 6 = -4", "-4"),
        ("\n\n12.", "12"),
        ("The answer is 7", "The answer is 7"),
        ("", ""),
        (".", "."),
        ("3.5", "3.5"),
    ],
)
def test_the_answer_is_the_first_non_blank_line(prediction, expected):
    assert extract_answer(prediction) == expected


def test_task_score_uses_the_generators_own_scorer():
    split = load_splits(_settings()).test
    item = split[0]["task_item"]
    assert task_score(item["answer"], item) == 1.0
    assert task_score(item["answer"] + "\nsomething else", item) == 1.0
    assert task_score("not a number", item) == 0.0
    verdicts = score(["task_score", "exact"], item["answer"], split[0])
    assert verdicts == {"task_score": 1.0, "exact": True}


def test_task_score_is_the_default_metric_of_a_generated_task_and_checked():
    assert metrics_for_run([], builtin=False, generated=True) == ("rouge_l", "task_score")
    with pytest.raises(UserError, match="reasoning_gym"):
        check_metric_data(["task_score"], [{"instruction": "a", "input": "", "output": "b"}])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_decode_matches_generate_while_finished_rows_leave_the_batch(name, request):
    """Dropping finished rows from the batch and the KV cache changes no answer."""
    import torch

    from adaptive_lora.evaluation import greedy_decode
    from tiny import byte_tokenizer

    model = request.getfixturevalue(name)
    tokenizer = byte_tokenizer()
    tokenizer.padding_side = "left"
    prompts = ["a", "hello there", "xy", "the longest prompt of all here"]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    reference = model.generate(**encoded, max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=None)  # fmt: skip
    new = reference[:, encoded["input_ids"].shape[1] :].tolist()
    # An end-of-sequence id that some rows produce early and others never: rows leave early.
    counts = torch.bincount(torch.tensor([row[3] for row in new]), minlength=300)
    eos = int(counts.argmax())
    expected = [row[: row.index(eos)] if eos in row else row for row in new]
    answers, hit_limit = greedy_decode(
        model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=12,
        eos_token_id=eos, line_tokens=None, device=torch.device("cpu"), autocast_dtype=None,
    )  # fmt: skip
    assert answers == expected
    assert any(len(a) < 12 for a in answers)  # some row did finish early
    # A row hit the limit exactly when it never produced the end-of-sequence token.
    assert hit_limit == [eos not in row for row in new]
    assert any(hit_limit)
