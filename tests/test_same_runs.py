"""`report --against`: runs of the same id done in both studies, their numbers' spread."""

from __future__ import annotations

import math
import statistics

import pytest

from adaptive_lora.report.same_runs import same_runs, same_runs_lines, same_runs_summary
from adaptive_lora.study.store import DONE, PENDING, RunRow


def _row(run_id, test_loss, family, status=DONE, **metrics):
    return RunRow(id=run_id, position=0, label="uniform", strategy="uniform", budget="r1",
                  seed=0, lr=1e-3, status=status, reason=None, config={},
                  metrics={"test_loss": test_loss, **metrics},
                  manifest={"matrix_family": family})  # fmt: skip


def test_the_spread_is_over_the_runs_done_in_both_and_checked_against_statistics():
    here = [_row("a", 1.50, "AMX-bf16", val_loss=1.6), _row("b", 1.40, "AMX-bf16"),
            _row("c", 1.30, "AMX-bf16"), _row("d", 1.20, "AMX-bf16"),
            _row("e", 1.10, "AMX-bf16", status=PENDING)]  # fmt: skip
    there = [_row("a", 1.52, "AVX512-bf16", val_loss=1.6), _row("b", 1.37, "AVX512-bf16"),
             _row("c", 1.30, "AVX512-bf16"), _row("e", 1.0, "AVX512-bf16"),
             _row("f", 1.0, "AVX512-bf16")]  # fmt: skip
    same = same_runs(here, there)
    assert same["n"] == 3 and same["ids"] == ["a", "b", "c"]  # d only here, e pending here
    assert same["families"] == [["AMX-bf16"], ["AVX512-bf16"]]
    diffs = [1.50 - 1.52, 1.40 - 1.37, 1.30 - 1.30]
    loss = same["metrics"]["test_loss"]
    assert loss["mean"] == pytest.approx(statistics.fmean(diffs))
    assert loss["sd"] == pytest.approx(statistics.stdev(diffs))
    assert loss["max_abs"] == pytest.approx(0.03) and loss["equal"] == 1
    # A number only some runs carry is compared over those runs alone.
    val = same["metrics"]["val_loss"]
    assert (val["n"], val["mean"], val["equal"]) == (1, 0.0, 1) and math.isnan(val["sd"])
    lines = same_runs_lines(same, "orig")
    assert "trained here with AMX-bf16, there with AVX512-bf16" in lines[0]
    assert "| test_loss | 3 | +0.0033 | 0.0252 | 0.0300 | 1 |" in lines
    assert same_runs_summary(same) == (
        "; 3 run(s) in both: test loss Δ sd 0.0252, largest 0.0300, 1 equal"
    )


def test_no_run_in_both_says_nothing():
    assert same_runs([_row("a", 1.5, "x")], [_row("b", 1.5, "x")]) is None
    assert same_runs_lines(None, "orig") == [] and same_runs_summary(None) == ""


def test_the_spread_per_group_and_the_runs_the_other_file_no_longer_lists():
    here = [_row("a", 1.50, "AMX-bf16"), _row("b", 1.40, "AMX-bf16"), _row("c", 1.30, "AMX-bf16")]
    there = [_row("a", 1.52, "AVX512-bf16"), _row("b", 1.37, "AVX512-bf16"),
             _row("c", 1.30, "AVX512-bf16")]  # fmt: skip
    same = same_runs(here, there, groups={"n = 1|0": ["a", "b"], "n = 400": ["c"]},
                     listed_there=["c", "z"])  # fmt: skip
    first = same["test_loss_by_group"]["n = 1|0"]
    assert first["n"] == 2 and first["sd"] == pytest.approx(statistics.stdev([-0.02, 0.03]))
    assert same["test_loss_by_group"]["n = 400"]["equal"] == 1
    assert same["not_listed_there"] == 2  # a and b ran there, its file dropped them since
    lines = same_runs_lines(same, "orig")
    assert "2 of them are no longer in `orig`'s study file" in lines[0]
    assert "| n = 1\\|0 | 2 | +0.0050 | 0.0354 | 0.0300 | 0 |" in lines
    # One group, or none given: no table by group, nothing said of the other file.
    plain = same_runs(here, there)
    assert plain["test_loss_by_group"] == {} and plain["not_listed_there"] == 0
    assert "Test loss by group:" not in same_runs_lines(plain, "orig")
    assert "no longer" not in same_runs_lines(plain, "orig")[0]
