"""The report side of declared hypotheses: sidedness, the Holm floor, post-hoc margins,
sequential seeds, two-level intervals, learning-rate noise and the corrected figures.

Every number the report computes here is checked against an independent computation
(scipy, statsmodels or numpy on the raw values), never against the report's own code.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from adaptive_lora.analysis.margin_tests import beyond_effect, declared_tests
from adaptive_lora.analysis.paired import compare_family
from adaptive_lora.records import ITEMS_KEY, METRIC_KEYS, RunResult, write_json
from adaptive_lora.report.answer import _declared_lines
from adaptive_lora.report.hypotheses import NONE_DECLARED
from adaptive_lora.report.write import write_report
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.sequential_seeds import cell_decisions
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

EFFECT = {"uniform": 0.0, "linear_decay": -0.03, "attention_heavy": 0.001}
N_ITEMS = 12
TOKENS = [5, 9, 3, 14, 7, 7, 11, 4, 6, 10, 8, 2]  # one count per test item, as in every run


def _unit(*parts) -> float:
    """A reproducible number in [-0.5, 0.5) from the parts (no global RNG)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 - 0.5


class Runs:
    """Fake runs: test loss = seed effect + strategy effect + noise; with `items`, the test
    loss is the token-weighted mean of per-item losses (as `run.test_item_records` says)."""

    def __init__(self, items: bool = False, without_items: tuple[str, int] | None = None):
        self.items = items
        self.without_items = without_items

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        strategy, seed, lr = config.allocation.strategy, config.seed, config.train.lr
        run_dir = Path(out_root) / run_id
        run_dir.mkdir(parents=True)
        metrics = {key: None for key in METRIC_KEYS}
        base = 2.0 + 0.02 * seed + EFFECT[strategy]
        metrics.update(
            test_loss=base + 0.006 * _unit("test", strategy, seed),
            # A rate effect smaller than the seed spread: a choice decided by noise.
            val_loss=2.1 + 0.02 * seed + 500 * (lr - 0.0015) ** 2 + 0.004 * _unit(strategy, seed, lr),
            train_seconds=1.0,
            train_loss_curve=[[1, 3.0], [2, 2.6]],
            val_loss_curve=[[0, 2.9], [2, 2.5]],
        )  # fmt: skip
        if self.items and (strategy, seed) != self.without_items:
            losses = [
                base + 0.05 * _unit("item", j) + 0.01 * _unit("cell", strategy, seed, j)
                for j in range(N_ITEMS)
            ]
            metrics[ITEMS_KEY] = {"key": [f"k{j}" for j in range(N_ITEMS)], "loss": losses,
                                  "tokens": TOKENS}  # fmt: skip
            metrics["test_loss"] = float(np.average(losses, weights=TOKENS))
        write_json(run_dir / "metrics.json", metrics)
        return RunResult(run_id, run_dir, "done", metrics, {"versions": {"torch": "x"}})


