"""Looks that can decide: each look's boundaries, in t and in mean differences, and a
warning for a look no plausible effect can cross (the regime map's first look)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml
from scipy import stats as st

from adaptive_lora.analysis.looks import REACH, first_useful, look_reach
from adaptive_lora.analysis.sequential import SequentialDesign, boundaries
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.status import format_dry_run

ROOT = Path(__file__).resolve().parents[1]

# The published design: α = 0.05 over the cell's 7 comparisons, looks at 5, 10, 15, 20.
MAP = SequentialDesign(looks=(5, 10, 15, 20), family_size=7, margin=0.003, smallest_effect=0.003)


def _obf_first_look(level: float, fraction: float) -> float:
    """The first look's z boundary, from the O'Brien–Fleming spending function alone
    (nothing is spent before it, so no integral is needed): α(t) = 2 − 2Φ(z_{1−level/2}/√t)."""
    spent = 2 * st.norm.sf(st.norm.isf(level / 2) / math.sqrt(fraction))
    return float(st.norm.isf(spent))


def test_the_maps_first_look_boundaries_are_152_and_80():
    b = boundaries(MAP)
    level = 0.05 / 7
    z_diff = _obf_first_look(level / 2, 0.25)  # two-sided: each side spends level / 2
    z_one = _obf_first_look(level, 0.25)  # each side of TOST, and futility
    assert b.z_diff[0] == pytest.approx(z_diff, rel=1e-6)
    assert b.z_one[0] == pytest.approx(z_one, rel=1e-6)
    # The recomputation's numbers are these tails carried to t on 4 df (λ = 1) ...
    assert round(st.t.isf(st.norm.sf(z_diff), 4)) == 152
    assert round(st.t.isf(st.norm.sf(z_one), 4)) == 80
    # ... and the design's are the same tails scaled by its calibrated λ ≤ 1.
    assert b.t_diff[0] == pytest.approx(st.t.isf(b.lambda_diff * st.norm.sf(z_diff), 4))
    assert b.t_one[0] == pytest.approx(st.t.isf(b.lambda_one * st.norm.sf(z_one), 4))
    assert b.t_diff[0] >= 151.9 and b.t_one[0] >= 79.6


def test_with_the_pilot_sd_the_first_look_cannot_decide_and_the_second_can():
    sd = 0.0016  # the reference study's sd of paired differences, as the map's file says
    reach = look_reach(boundaries(MAP), sd, 0.003, 0.003)
    first = reach[0]
    assert first.crossing == pytest.approx(first.t_diff * sd / math.sqrt(5))
    assert first.tightest_margin == pytest.approx(first.t_one * sd / math.sqrt(5))
    assert first.crossing > REACH * 0.003 and first.tightest_margin > 0.003
    assert not first.can_decide
    assert first_useful(reach).look == 2
    assert all(r.can_decide for r in reach[1:])


def test_a_look_is_judged_against_the_last_one_without_an_sd():
    reach = look_reach(boundaries(MAP), math.nan, 0.003, 0.003)
    assert math.isnan(reach[0].crossing)
    assert not reach[0].can_decide and reach[-1].can_decide
    # a single fixed look always can
    [only] = look_reach(boundaries(SequentialDesign(looks=(8,))), math.nan, None, None)
    assert only.can_decide


def test_an_effect_no_look_can_reach_leaves_no_useful_look():
    reach = look_reach(boundaries(MAP), 1.0, 0.003, 0.003)  # an sd 300× the effect
    assert first_useful(reach) is None


def _regime_map_dry_run(tmp_path: Path, monkeypatch, **hypotheses) -> str:
    """`run --dry-run` of the published regime map on a copy of its store, with
    `hypotheses` changed as given."""
    raw = yaml.safe_load((ROOT / "configs/regime-map.yaml").read_text())
    raw["out"] = str(tmp_path / "store")
    raw["hypotheses"].update(hypotheses)
    (tmp_path / "store").mkdir()
    shutil.copy(ROOT / "results/regime-map/study.db", tmp_path / "store" / "study.db")
    path = tmp_path / "regime-map.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(ROOT)
    return format_dry_run(load_study(path, check_sources=False), retry_failed=False)


def test_dry_run_prints_each_looks_boundaries_and_the_warning(tmp_path, monkeypatch):
    text = _regime_map_dry_run(tmp_path, monkeypatch)
    assert (
        "| look 1 (5 seeds) | look 2 (10 seeds) | look 3 (15 seeds) | look 4 (20 seeds) |" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| task alpaca")]
    assert len(rows) == 7 and all(row.split("|")[5].endswith("✗ ") for row in rows)
    assert "warning: look 1 (5 seeds) at r4" in text
    assert "seeds × items" not in text  # declared in seeds: the table's sd is its own


def test_under_the_seeds_x_items_unit_the_table_says_its_sd_leaves_out_the_items(
    tmp_path, monkeypatch
):
    text = _regime_map_dry_run(tmp_path, monkeypatch, unit="seeds_x_items")
    assert "note: every group is judged in seeds × items" in text
    assert "needs a |Δ| larger than shown" in text
