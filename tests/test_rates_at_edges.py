"""Rates never at an edge: tuning grids grow past an edge by default, published studies
keep their runs, and a chosen rate still at an edge is marked in the report."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from adaptive_lora.report.cells import main_table_rows
from adaptive_lora.study.lr import choose_lr, choose_lr_extending, grid_edge
from adaptive_lora.study.schema import lr_extend_setting
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import DONE, RunRow

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = [  # (study file, its committed store's folder, the report holding its spec hash)
    ("configs/alpaca-smollm2.yaml", "results/alpaca-smollm2", "results/alpaca-smollm2"),
    ("configs/regime-map.yaml", "results/regime-map", "results/regime-map"),
    ("configs/regime-map-xeon.yaml", "results/regime-map/xeon", "results/regime-map/xeon"),
    ("configs/regime-map-gemma3.yaml", "results/regime-map-gemma3", "results/regime-map-gemma3"),
    ("configs/gemma3-linear-decay.yaml", "results/gemma3-linear-decay",
     "results/gemma3-linear-decay"),
    ("configs/regime-pilot.yaml", "results/regime-pilot", "results/regime-pilot/report"),
    ("tests/fixtures/quickstart/study.yaml", "tests/fixtures/quickstart/study",
     "tests/fixtures/quickstart/report"),
]  # fmt: skip


def test_the_default_grows_a_grid_once_where_there_are_tuning_seeds():
    assert lr_extend_setting(None, [0]) == 1
    assert lr_extend_setting(None, []) == 0  # nothing to grow on
    assert lr_extend_setting(0, [0]) == 0  # a stated value wins


@pytest.mark.parametrize("config, store, report", PUBLISHED)
def test_a_published_study_expands_to_the_runs_its_report_lists(tmp_path, config, store, report):
    committed = (ROOT / report / "report.md").read_text()
    [expected] = set(re.findall(r"spec hash `([0-9a-f]+)`", committed))
    raw = yaml.safe_load((ROOT / config).read_text())
    raw["out"] = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    shutil.copy(ROOT / store / "study.db", tmp_path / "store" / "study.db")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_study(path, check_sources=False).spec_hash == expected


def _row(lr: float, val_loss: float) -> RunRow:
    return RunRow(
        id=f"u-{lr:g}", position=0, label="uniform", strategy="uniform", budget="r1", seed=0,
        lr=lr, status=DONE, reason=None, config={}, metrics={"val_loss": val_loss},
    )  # fmt: skip


def test_a_choice_at_an_end_of_its_grid_says_which_end():
    assert grid_edge(8e-3, [2e-3, 4e-3, 8e-3]) == "largest"
    assert grid_edge(1e-3, [1e-3, 2e-3]) == "smallest"  # two rates: always an end
    assert grid_edge(4e-3, [2e-3, 4e-3, 8e-3]) == ""
    assert grid_edge(4e-3, [4e-3]) == ""  # nothing was tuned
    rows = [_row(1e-3, 1.9), _row(2e-3, 1.8), _row(4e-3, 1.7), _row(8e-3, 1.6)]
    # the regime map's r1: grown once to 8e-3, still the best, so still at the edge
    choice = choose_lr_extending("uniform", "r1", [1e-3, 2e-3, 4e-3], [0], rows, 1)
    assert choice.chosen == 8e-3 and choice.edge == "largest"
    assert choice.to_dict()["edge"] == "largest"
    inside = choose_lr("uniform", "r1", [2e-3, 4e-3, 8e-3], [0], [*rows[:3], _row(8e-3, 1.75)])
    assert inside.chosen == 4e-3 and inside.edge == ""


def test_the_main_table_marks_a_rate_at_an_edge(monkeypatch):
    monkeypatch.chdir(ROOT)
    study = load_study("configs/regime-map.yaml", check_sources=False)
    entry = {
        "lr": 8e-3, "lr_edge": "largest",
        "test_loss": {"n": 2, "mean": 1.7, "ci_t": [1.6, 1.8]},
        "trainable_params": {"n": 0}, "effective_params": {"n": 0},
        "deviation_pct": {"n": 0}, "effective_deviation_pct": {"n": 0},
        "train_seconds": {"n": 1, "mean": 60.0}, "wall_seconds": {"n": 0},
    }  # fmt: skip
    block = {"strategies": {"uniform": entry}, "comparisons": {}}
    [row] = main_table_rows(study, block)
    assert row["lr"] == "0.008 (top of grid)"
    [row] = main_table_rows(study, {**block, "strategies": {"uniform": {**entry, "lr_edge": ""}}})
    assert row["lr"] == "0.008"