def _study(folder: Path, **changes) -> Path:
    spec = {
        "name": "hyp",
        "model": "fake/model",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
        "budgets": ["r8"],
        "strategies": ["uniform", "linear_decay", "attention_heavy"],
        "seeds": "0..5",
        "train": {"max_steps": 1},
        "out": str(folder / "study"),
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _report(folder: Path, runs: Runs | None = None, **changes):
    study = load_study(_study(folder, **changes), check_sources=False)
    executor = LocalExecutor(runs or Runs(), load_model=lambda spec: None)
    run_study(study, executor=executor, log=lambda s: None)
    study = load_study(folder / "study.yaml", check_sources=False)
    with StudyStore.open(study.store_path) as store:
        files = write_report(study, store, folder / "report", n_boot=2000)
        rows = store.rows(study.run_ids)
    return study, files, rows, json.loads(files.stats_json.read_text())


def _losses(rows, label, budget="r8"):
    return {r.seed: r.metrics["test_loss"] for r in rows if r.label == label and r.budget == budget}


# ----------------------------------------------------------------------------- hypotheses


def test_without_hypotheses_the_report_says_the_defaults_before_the_answer(tmp_path):
    _, files, _, data = _report(tmp_path)
    text = files.report_md.read_text()
    assert text.index("## Hypotheses") < text.index("## Answer")
    hypotheses = text[text.index("## Hypotheses") : text.index("## Answer")]
    assert NONE_DECLARED in hypotheses
    assert data["hypotheses"]["given"] is False
    assert {c["alternative"] for c in data["budgets"]["r8"]["comparisons"].values()} == {
        "two-sided"
    }
    # 6 seeds, two-sided: 2/2^6 = 0.03125, × 2 comparisons = 0.0625 ≥ 0.05.
    for comparison in data["budgets"]["r8"]["comparisons"].values():
        assert comparison["can_reach_significance"] is False


def test_declared_one_sided_hypotheses_decide_the_headline_tests(tmp_path):
    hypotheses = {"declared": "2026-12-01, before any run", "alternative": "less",
                  "smallest_effect": 0.01, "margin": 0.005,
                  "comparisons": {"attention_heavy": {"alternative": "two-sided"}}}  # fmt: skip
    _, files, rows, data = _report(tmp_path, hypotheses=hypotheses)
    text = files.report_md.read_text()
    section = text[text.index("## Hypotheses") : text.index("## Answer")]
    assert "Declared in the study file (2026-12-01, before any run)" in section
    assert "one-sided, strategy − uniform < 0" in section
    assert "Smallest effect of interest:** 0.01" in section and "±0.005" in section
    assert "**attention_heavy** declares its own: alternative two-sided" in section
    block = data["budgets"]["r8"]["comparisons"]
    base = _losses(rows, "uniform")
    seeds = sorted(base)
    p_t, p_w = [], []
    for label, alternative in (("linear_decay", "less"), ("attention_heavy", "two-sided")):
        mine = _losses(rows, label)
        x, y = [mine[s] for s in seeds], [base[s] for s in seeds]
        assert block[label]["alternative"] == alternative
        p_t.append(stats.ttest_rel(x, y, alternative=alternative).pvalue)
        p_w.append(stats.wilcoxon(x, y, alternative=alternative, method="exact").pvalue)
        assert block[label]["p_t"] == pytest.approx(p_t[-1], rel=1e-9)
        assert block[label]["p_wilcoxon"] == pytest.approx(p_w[-1], rel=1e-9)
    holm_t = multipletests(p_t, method="holm")[1]
    assert [block[k]["p_t_holm"] for k in ("linear_decay", "attention_heavy")] == pytest.approx(
        list(holm_t)
    )
    # One-sided with 6 seeds: 1/2^6 × 2 = 0.03125 < 0.05 can be significant; two-sided cannot.
    assert block["linear_decay"]["wilcoxon_holm_floor_p"] == pytest.approx(2 / 2**6)
    assert block["linear_decay"]["can_reach_significance"] is True
    assert block["attention_heavy"]["can_reach_significance"] is False
    assert "(one-sided p" in block["linear_decay"]["verdict"]
    assert "each with its declared sidedness" in text


# ------------------------------------------------------------------------ post-hoc margin


def _cross_budget(margin=None, declared=None):
    from adaptive_lora.report.cross_budget import cross_budget
    from adaptive_lora.study.protocol import CrossBudget

    small = {
        "uniform": {0: 1.52, 1: 1.61, 2: 1.55, 3: 1.58},
        "eva": {0: 1.50, 1: 1.60, 2: 1.55, 3: 1.57},
    }
    large = {"uniform": {0: 1.50, 1: 1.58, 2: 1.54, 3: 1.55}}
    params = {"r8": {"uniform": 8.0, "eva": 8.0}, "r16": {"uniform": 16.0}}
    spec = CrossBudget("r8", "r16", margin)
    return cross_budget(spec, "uniform", {"r8": small, "r16": large}, params,
                        declared_margin=declared), small, large  # fmt: skip


def test_a_margin_from_the_outcomes_is_flagged_and_labelled_post_hoc():
    from adaptive_lora.report.answer import answer_lines
    from adaptive_lora.report.cross_budget import verdict_lines

    block, small, large = _cross_budget()
    gain = np.mean([small["uniform"][s] - large["uniform"][s] for s in range(4)])
    assert block["margin"] == pytest.approx(gain / 2)
    assert block["margin_post_hoc"] is True
    lines = "\n".join(verdict_lines(block))
    assert "**post hoc**" in lines and "computed from the same runs it is tested against" in lines
    comparisons = compare_family(small, "uniform", n_boot=100)
    analysis = {"budgets": {"r8": {"comparisons": comparisons}}, "n_runs": 1,
                "counts": {"done": 1}, "cross_budget": block}  # fmt: skip
    assert f"±{gain / 2:.4f} (post hoc) by TOST" in "\n".join(answer_lines("uniform", analysis))
    # Fixed in advance, by the study or its hypotheses: not post hoc, and not said so.
    for margin, declared, source in ((0.01, None, "set by the study"), (None, 0.02, "hypotheses")):
        fixed, _, _ = _cross_budget(margin, declared)
        assert fixed["margin_post_hoc"] is False and source in fixed["margin_source"]
        assert fixed["margin"] == (margin or declared)
        assert "post hoc" not in "\n".join(verdict_lines(fixed))


# ------------------------------------------------------------------------ sequential seeds


def test_a_sequential_study_reports_where_each_comparison_stopped_and_why(tmp_path):
    hypotheses = {"declared": "before the runs", "margin": 0.01, "smallest_effect": 0.02}
    study, files, rows, data = _report(
        tmp_path, seeds={"min": 4, "max": 12, "step": 4}, hypotheses=hypotheses
    )
    decisions = cell_decisions(study, rows, "r8")
    stored = data["budgets"]["r8"]["sequential"]
    assert set(stored) == set(decisions) == {"linear_decay", "attention_heavy"}
    assert "declared_tests" not in data["budgets"]["r8"]  # the decisions apply them
    # A difference of 0.03 against noise of ±0.003 stops before the last look (O'Brien–
    # Fleming spends almost nothing at the first look, so it may take the second).
    decay = stored["linear_decay"]
    assert decay["decision"] == "superior" and decay["look"] < 2
    assert sorted(r.seed for r in rows if r.label == "linear_decay") == list(range(decay["n"]))
    text = files.report_md.read_text()
    assert "| comparison | decision | stopped at | reason |" in text
    look, n = decay["look"] + 1, decay["n"]
    assert (
        f"| linear_decay vs uniform | superior | look {look} ({n} seeds) | superior at look {look}"
        in text
    )
    for label, decision in decisions.items():
        assert stored[label]["reason"] == decision.reason
        assert decision.reason.replace("|", "\\|") in text
    assert "**Seeds, sequential:** up to 12 reporting seeds" in text


# ------------------------------------------------------------------- two-level intervals


def _closed_form_variance(d: np.ndarray) -> float:
    """Variance of the two-level bootstrap mean: v(r)/S + v(c)/I + mean(e²)/(S·I) for
    d_si = m + r_s + c_i + e_si (the decomposition in `analysis.hierarchical`)."""
    s, i = d.shape
    m = d.mean()
    r = d.mean(axis=1) - m
    c = d.mean(axis=0) - m
    e = d - m - r[:, None] - c[None, :]
    return float(np.mean(r**2) / s + np.mean(c**2) / i + np.mean(e**2) / (s * i))


def test_two_level_intervals_beside_the_t_interval_are_token_weighted(tmp_path):
    _, files, rows, data = _report(tmp_path, runs=Runs(items=True))
    comparison = data["budgets"]["r8"]["comparisons"]["linear_decay"]
    level = comparison["two_level"]
    assert level["n_seeds"] == 6 and level["n_items"] == N_ITEMS
    # Centred on the headline Δ: the token-weighted item losses give each seed's test loss.
    assert level["mean_diff"] == pytest.approx(comparison["mean_diff"], abs=1e-12)
    by = {(r.label, r.seed): r.metrics[ITEMS_KEY]["loss"] for r in rows if r.budget == "r8"}
    weights = np.asarray(TOKENS, float) / np.mean(TOKENS)
    d = np.array([np.subtract(by[("linear_decay", s)], by[("uniform", s)]) * weights
                  for s in range(6)])  # fmt: skip
    assert level["se"] ** 2 == pytest.approx(_closed_form_variance(d), rel=0.15)
    lo, hi = level["ci"]
    assert lo < comparison["mean_diff"] < hi
    text = files.report_md.read_text()
    assert "Δ [95% two-level interval, seeds × items]" in text
    assert "(6 seeds × 12 items)" in text
    assert "the verdict uses the t interval over seeds" in text.replace(
        "The verdict", "the verdict"
    )


def test_a_run_without_items_leaves_the_seeds_only_interval(tmp_path):
    _, files, _, data = _report(tmp_path, runs=Runs(items=True, without_items=("uniform", 3)))
    for comparison in data["budgets"]["r8"]["comparisons"].values():
        assert comparison["two_level"] is None
    assert "Intervals generalise over seeds only" in files.report_md.read_text()


# ------------------------------------------------------------------ learning-rate noise


def test_a_choice_decided_by_less_than_the_seed_noise_is_said(tmp_path):
    _, files, rows, data = _report(
        tmp_path, seeds="2..4", lr_candidates=[0.001, 0.002], lr_tuning_seeds=[0, 1], lr_extend=0
    )
    noisy = []
    for choice in data["lr_selection"]:
        values = {}
        for r in rows:
            if (r.label, r.budget) == (choice["label"], choice["budget"]) and r.seed in (0, 1):
                values.setdefault(r.lr, []).append(r.metrics["val_loss"])
        means = {lr: np.mean(v) for lr, v in values.items()}
        chosen = min(means, key=means.get)
        other = max(means, key=means.get)
        spread = choice["spread"]
        assert choice["chosen"] == chosen and spread["runner_up"] == other
        assert spread["gap"] == pytest.approx(means[other] - means[chosen])
        assert spread["seed_sd"] == pytest.approx(np.std(values[chosen], ddof=1))
        assert spread["within_noise"] is bool(spread["gap"] < spread["seed_sd"])
        if spread["within_noise"]:
            noisy.append(choice["label"])
    assert noisy  # the seed effect (0.02 per seed) dwarfs the rate effect
    text = files.report_md.read_text()
    assert f"**{len(noisy)} of 3 choices were decided by less than the seed noise**" in text
    assert {p.name for p in files.figures} >= {"lr_curves.png", "lr_curves.svg"}


# -------------------------------------------------------------------- figures and timing


def test_adalora_is_drawn_at_its_start_and_its_end_with_its_seed():
    from adaptive_lora.report.figures import _allocation_panels
    from adaptive_lora.study.store import RunRow

    modules = [{"name": f"model.layers.{i}.self_attn.q_proj", "layer": i, "kind": "q", "rank": 8}
               for i in range(2)]  # fmt: skip
    metrics = {
        "allocation_modules": modules,
        "initial_ranks": {m["name"]: 12 for m in modules},
        "final_ranks": {f"base_model.model.{m['name']}": 3 + i for i, m in enumerate(modules)},
    }
    row = RunRow("a", 0, "adalora", "adalora", "r8", 2, 1e-3, "done", None, {}, metrics)
    block = {"strategies": {"adalora": {"run_ids": ["a"]}}}
    panels, final = _allocation_panels(None, "adalora", "r8", block, {"a": row})
    assert [p[0] for p in panels] == ["adalora initial @ r8, seed 2", "adalora final @ r8, seed 2"]
    assert set(panels[0][2].values()) == {12} and sorted(panels[1][2].values()) == [3.0, 4.0]
    assert final == [panels[1]]


def test_two_evaluations_are_drawn_as_points_and_say_so():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptive_lora.report.figures import _panel_curves
    from adaptive_lora.study.store import RunRow

    class Study:
        labels = ["uniform"]

    row = RunRow("a", 0, "uniform", "uniform", "r8", 2, 1e-3, "done", None, {},
                 {"val_loss_curve": [[0, 2.9], [50, 2.5]]})  # fmt: skip
    fig, ax = plt.subplots()
    block = {"strategies": {"uniform": {"run_ids": ["a"]}}}
    note = _panel_curves(ax, Study(), block, {"a": row}, "val_loss_curve", "validation loss")
    assert "evaluated at step(s) 0, 50 only: points, not a curve" in note
    assert all(line.get_linestyle() == "None" for line in ax.get_lines())
    plt.close(fig)


def test_stretches_are_the_pieces_of_the_union_of_run_intervals():
    from adaptive_lora.report.timing import compute_time
    from adaptive_lora.study.store import RunRow

    def row(i, start, end):
        return RunRow(f"r{i}", i, "u", "u", "r8", 0, 1e-3, "done", None, {}, seconds=1.0,
                      started_at=f"2026-11-30T{start}+00:00", ended_at=f"2026-11-30T{end}+00:00")  # fmt: skip

    # Two runs 6 s apart are two stretches (a tolerance once merged them); touching is one.
    timing = compute_time([row(0, "01:00:00", "01:10:00"), row(1, "01:10:06", "01:20:00"),
                           row(2, "01:20:00", "01:30:00")])  # fmt: skip
    assert timing["stretches"] == 2
    assert timing["wall_seconds"] == pytest.approx(30 * 60 - 6)
    assert math.isclose(timing["run_seconds"], 3.0)


# ------------------------------------------------- fixed seeds: the declared effect and margin


def test_fixed_seeds_test_the_declared_smallest_effect_and_margin(tmp_path):
    # linear_decay sits 0.03 below uniform: beyond a smallest effect of 0.01 (one-sided,
    # Holm over the two one-sided comparisons), and not within ±0.005; attention_heavy is
    # two-sided (no direction to shift), so it gets TOST only.
    hypotheses = {"declared": "2026-12-08, before any run", "alternative": "less",
                  "smallest_effect": 0.01, "margin": 0.005,
                  "comparisons": {"attention_heavy": {"alternative": "two-sided"}}}  # fmt: skip
    _, files, rows, data = _report(tmp_path, hypotheses=hypotheses)
    declared = data["budgets"]["r8"]["declared_tests"]
    base = _losses(rows, "uniform")
    diffs = {
        label: np.array([_losses(rows, label)[s] - base[s] for s in sorted(base)])
        for label in ("linear_decay", "attention_heavy")
    }
    beyond = declared["linear_decay"]["beyond"]
    want = stats.ttest_1samp(diffs["linear_decay"] + 0.01, 0.0, alternative="less")
    assert beyond["t"] == pytest.approx(want.statistic, rel=1e-9)
    assert beyond["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert beyond["p_holm"] == pytest.approx(want.pvalue, rel=1e-9)  # the only shifted test
    assert beyond["shown"] is True
    assert declared["attention_heavy"]["beyond"] is None
    for label, d in diffs.items():
        p_tost = ttost_paired(d, np.zeros_like(d), -0.005, 0.005)[0]
        assert declared[label]["tost"]["p"] == pytest.approx(p_tost, rel=1e-9)
    assert declared["linear_decay"]["tost"]["equivalent"] is False
    text = files.report_md.read_text()
    answer = text[text.index("## Answer") : text.index("## Status")]
    assert (
        "As declared, linear_decay: a difference beyond the declared smallest effect 0.01 is "
        "shown" in answer
    )
    assert "As declared, attention_heavy: " in answer and "within the declared ±0.005" in answer
    # Read back from stats.json (NaN written as null), a test without a p-value is left out.
    untested = json.loads(json.dumps({"x": {"beyond": {"p": None}, "tost": {"p": None}}}))
    assert _declared_lines(untested) == []


def test_a_shifted_test_is_scipys_in_both_directions_and_holm_is_statsmodels():
    rng = np.random.default_rng(4)
    d = {
        "a": list(0.02 + 0.01 * rng.standard_normal(9)),
        "b": list(0.004 + 0.01 * rng.standard_normal(9)),
    }
    got = declared_tests(d, {"a": ("greater", 0.01, None), "b": ("greater", 0.01, None)})
    pvalues = []
    for label in ("a", "b"):
        want = stats.ttest_1samp(np.array(d[label]) - 0.01, 0.0, alternative="greater")
        assert got[label]["beyond"]["p"] == pytest.approx(want.pvalue, rel=1e-9)
        assert got[label]["tost"] is None
        pvalues.append(want.pvalue)
    holm_p = multipletests(pvalues, method="holm")[1]
    assert [got[k]["beyond"]["p_holm"] for k in ("a", "b")] == pytest.approx(list(holm_p), rel=1e-9)
    assert math.isnan(beyond_effect([0.1], 0.01, "less")["p"])  # one difference: no test
    with pytest.raises(ValueError):
        beyond_effect([0.1, 0.2], 0.01, "two-sided")


def test_studies_that_declare_no_effect_or_margin_get_no_declared_tests(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "sided").mkdir()
    _, _, _, plain = _report(tmp_path / "plain")
    assert "declared_tests" not in plain["budgets"]["r8"]
    only_sidedness = {"declared": "2026-12-08", "alternative": "less"}
    _, files, _, sided = _report(tmp_path / "sided", hypotheses=only_sidedness)
    assert "declared_tests" not in sided["budgets"]["r8"]
    assert "As declared" not in files.report_md.read_text()
