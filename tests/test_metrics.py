"""Task metrics: the registry, hand-written cases, config and data checks, per-example verdicts."""

import json
from fractions import Fraction

import pytest
import yaml
from test_train import tiny_config

from adaptive_lora.config import RunConfig
from adaptive_lora.data import sources
from adaptive_lora.data.sources import load_examples
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import (
    METRICS,
    Scoring,
    check_metric_data,
    contains,
    cut_off_counts,
    exact,
    exact_match,
    final_number,
    last_number,
    metrics_for_run,
    read_answer,
    rouge_l,
    score,
)
from adaptive_lora.run import execute_run
from adaptive_lora.study.spec import load_study
from tiny import save_tiny, tiny_llama


def test_the_registry_holds_every_metric():
    assert set(METRICS) == {
        "rouge_l",
        "exact_match",
        "final_number",
        "exact",
        "contains",
        "task_score",
    }
    assert all(metric.summary for metric in METRICS.values())


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("The answer is 1,234.", "1234", True),
        ("12 apples and 3", "12", False),
        ("So x = -7.0", "−7", True),  # a Unicode minus and a trailing .0
        ("+5 degrees", "5", True),
        ("about 2.50 kg", "2.5", True),
        ("pages 3-5", "5", True),  # a hyphen between numbers is not a sign
        ("pages 3-5", "-5", False),
        ("1,234,567 people", "1234567", True),
        ("no digits here", "4", False),
        ("42", "no number", False),
    ],
)
def test_final_number(prediction, reference, expected):
    assert final_number(prediction, reference) is expected


def test_last_number_normalises():
    assert last_number("a 1,000 b 2,000.0") == 2000
    assert last_number("-0") == 0
    assert last_number("none") is None


@pytest.mark.parametrize(
    "text, value",
    [
        ("1/2", Fraction(1, 2)),  # not 2
        ("about 3 1/2 cups", Fraction(7, 2)),
        ("-3/4", Fraction(-3, 4)),
        ("$1,234.50 in total", Fraction(246900, 200)),
        ("a 12.5% rise", Fraction(25, 2)),
        ("it cost €7", Fraction(7)),
        ("−2", Fraction(-2)),
        ("1,234, then 5", Fraction(5)),
        ("1/0", None),
    ],
)
def test_numbers_are_read_as_written(text, value):
    assert last_number(text) == value


# GSM8K's worked answers, as its `answer` field writes them.
NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
# A reference whose last number is not its answer: the worked answer goes on past "= 480".
HOURS = "He works 60 * 8 = <<60*8=480>>480 minutes a day, in 8 hours"


@pytest.mark.parametrize(
    "text, where, value",
    [
        (NATALIA, "####", 72),
        ("So the total is 1,234 dollars.\n#### 1,234", "####", 1234),
        (HOURS, "=", 480),
        ("Half of it: 1/2", "last", Fraction(1, 2)),
        ("x = 5/2 so", "=", Fraction(5, 2)),
        ("no number", "last", None),
    ],
)
def test_the_answer_is_read_where_the_task_puts_it(text, where, value):
    reading = read_answer(text)
    assert (reading.where, reading.value) == (where, value)


CUT = Scoring(hit_token_limit=True)
SAYS = Scoring(answer_pattern=r"answer is (\S+)")
# A generation the token limit cut off, whose last number echoes the question.
ECHO = "She bakes 6 cakes an hour. In the first hour she bakes 6 cakes"


@pytest.mark.parametrize(
    "prediction, reference, scoring, expected",
    [
        # The tester's three: a truncated answer whose last number echoes the question ...
        (ECHO, "She bakes 2 * 3 = <<2*3=6>>6 cakes.\n#### 6", CUT, False),
        # ... though the same text, ended by the model itself, is read as it stands;
        (ECHO, "#### 6", Scoring(), True),
        # ... a reference whose last number follows its answer ("= 480 ... in 8 hours");
        ("He works for 8 hours", HOURS, Scoring(), False),
        ("60 * 8 = 480 minutes", HOURS, Scoring(), True),
        # ... and "1/2", which is a half, not 2.
        ("The answer is 1/2", "2", Scoring(), False),
        ("The answer is 1/2", "#### 0.5", Scoring(), True),
        # GSM8K's answer line with a thousands separator, against a plain prediction.
        ("The total is 1234", "#### 1,234", Scoring(), True),
        ("#### 1,234", "So 1,000 + 234 = 1,234 in all", Scoring(), True),
        # A cut-off answer that wrote its answer line before the limit counts.
        ("48 + 24 = 72\n#### 72\nNatalia sold", NATALIA, CUT, True),
        ("48 + 24 = 72\n#### 71\nNatalia sold", NATALIA, CUT, False),
        # A declared pattern: its last match decides, in the reference and the answer.
        ("The answer is 12. Check: 3 * 4", "3 * 4 = 12. The answer is 12", SAYS, True),
        ("12", "The answer is 12", SAYS, False),
        (
            "The answer is $12 (3 each)",
            "The answer is 12",
            Scoring(True, r"answer is ([^.]+)"),
            True,
        ),
        # A reference the declared pattern misses is read the default way.
        ("The answer is 12", "#### 12", SAYS, True),
    ],
)
def test_final_number_scores_the_answer(prediction, reference, scoring, expected):
    assert final_number(prediction, reference, scoring) is expected


def test_score_hands_the_scoring_to_the_metrics_that_read_it():
    example = {"instruction": "q", "output": NATALIA}
    cut = score(["final_number", "contains"], "Natalia sold 72", example, CUT)
    assert cut == {"final_number": False, "contains": False}
    assert score(["final_number"], "Natalia sold 72", example)["final_number"] is True


