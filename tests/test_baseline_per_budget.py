"""A baseline per budget: `baseline: {default: uniform, BUDGET: LABEL}`.

Below r1 `uniform` cannot spend the budget and `peft_default` can, so a study of scarce
budgets compares there against `peft_default` and against `uniform` elsewhere. Each
budget's tests, sequential looks, tables, figures and Answer use that budget's baseline;
a study with one baseline is unchanged (its spec hash included).
"""

from __future__ import annotations

import json

import pytest
from test_study import FakeRuns, quiet_run, write_study

from adaptive_lora.errors import UserError
from adaptive_lora.report.write import write_report
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

STRATEGIES = [
    {"name": "uniform", "budgets": ["r8"]},
    "linear_decay",
    "attention_heavy",
]
OWN = {"default": "uniform", "r4": "linear_decay"}


def test_each_budget_is_compared_with_its_own_baseline(tmp_path):
    path = write_study(tmp_path, budgets=["r4", "r8"], strategies=STRATEGIES, baseline=OWN,
                       seeds="0..1")  # fmt: skip
    study = load_study(path)
    assert study.baseline == "uniform" and study.baseline_at("r4") == "linear_decay"
    assert study.baseline_at("r8") == "uniform"
    (tmp_path / "plain").mkdir()
    plain = load_study(write_study(tmp_path / "plain", budgets=["r4", "r8"], seeds="0..1",
                                   strategies=STRATEGIES, baseline="uniform"))  # fmt: skip
    assert study.spec_hash != plain.spec_hash  # the baselines name the comparisons
    assert [r.run_id for r in study.runs] == [r.run_id for r in plain.runs]
    quiet_run(study, FakeRuns())
    with StudyStore.open(study.store_path) as store:
        files = write_report(study, store, tmp_path / "report", n_boot=100)
    stats = json.loads(files.stats_json.read_text())
    r4, r8 = stats["budgets"]["r4"], stats["budgets"]["r8"]
    assert r4["baseline"] == "linear_decay" and "baseline" not in r8
    assert set(r4["comparisons"]) == {"attention_heavy"}
    assert set(r8["comparisons"]) == {"linear_decay", "attention_heavy"}
    text = files.report_md.read_text()
    assert "compared with `uniform` (`linear_decay` at r4)" in text
    assert "At this budget every strategy is compared with `linear_decay`." in text
    assert "Δ = strategy − linear_decay" in text and "Δ = strategy − uniform" in text


@pytest.mark.parametrize(
    "baseline, message",
    [
        ({"r4": "linear_decay"}, "a mapping needs `default`"),
        ({"default": "uniform", "r2": "linear_decay"}, "r2 not among the study's budgets"),
        ({"default": "uniform", "r4": "nobody"}, "baseline 'nobody' is not one of"),
        ({"default": "uniform"}, "'uniform' (the default) does not run at r4"),
        ({"default": "uniform", "r8": "linear_decay", "r4": "uniform"}, "does not run there"),
    ],
)
def test_a_bad_baseline_mapping_is_one_line_naming_what_to_fix(tmp_path, baseline, message):
    path = write_study(tmp_path, budgets=["r4", "r8"], strategies=STRATEGIES, baseline=baseline)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_study(path)
