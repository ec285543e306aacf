"""The comparison protocol in a study: tuning seeds, per-strategy budgets, cross-budget keys."""

from __future__ import annotations

import pytest
from test_study import FakeRuns, quiet_run, write_study

from adaptive_lora.errors import UserError
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

TUNED = {"lr_candidates": [0.001, 0.002], "lr_tuning_seeds": [0], "seeds": [1, 2]}


def test_tuning_seeds_must_not_be_reporting_seeds(tmp_path):
    path = write_study(tmp_path, lr_candidates=[0.001, 0.002], lr_tuning_seeds=[0, 1], seeds="1..3")
    with pytest.raises(UserError, match=r"lr_tuning_seeds \[1\] are also reporting seeds"):
        load_study(path, check_sources=False)


def test_tuning_seeds_need_candidates(tmp_path):
    path = write_study(tmp_path, lr_tuning_seeds=[0], seeds=[1, 2])
    with pytest.raises(UserError, match="lr_tuning_seeds needs learning-rate candidates"):
        load_study(path, check_sources=False)


def test_an_empty_candidate_list_is_refused(tmp_path):
    path = write_study(tmp_path, lr_candidates=[], lr_tuning_seeds=[0], seeds=[1, 2])
    with pytest.raises(UserError, match="lr_candidates must be a non-empty list"):
        load_study(path, check_sources=False)


@pytest.mark.parametrize(
    ("cross", "message"),
    [
        ({"small": "r4", "large": "r8", "margin": 0}, "margin must be a number > 0"),
        ({"small": "r4", "large": "r8", "margin": -0.1}, "margin must be a number > 0"),
        ({"small": "r4", "large": "r16"}, "no baseline runs at that budget"),
        ({"small": "r8", "large": "r4"}, "must be a larger budget"),
    ],
)
def test_bad_cross_budget_requests_are_one_line_errors(tmp_path, cross, message):
    path = write_study(tmp_path, budgets=["r4", "r8"], cross_budget=cross)
    with pytest.raises(UserError, match=message):
        load_study(path, check_sources=False)


def test_cross_budget_needs_the_baseline_at_the_larger_budget(tmp_path):
    strategies = [{"name": "uniform", "budgets": ["r4"]}, "linear_decay"]
    path = write_study(
        tmp_path,
        budgets=["r4", "r8"],
        strategies=strategies,
        cross_budget={"small": "r4", "large": "r8"},
    )
    with pytest.raises(UserError, match="no baseline runs at that budget"):
        load_study(path, check_sources=False)


def test_strategies_run_only_at_their_own_budgets(tmp_path):
    strategies = ["uniform", {"name": "linear_decay", "budgets": ["r4"]}]
    study = load_study(
        write_study(tmp_path, budgets=["r4", "r8"], strategies=strategies), check_sources=False
    )
    assert {(s.label, s.budget) for s in study.runs} == {
        ("uniform", "r4"), ("uniform", "r8"), ("linear_decay", "r4")
    }  # fmt: skip


def test_tuning_runs_first_then_reporting_runs_at_the_chosen_rate(tmp_path):
    path = write_study(tmp_path, **TUNED)
    study = load_study(path, check_sources=False)
    assert all(s.tuning and s.seed == 0 for s in study.runs)
    assert len(study.runs) == 2 * 2  # two strategies × two candidates on the tuning seed
    quiet_run(study, FakeRuns())  # val_loss = 2 + lr: the smaller rate wins
    study = load_study(path, check_sources=False)
    reporting = [s for s in study.runs if not s.tuning]
    assert {(s.seed, s.lr) for s in reporting} == {(1, 0.001), (2, 0.001)}
    assert len(reporting) == 2 * 2
    for choice in study.lr_choices.values():
        assert choice.chosen == 0.001 and choice.seeds == [0] and choice.complete
    assert all(study.reported(s) == (not s.tuning and s.lr == 0.001) for s in study.runs)


def test_a_failed_candidate_is_excluded_and_said(tmp_path):
    path = write_study(tmp_path, **TUNED)
    study = load_study(path, check_sources=False)
    # the smaller rate fails for uniform on the tuning seed: it must not win by default
    fake = FakeRuns(fail={("uniform", 0)})
    quiet_run(study, fake)
    with StudyStore.open(study.store_path) as store:
        choices = study.select_lr(store.rows())
    uniform = choices[("uniform", "r4")]
    assert uniform.failed == {0.001: [0], 0.002: [0]}
    assert uniform.chosen is None and "every candidate failed" in uniform.note
    decay = choices[("linear_decay", "r4")]
    assert decay.chosen == 0.001 and decay.note == ""


def test_a_tie_goes_to_the_smaller_rate_and_is_said():
    from adaptive_lora.study.lr import choose_lr
    from adaptive_lora.study.store import RunRow

    def row(lr, seed, val):
        return RunRow(f"r{lr}{seed}", 0, "u", "uniform", "r8", seed, lr, "done", None, {},
                      metrics={"val_loss": val})  # fmt: skip

    rows = [row(0.002, 0, 1.5), row(0.001, 0, 1.5), row(0.004, 0, 1.7)]
    choice = choose_lr("u", "r8", [0.001, 0.002, 0.004], [0], rows)
    assert choice.chosen == 0.001 and "tie between 0.001, 0.002" in choice.note
