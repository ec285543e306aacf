"""Task metrics: the registry, hand-written cases, config and data checks, per-example verdicts."""

import json
from decimal import Decimal

import pytest
import yaml
from test_train import tiny_config

from adaptive_lora.config import RunConfig
from adaptive_lora.data import sources
from adaptive_lora.data.sources import load_examples
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import (
    METRICS,
    check_metric_data,
    contains,
    exact,
    exact_match,
    final_number,
    last_number,
    metrics_for_run,
    rouge_l,
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
    assert last_number("a 1,000 b 2,000.0") == Decimal("2000")
    assert last_number("-0") == Decimal("0")
    assert last_number("none") is None


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
    for line in lines:
        record = json.loads(line)
        assert set(names) <= set(record)
        assert isinstance(record["final_number"], bool)


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