def test_cut_off_answers_are_counted_with_and_without_an_answer_line():
    records = [
        {"prediction": "6 cakes", "hit_token_limit": True},
        {"prediction": "= 72\n#### 72\nand", "hit_token_limit": True},
        {"prediction": "72", "hit_token_limit": False},
        {"prediction": "old record"},  # stored before the field: not counted
    ]
    assert cut_off_counts(records) == {
        "answers_at_token_limit": 2,
        "answers_without_answer_line": 1,
    }
    assert cut_off_counts(records, r"answer is (\d+)")["answers_without_answer_line"] == 2


def test_a_bad_answer_pattern_is_a_one_line_error():
    with pytest.raises(UserError, match="eval.answer_pattern.*regular expression") as error:
        RunConfig.from_dict({"eval": {"answer_pattern": "answer is ("}})
    assert "\n" not in str(error.value)
    # Left at its default, the pattern names no run: every id stays what it was.
    assert RunConfig().run_id() == RunConfig.from_dict({"eval": {"answer_pattern": ""}}).run_id()
    assert RunConfig().run_id() != RunConfig.from_dict({"eval": {"answer_pattern": "x"}}).run_id()


def test_exact_contains_exact_match_and_rouge():
    assert exact("  Paris\n", "paris") and not exact("Paris.", "paris")
    assert contains("It is PARIS, France", "paris,  france") and not contains("Lyon", "Paris")
    assert not contains("anything", "")
    assert exact_match("42.\nBecause ...", "42") and not exact_match("The answer is 42", "42")
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)


def test_defaults_keep_the_old_keys():
    assert metrics_for_run([], builtin=True) == ("rouge_l", "exact_match")
    assert metrics_for_run([], builtin=False) == ("rouge_l",)
    assert metrics_for_run(["final_number"], builtin=False) == ("rouge_l", "final_number")


def test_an_unknown_metric_is_a_one_line_error_before_anything_loads(tmp_path):
    from adaptive_lora.run import execute_run

    config = RunConfig.from_dict(
        {"model": "no-such-model", "eval": {"metrics": ["rouge_l", "bleu"]}}
    )
    with pytest.raises(UserError, match="unknown metric.*'bleu'.*final_number") as error:
        execute_run(config, tmp_path)  # the metric, not the missing model, is named
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def words_file(tmp_path, n=12):
    records = [{"instruction": f"Name colour {i}", "output": "blue"} for i in range(n)]
    path = tmp_path / "words.json"
    path.write_text(json.dumps(records))
    return path


def test_final_number_on_references_without_numbers_is_refused(tmp_path):
    examples = load_examples(str(words_file(tmp_path)))
    with pytest.raises(UserError, match="final_number.*contain a number") as error:
        check_metric_data(["final_number"], examples)
    assert "\n" not in str(error.value)
    check_metric_data(["rouge_l", "contains"], examples)  # other metrics are fine


def test_a_study_with_final_number_on_wordy_data_fails_before_any_run(tmp_path):
    spec = {
        "name": "t",
        "model": "fake/model",
        "data": {"source": str(words_file(tmp_path)), "n_train": 4, "n_val": 2, "n_test": 4},
        "budgets": ["r4"],
        "strategies": ["uniform"],
        "seeds": "0..1",
        "eval": {"metrics": ["final_number"]},
        "out": str(tmp_path / "out"),
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="final_number"):
        load_study(path)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("llama"))


def test_a_run_refuses_final_number_before_writing(llama_folder, tmp_path):
    config = tiny_config(llama_folder, eval__metrics=["final_number"])
    config.data.source = str(words_file(tmp_path, n=40))
    with pytest.raises(UserError, match="final_number"):
        execute_run(config, tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


def test_every_generation_carries_each_verdict(llama_folder, tmp_path):
    config = tiny_config(llama_folder, eval__metrics=["final_number", "exact", "contains"])
    result = execute_run(config, tmp_path, quiet=True)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    names = ("rouge_l", "exact_match", "final_number", "exact", "contains")
    for name in names:
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["eval_metrics"] == ["final_number", "exact", "contains"]
    lines = (result.run_dir / "generations.jsonl").read_text().splitlines()
    assert len(lines) == config.eval.n_generate
    records = [json.loads(line) for line in lines]
    for record in records:
        assert set(names) <= set(record)
        assert isinstance(record["final_number"], bool)
        assert isinstance(record["hit_token_limit"], bool)
    # Each run counts the answers the token limit cut off, as its records say.
    assert metrics["answers_at_token_limit"] == sum(r["hit_token_limit"] for r in records)
    assert 0 <= metrics["answers_without_answer_line"] <= metrics["answers_at_token_limit"]
    limited = [r for r in records if r["hit_token_limit"]]
    assert all(not r["final_number"] for r in limited if "####" not in r["prediction"])


def test_other_data_keeps_exact_match_empty(llama_folder, tmp_path):
    config = tiny_config(llama_folder)
    config.data.source = str(words_file(tmp_path, n=40))
    result = execute_run(config, tmp_path / "runs", quiet=True)
    assert result.metrics["exact_match"] is None
    assert result.metrics["rouge_l"] is not None
    assert result.metrics["eval_metrics"] == ["rouge_l"]


def test_empty_outputs_are_kept_with_one_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "_WARNED_EMPTY", set())
    path = tmp_path / "data.jsonl"
    rows = [{"instruction": "a", "output": ""}, {"instruction": "b", "output": " "}]
    rows.append({"instruction": "c", "output": "yes"})
    path.write_text("\n".join(json.dumps(row) for row in rows))
    assert len(load_examples(str(path))) == 3
    assert len(load_examples(str(path))) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 3 records have an empty output" in err[0]
