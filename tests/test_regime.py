"""The regime map's gain per doubling, checked against scipy on made-up ladders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from adaptive_lora.analysis.jsonable import to_jsonable
from adaptive_lora.analysis.ladder import gain_per_doubling
from adaptive_lora.analysis.paired import compare_family
from adaptive_lora.report.regime import heatmap_cells, regime_map


def _ladder(slope: float, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = [100_000, 200_000, 400_000, 1_600_000]  # the last step is two doublings
    seeds = range(6)
    offsets = {s: rng.normal(0, 0.01) for s in seeds}
    series = []
    for p in params:
        values = {s: 2.0 + offsets[s] - slope * math.log2(p) + rng.normal(0, noise) for s in seeds}
        series.append({"budget": f"{p}", "params": float(p), "test_loss": {"values": values},
                       "metrics": {}})  # fmt: skip
    return series


def test_the_overall_gain_is_the_mean_of_per_seed_least_squares_slopes():
    series = _ladder(slope=0.01, noise=0.002)
    gain = gain_per_doubling(series).overall
    x = np.log2([s["params"] for s in series])
    slopes = [
        -stats.linregress(x, [s["test_loss"]["values"][seed] for s in series]).slope
        for seed in range(6)
    ]
    low, high = stats.t.interval(0.95, len(slopes) - 1, np.mean(slopes), stats.sem(slopes))
    assert gain.mean == pytest.approx(np.mean(slopes), rel=1e-9)
    assert gain.ci_t == pytest.approx([low, high], rel=1e-9)
    assert gain.sd == pytest.approx(np.std(slopes, ddof=1), rel=1e-9)
    assert gain.established


def test_each_step_is_paired_by_seed_and_scaled_to_one_doubling():
    series = _ladder(slope=0.01, noise=0.002)
    last = gain_per_doubling(series).steps[-1]
    assert last.doublings == pytest.approx(2.0)
    diffs = [(series[2]["test_loss"]["values"][s] - series[3]["test_loss"]["values"][s]) / 2
             for s in range(6)]  # fmt: skip
    result = stats.ttest_1samp(diffs, 0.0)
    assert last.mean == pytest.approx(np.mean(diffs))
    low, high = result.confidence_interval(0.95)
    assert last.ci_t == pytest.approx([low, high], rel=1e-9)


def test_no_gain_is_not_established():
    flat = gain_per_doubling(_ladder(slope=0.0, noise=0.002, seed=3)).overall
    assert flat.ci_t[0] < 0 < flat.ci_t[1] and not flat.established


def test_the_map_reads_the_baseline_of_each_group_and_the_cells_every_comparison():
    def analysis(loss_by_budget):
        return {"budgets": {
            b: {"strategies": {"uniform": {"test_loss": {"values": v, "mean": 0, "ci_t": [0, 0], "n": 2},
                                           "effective_params": {"mean": p}}},
                "comparisons": {"uniform": {}, **compare_family({"uniform": v, "spectral": v}, "uniform",
                                                                n_boot=10)},
                "secondary": {}}
            for b, (p, v) in loss_by_budget.items()}}  # fmt: skip

    analyses = {"g": analysis({"r2": (200.0, {0: 2.0, 1: 2.1}), "r1": (100.0, {0: 2.2, 1: 2.2})})}
    regime = regime_map(analyses, {"g": "task `a`"}, "uniform")
    assert [p["budget"] for p in regime[0]["ladder"]] == ["r1", "r2"]  # ordered by parameters
    cells = heatmap_cells(analyses, {"g": "task `a`"}, "uniform")
    assert [(c["budget"], c["strategy"]) for c in cells] == [("r2", "spectral"), ("r1", "spectral")]


def test_the_ladder_figure_draws_a_panel_per_group_from_stats_json(tmp_path):
    """Read back from `stats.json` a one-seed budget has a null interval: drawn without a
    bar; a group with no ladder yet gets no panel."""
    import json

    from matplotlib import pyplot as plt

    from adaptive_lora.report.regime import draw_regime

    series = _ladder(slope=0.01, noise=0.002)
    for point in series:
        values = list(point["test_loss"]["values"].values())
        low, high = stats.t.interval(0.95, len(values) - 1, np.mean(values), stats.sem(values))
        point["test_loss"].update(mean=float(np.mean(values)), ci_t=[low, high])
    one_seed = [{"budget": "r1", "params": 1e5, "metrics": {},
                 "test_loss": {"values": {"1": 2.0}, "mean": 2.0, "ci_t": [None, None]}}]  # fmt: skip
    regime = [
        {"title": "task `a`", "ladder": series, "gain_per_doubling": gain_per_doubling(series)},
        {"title": "task `b`", "ladder": one_seed, "gain_per_doubling": gain_per_doubling(one_seed)},
        {"title": "task `c`", "ladder": [], "gain_per_doubling": gain_per_doubling([])},
    ]
    regime = json.loads(json.dumps(to_jsonable(regime)))  # as `report` writes and a reader loads it
    drawn = []
    real_save = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (drawn.append(fig), real_save(fig, *a, **k))[1]
    try:
        paths = draw_regime(regime, [], tmp_path)
    finally:
        plt.Figure.savefig = real_save
    assert [p.name for p in paths] == ["regime_ladder.png", "regime_ladder.svg"]
    panels = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert [ax.get_title().splitlines()[0] for ax in panels] == ["task a", "task b"]
    assert panels[0].get_title().endswith(", established")
    assert "no paired seeds yet" in panels[1].get_title()


def test_the_answer_says_each_sequential_decision_where_rank_binds():
    """With sequential seeds the Answer groups the comparisons of the binding groups by
    their design's decision (beats, matches, loses, ...), each with Δ, interval and seeds;
    comparisons in groups where rank does not bind are left out of it."""
    from adaptive_lora.report.regime import answer_lines

    steep = _ladder(slope=0.01, noise=0.002)
    flat = _ladder(slope=0.0, noise=0.002, seed=3)
    regime = [
        {"group": "g1", "title": "task `a`", "ladder": steep, "gain_per_doubling": gain_per_doubling(steep)},
        {"group": "g2", "title": "task `b`", "ladder": flat, "gain_per_doubling": gain_per_doubling(flat)},
    ]  # fmt: skip

    def cell(group, strategy, decision, diff):
        return {"group": group, "title": "t", "budget": "r2", "strategy": strategy, "n": 10,
                "mean_diff": diff, "ci_t": [diff - 0.001, diff + 0.001], "d_z": 1.0,
                "p_t_holm": 0.5, "significant": False, "decision": decision}  # fmt: skip

    cells = [cell("g1", "eva", "superior", -0.004), cell("g1", "random", "equivalent", 0.0002),
             cell("g1", "spectral", "continue", 0.001), cell("g2", "linear_decay", "inferior", 0.01)]  # fmt: skip
    text = "\n".join(answer_lines(regime, cells, "uniform"))
    assert "3 comparison(s) with `uniform`" in text and "linear_decay" not in text
    beats = text.index("beats `uniform`: eva at r2 in t (Δ −0.0040 [−0.0050, −0.0030], n = 10)")
    matches = text.index("matches `uniform` (equivalent within the declared margin): random")
    assert beats < matches < text.index("still open (more seeds to come): spectral")
    assert "loses to" not in text  # no comparison there was decided inferior


def test_a_budget_of_unknown_size_is_no_rung_and_equal_sizes_make_no_step():
    series = _ladder(slope=0.01, noise=0.002)
    unknown = {**series[1], "budget": "?", "params": math.nan}
    gains = gain_per_doubling([series[0], unknown, *series[1:]])
    assert [(s.from_, s.to) for s in gains.steps] == [
        (a["budget"], b["budget"]) for a, b in zip(series, series[1:])
    ]
    assert gains.overall == gain_per_doubling(series).overall
    same = {**series[0], "budget": "twin"}
    gains = gain_per_doubling([series[0], same])
    assert gains.steps == [] and gains.overall.n == 0
    assert gain_per_doubling([unknown, unknown]).overall.n == 0


def test_a_map_of_the_baseline_alone_never_asks_about_allocation():
    from adaptive_lora.report.regime import answer_lines

    steep = _ladder(slope=0.01, noise=0.002)
    regime = [{"group": "g1", "title": "t", "ladder": steep,
               "gain_per_doubling": gain_per_doubling(steep)}]  # fmt: skip
    alone = "\n".join(answer_lines(regime, [], "uniform", baseline_only=True))
    assert "established in: t" in alone
    assert "Not asked here: this study runs `uniform` alone" in alone and "yet" not in alone
    # A study with strategies whose runs have not come in yet still says so.
    waiting = "\n".join(answer_lines(regime, [], "uniform"))
    assert "No strategy has paired results there yet." in waiting
