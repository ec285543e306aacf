"""The inference unit seeds × items: the items' part of a mean's variance (issue 38, item 3)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from fake_runs import FakeRuns
from statsmodels.formula.api import ols

from adaptive_lora.analysis.item_variance import (
    item_share_by_look,
    item_variance_of_mean,
    two_way_mean_squares,
)
from adaptive_lora.analysis.sequential import (
    DECISIONS,
    SequentialDesign,
    decide_matrix,
    sequential_decisions,
)
from adaptive_lora.errors import UserError


def test_the_mean_squares_are_statsmodels_two_way_anova():
    rng = np.random.default_rng(3)
    table = rng.standard_normal((6, 9)) + rng.standard_normal((1, 9)) + rng.standard_normal((6, 1))
    seeds, items = np.meshgrid(range(6), range(9), indexing="ij")
    frame = pd.DataFrame({"d": table.ravel(), "seed": seeds.ravel(), "item": items.ravel()})
    anova = sm.stats.anova_lm(ols("d ~ C(seed) + C(item)", data=frame).fit())
    ms = anova["sum_sq"] / anova["df"]
    got = two_way_mean_squares(table)
    assert got == pytest.approx((ms["C(seed)"], ms["C(item)"], ms["Residual"]), rel=1e-10)


def test_seeds_plus_items_estimates_the_variance_of_the_mean_where_seeds_alone_do_not():
    # d_si = a_s + b_i + e_si with the items fixed for a study: Var(D̄) = σa²/S + σb²/I + σe²/SI.
    rng = np.random.default_rng(11)
    n_seeds, n_items, sa, sb, se, studies = 8, 40, 1.0, 2.0, 3.0, 4000
    truth = sa**2 / n_seeds + sb**2 / n_items + se**2 / (n_seeds * n_items)
    means, seeds_only, both = [], [], []
    for _ in range(studies):
        d = (
            sa * rng.standard_normal((n_seeds, 1))
            + sb * rng.standard_normal((1, n_items))
            + se * rng.standard_normal((n_seeds, n_items))
        )
        seed_part = d.mean(axis=1).var(ddof=1) / n_seeds
        means.append(d.mean())
        seeds_only.append(seed_part)
        both.append(seed_part + item_variance_of_mean(d))
    assert np.var(means) == pytest.approx(truth, rel=0.06)  # the simulation itself
    assert np.mean(both) == pytest.approx(truth, rel=0.06)
    assert np.mean(seeds_only) < 0.75 * truth  # the items' share is missed


def test_no_estimate_from_too_little_or_broken_data():
    assert np.isnan(item_variance_of_mean(np.ones((1, 5))))
    assert np.isnan(item_variance_of_mean(np.ones((4, 1))))
    assert np.isnan(item_variance_of_mean(np.array([[1.0, np.nan], [2.0, 3.0]])))
    assert item_variance_of_mean(np.ones((3, 4))) == 0.0
    looks = item_share_by_look(np.random.default_rng(0).standard_normal((6, 5)), (3, 6, 9))
    assert np.isfinite(looks[:2]).all() and np.isnan(looks[2])


def test_a_shared_item_offset_decides_on_seeds_alone_but_not_on_seeds_times_items():
    rng = np.random.default_rng(5)
    design = SequentialDesign(looks=(5, 10), alpha=0.05)
    items = 1.5 * rng.standard_normal(30)  # a few items carry the difference
    items -= items.mean() + 0.4  # the items' mean favours the strategy by 0.4
    table = items[None, :] + 0.05 * rng.standard_normal((10, 30))
    diffs = {"s": table.mean(axis=1)}
    by_seeds = sequential_decisions(diffs, 1, design)["s"]
    by_both = sequential_decisions(diffs, 1, design, item_tables={"s": table})["s"]
    assert by_seeds.decision == "superior"
    assert by_both.decision != "superior" and abs(by_both.t) < abs(by_seeds.t)
    assert by_seeds.n == 5 and by_both.n == 10  # one look decides, the other goes on


def test_the_seeds_times_items_unit_keeps_its_error_with_one_test_set_for_all_seeds():
    # One null comparison per study; the items' share is as large as the seeds'.
    rng = np.random.default_rng(2026)
    design = SequentialDesign(looks=(4, 8, 12), alpha=0.05)
    studies, n_items = 1500, 30
    tables = (
        np.sqrt(0.5) * rng.standard_normal((studies, 12, 1))
        + np.sqrt(n_items) * rng.standard_normal((studies, 1, n_items))
        + np.sqrt(0.5 * n_items) * rng.standard_normal((studies, 12, n_items))
    )
    diffs = tables.mean(axis=2)
    item_var = np.array([item_share_by_look(t, design.looks) for t in tables])
    claims = [DECISIONS.index("superior"), DECISIONS.index("inferior")]
    seeds_error = np.isin(decide_matrix(diffs, design, 1)["code"], claims).mean()
    both_error = np.isin(decide_matrix(diffs, design, 1, item_var=item_var)["code"], claims).mean()
    assert seeds_error > 0.15  # the items' offset is claimed as an effect
    assert both_error <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / studies)


# A study whose runs carry per-item records (fake runs, no model): linear_decay's mean
# advantage lives on a few of 8 shared test items, so seeds alone see it at once while
# seeds × items (the items' spread does not shrink with seeds) cannot claim it.
ITEM_EFFECTS = {
    "uniform": [0.0] * 8,
    "linear_decay": [-0.60, 0.25, 0.20, -0.55, 0.15, 0.10, 0.05, 0.0],  # mean −0.05
    "attention_heavy": [0.0] * 8,
}


class ItemEffects(FakeRuns):
    """Fake runs with per-item test losses: each strategy's effect item by item."""

    def metrics(self, config):
        from adaptive_lora.records import ITEMS_KEY

        strategy = config.allocation.strategy
        noise = np.random.default_rng([config.seed, len(strategy)]).normal(0, 0.001, 8)
        losses = [2.0 + 0.01 * config.seed + e + z for e, z in zip(ITEM_EFFECTS[strategy], noise)]
        items = {"key": [f"k{i}" for i in range(8)], "loss": losses, "tokens": [5] * 8}
        return {"test_loss": float(np.mean(losses)), ITEMS_KEY: items}


