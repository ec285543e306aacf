"""Studies over several models: pairs within a model, statistics per model, agreement table."""

from __future__ import annotations

import json

import pytest
from test_protocol import ShapedRuns
from test_study import quiet_run, write_study

from adaptive_lora.errors import UserError
from adaptive_lora.report.write import write_report
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore


class TwoModels(ShapedRuns):
    """linear_decay is better than uniform on model `a`, worse on model `b`."""

    def __call__(self, config, out_root, **kw):
        result = super().__call__(config, out_root, **kw)
        if config.model == "fake/b" and config.allocation.strategy == "linear_decay":
            result.metrics["test_loss"] += 0.05
        return result


def two_model_study(tmp_path, **changes):
    spec = {"model": None, "models": ["fake/a", "fake/b"], "seeds": "0..3", **changes}
    return write_study(tmp_path, **spec)


def test_runs_are_expanded_per_model_and_paired_within_it(tmp_path):
    study = load_study(two_model_study(tmp_path), check_sources=False)
    assert study.models == ["fake/a", "fake/b"] and study.multi_model
    assert {s.config.model for s in study.runs} == {"fake/a", "fake/b"}
    assert len(study.runs) == 2 * 2 * 4  # models × strategies × seeds
    part = study.for_group(next(g for g in study.groups if g.model == "fake/b"))
    assert {s.config.model for s in part.runs} == {"fake/b"} and len(part.runs) == 8


def test_model_and_models_together_are_refused(tmp_path):
    path = write_study(tmp_path, model="fake/a", models=["fake/a", "fake/b"])
    with pytest.raises(UserError, match="give `model` \\(one\\) or `models` \\(a list\\)"):
        load_study(path, check_sources=False)


def test_the_report_has_per_model_statistics_and_the_agreement_table(tmp_path):
    study = load_study(two_model_study(tmp_path), check_sources=False)
    quiet_run(study, TwoModels())
    files = write_report(study, StudyStore.open(study.store_path), tmp_path / "r", n_boot=200)
    stats = json.loads(files.stats_json.read_text())
    assert set(stats["models"]) == {"fake/a", "fake/b"}
    for analysis in stats["models"].values():
        comparison = analysis["budgets"]["r4"]["comparisons"]["linear_decay"]
        assert comparison["n"] == 4  # four paired seeds on this model, never across models
    (row,) = stats["cross_model_agreement"]
    assert row["models"]["fake/a"]["direction"] == "lower"
    assert row["models"]["fake/b"]["direction"] == "higher"
    assert row["direction_agrees"] is False
    text = files.report_md.read_text()
    assert "## Across models: does the difference from the baseline agree?" in text
    assert "## Model `fake/a`" in text and "## Model `fake/b`" in text
