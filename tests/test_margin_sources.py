"""Honest margins: a number from a small pilot is refused by `plan` unless a reason is
given, and every equivalence verdict carries the tightest margin its data support."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as st
from statsmodels.stats.weightstats import ttost_paired

from adaptive_lora.analysis.equivalence import tost_paired
from adaptive_lora.analysis.sequential import SequentialDesign, sequential_decisions
from adaptive_lora.cli import main
from adaptive_lora.errors import UserError
from adaptive_lora.study.hypotheses import parse_hypotheses
from adaptive_lora.study.hypothesis_sources import MIN_PILOT_SEEDS, source_warnings

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["uniform", "linear_decay"]


def _hypotheses(**raw):
    return parse_hypotheses(raw, LABELS, "uniform")


def test_a_number_without_a_source_is_refused_naming_the_key():
    h = _hypotheses(margin=0.003)
    with pytest.raises(UserError, match=r"hypotheses.margin 0.003 gives no source: add "
                       r"hypotheses.margin_source"):  # fmt: skip
        source_warnings(h, LABELS)
    assert source_warnings(h, LABELS, overridden=("margin",)) == []  # a what-if flag


def test_a_small_pilot_needs_a_reason_and_is_then_a_warning():
    small = MIN_PILOT_SEEDS - 1
    h = _hypotheses(smallest_effect=0.003, smallest_effect_source={"pilot_seeds": small})
    with pytest.raises(UserError, match=rf"pilot of {small} seeds.*smallest_effect_source.reason"):
        source_warnings(h, LABELS)
    h = _hypotheses(
        smallest_effect=0.003,
        smallest_effect_source={"pilot_seeds": small, "reason": "kept as declared"},
    )
    [line] = source_warnings(h, LABELS)
    assert line.startswith("warning: hypotheses.smallest_effect 0.003 was taken from a pilot")
    assert line.endswith("kept because: kept as declared")
    enough = _hypotheses(margin=0.002, margin_source={"pilot_seeds": MIN_PILOT_SEEDS})
    assert source_warnings(enough, LABELS) == []
    external = _hypotheses(margin=0.002, margin_source={"reason": "a practical threshold"})
    assert source_warnings(external, LABELS) == []


def test_a_comparisons_own_number_needs_its_own_source():
    h = _hypotheses(
        margin=0.003,
        margin_source={"pilot_seeds": 20},
        comparisons={"linear_decay": {"margin": 0.001}},
    )
    with pytest.raises(UserError, match="hypotheses.margin 0.001 gives no source"):
        source_warnings(h, LABELS)


@pytest.mark.parametrize(
    "source, message",
    [({"pilot_seeds": 0}, "pilot_seeds must be"), ({"reason": ""}, "reason must be"),
     ({"seeds": 5}, "must be a mapping"), ("five", "must be a mapping")],
)  # fmt: skip
def test_a_bad_source_is_one_line(source, message):
    with pytest.raises(UserError, match=message):
        _hypotheses(margin=0.003, margin_source=source)


def _copy_study(tmp_path: Path, config: str, results: str) -> Path:
    """The config and its committed store, copied so nothing is written beside them."""
    raw = yaml.safe_load((ROOT / config).read_text())
    raw["out"] = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    shutil.copy(ROOT / results / "study.db", tmp_path / "store" / "study.db")
    path = tmp_path / Path(config).name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_plan_on_the_regime_map_warns_of_its_5_seed_margin_and_its_first_look(
    tmp_path, monkeypatch, capsys
):
    path = _copy_study(tmp_path, "configs/regime-map.yaml", "results/regime-map")
    monkeypatch.chdir(ROOT)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: hypotheses.margin 0.003 was taken from a pilot of 5 seeds" in out
    assert "warning: hypotheses.smallest_effect 0.003 was taken from a pilot of 5 seeds" in out
    assert "warning: look 1 (5 seeds) at r4" in out
    assert "the first useful look is look 2 (10 seeds): seeds.min: 10" in out
    # Without the source the published file now states, plan refuses in one line.
    raw = yaml.safe_load(path.read_text())
    del raw["hypotheses"]["margin_source"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["plan", str(path)]) == 2
    assert "hypotheses.margin 0.003 gives no source" in capsys.readouterr().err


def test_the_tightest_margin_of_a_tost_is_where_statsmodels_changes_its_verdict():
    rng = np.random.default_rng(7)
    diffs = rng.normal(0.0004, 0.0015, size=12)
    for alpha in (0.05, 0.05 / 7):
        x = tost_paired(diffs, margin=0.01, alpha=alpha)["tightest_margin"]
        half = st.t.ppf(1 - alpha, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs))
        assert x == pytest.approx(abs(np.mean(diffs)) + half, rel=1e-12)
        zeros = np.zeros_like(diffs)
        for factor, passes in ((1 + 1e-6, True), (1 - 1e-6, False)):
            p = ttost_paired(diffs, zeros, -x * factor, x * factor)[0]
            assert (p < alpha) == passes


def test_a_sequential_equivalence_says_the_tightest_margin_at_its_boundary():
    rng = np.random.default_rng(3)
    diffs = list(rng.normal(0.0, 0.001, size=10))
    # One look: the design's TOST is the fixed one at α/m, so statsmodels is the reference.
    single = SequentialDesign(looks=(10,), margin=0.01, family_size=7)
    decided = sequential_decisions({"a": diffs}, 0, single)["a"]
    assert decided.decision == "equivalent"
    x = decided.tightest_margin
    zeros = np.zeros(10)
    assert ttost_paired(np.array(diffs), zeros, -x * 1.000001, x * 1.000001)[0] < 0.05 / 7
    assert ttost_paired(np.array(diffs), zeros, -x * 0.999999, x * 0.999999)[0] > 0.05 / 7
    assert f"equivalent within ±{x:.4f}" in decided.reason
    # Several looks: the margin is where the design's own decision at that look flips
    # (the first look, at its far larger boundary, supports only a wider margin).
    plain = SequentialDesign(looks=(5, 10), family_size=2)
    x = sequential_decisions({"a": diffs}, 1, plain)["a"].tightest_margin
    assert sequential_decisions({"a": diffs}, 0, plain)["a"].tightest_margin > x
    for factor, verdict in ((1.000001, "equivalent"), (0.999999, "inconclusive")):
        design = SequentialDesign(looks=(5, 10), margin=x * factor, family_size=2)
        assert sequential_decisions({"a": diffs}, 1, design)["a"].decision == verdict