def _item_study(tmp_path: Path, **hypotheses) -> Path:
    spec = {
        "name": "units",
        "model": "fake/model",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 8, "max_length": 32},
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay", "attention_heavy"],
        "seeds": {"min": 4, "max": 8, "step": 4},
        "hypotheses": {"declared": "in the test, before the runs", "smallest_effect": 0.02,
                       **hypotheses},
        "train": {"max_steps": 1},
        "out": str(tmp_path / "out"),
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_and_decide(path: Path):
    from adaptive_lora.study.local import LocalExecutor
    from adaptive_lora.study.runner import run_study
    from adaptive_lora.study.sequential_seeds import cell_decisions
    from adaptive_lora.study.spec import load_study
    from adaptive_lora.study.store import StudyStore

    fake = ItemEffects()
    study = load_study(path, check_sources=False)
    run_study(study, executor=LocalExecutor(fake, load_model=lambda s: None), log=lambda x: None)
    study = load_study(path, check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        rows = store.rows()
    return fake, cell_decisions(study, rows, "r4")


def test_a_fixed_split_decides_in_seeds_times_items_by_default_and_names_the_other_unit(
    tmp_path,
):
    fake, decisions = _run_and_decide(_item_study(tmp_path))
    mine = decisions["linear_decay"]
    assert mine.unit == "seeds_x_items" and mine.decision != "superior"
    assert mine.other_unit_decision == "superior"  # seeds alone would have claimed it
    assert len(fake.seeds["linear_decay"]) == 8  # so it was given the second block


def test_a_declared_seeds_unit_stops_at_once_and_says_what_seeds_times_items_would_say(
    tmp_path,
):
    from adaptive_lora.report.hypotheses import sequential_lines
    from adaptive_lora.report.regime import unit_tail

    fake, decisions = _run_and_decide(_item_study(tmp_path, unit="seeds"))
    mine = decisions["linear_decay"]
    assert mine.unit == "seeds" and mine.decision == "superior" and mine.look == 0
    assert mine.other_unit_decision == "continue"
    assert sorted(fake.seeds["linear_decay"]) == [0, 1, 2, 3]
    as_stored = {"linear_decay": dataclasses.asdict(mine)}
    assert unit_tail(as_stored["linear_decay"]) == "; judged by seeds × items it would be open"
    row = sequential_lines("uniform", as_stored)[-2]
    assert "unit: seeds (by seeds × items: continue)" in row


def test_an_unknown_unit_is_refused_in_one_line(tmp_path):
    from adaptive_lora.study.spec import load_study

    with pytest.raises(UserError, match="hypotheses.unit must be seeds or seeds_x_items"):
        load_study(_item_study(tmp_path, unit="items"), check_sources=False)
