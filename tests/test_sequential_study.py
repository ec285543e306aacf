"""Sequential seeds in a study: blocks of seeds, comparisons stopped when decided."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from fake_runs import FakeRuns

from adaptive_lora.errors import UserError
from adaptive_lora.records import RunResult
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.sequential_seeds import cell_decisions
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

# Strategy → its true difference from uniform in test loss; the noise is per seed.
EFFECTS = {"uniform": 0.0, "linear_decay": -0.05, "attention_heavy": 0.0}


def _noise(strategy: str, seed: int) -> float:
    digest = hashlib.sha256(f"{strategy}:{seed}".encode()).digest()
    return (int.from_bytes(digest[:4], "little") / 2**32 - 0.5) * 0.004


class Effects(FakeRuns):
    """Fake runs with a known effect per strategy (quickstart-sized, no model)."""

    def metrics(self, config):
        strategy, seed = config.allocation.strategy, config.seed
        return {"test_loss": 2.0 + 0.01 * seed + EFFECTS[strategy] + _noise(strategy, seed)}


def _study(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "seq",
        "model": "fake/model",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay", "attention_heavy"],
        "seeds": {"min": 4, "max": 12, "step": 4},
        "hypotheses": {"declared": "in the test, before the runs", "margin": 0.01,
                       "smallest_effect": 0.02},
        "train": {"max_steps": 1},
        "out": str(tmp_path / "out"),
        **changes,
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_sequential_study_stops_a_decided_comparison_early(tmp_path):
    path = _study(tmp_path)
    study = load_study(path, check_sources=False)
    assert study.seed_plan.looks == (4, 8, 12) and study.seeds == list(range(12))
    # Before any run only the first block of seeds is expanded.
    assert sorted({s.seed for s in study.runs}) == [0, 1, 2, 3]
    fake = Effects()
    run_study(study, executor=LocalExecutor(fake, load_model=lambda s: None), log=lambda x: None)
    # A clear difference (0.05 against noise of ±0.002) stops at the first look; the null
    # comparison goes on to later looks.
    assert sorted(fake.seeds["linear_decay"]) == [0, 1, 2, 3]
    assert len(fake.seeds["attention_heavy"]) > 4
    assert sorted(fake.seeds["uniform"]) == sorted(fake.seeds["attention_heavy"])
    study = load_study(path, check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        rows = store.rows()
    decisions = cell_decisions(study, rows, "r4")
    assert decisions["linear_decay"].decision == "superior" and decisions["linear_decay"].look == 0
    assert decisions["attention_heavy"].decision in ("equivalent", "futile", "inconclusive")
    assert "look" in decisions["linear_decay"].reason


def test_status_says_where_each_comparison_of_a_sequential_study_stands(tmp_path):
    """Before any run every comparison waits for its first look; after the study the
    clear effect is decided at look 1 and the null one at a later look (or still open
    at the last), each with its Δ, seeds and unit, as the decisions themselves say."""
    from adaptive_lora.study.status import format_status

    path = _study(tmp_path)
    before = format_status(load_study(path, check_sources=False))
    assert (
        "sequential looks:\n  r4: linear_decay vs uniform: first look (4 seeds) still to come\n"
        in before
    )
    run_study(
        load_study(path, check_sources=False),
        executor=LocalExecutor(Effects(), load_model=lambda s: None),
        log=lambda x: None,
    )
    study = load_study(path, check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        decisions = cell_decisions(study, store.rows(), "r4")
    after = format_status(study)
    for label, d in decisions.items():
        state = f"{d.decision} at look {d.look + 1}" if d.stopped else "open"
        said = f"Δ {d.mean:+.4f} at {d.n} seeds, judged by seeds"
        assert f"  r4: {label} vs uniform: {state} ({said}" in after, after
    assert "r4: linear_decay vs uniform: superior at look 1 (Δ -0.05" in after
    fixed = load_study(_study(_folder(tmp_path / "fixed"), seeds=[0, 1]), check_sources=False)
    assert "sequential looks" not in format_status(fixed)


def test_seed_plans_and_hypotheses_are_validated(tmp_path):
    bad = [
        ({"seeds": {"min": 4, "max": 2, "step": 2}}, "seeds.max"),
        ({"seeds": {"min": 4, "max": 8, "stride": 2}}, "unknown key"),
        ({"hypotheses": {"alternative": "smaller"}}, "hypotheses.alternative"),
        ({"hypotheses": {"margin": -1}}, "hypotheses.margin"),
        ({"hypotheses": {"comparisons": {"nope": {}}}}, "not a compared strategy"),
    ]
    for changes, message in bad:
        with pytest.raises(UserError, match=message):
            load_study(_study(tmp_path, **changes), check_sources=False)


ROOT = Path(__file__).resolve().parents[1]


def test_plan_prints_the_seeds_each_r8_comparison_needs(monkeypatch, capsys):
    from adaptive_lora.cli import main

    monkeypatch.chdir(ROOT)
    args = ["plan", "configs/alpaca-smollm2.yaml", "--smallest-effect", "0.002"]
    assert main([*args, "--margin", "0.0005"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| model smollm2-135m | r8 |")]
    assert len(table) == 8  # every strategy against uniform at r8
    # 8 seeds, Holm over 8: the exact Wilcoxon floor 1/128 × 8 = 0.0625 cannot reach 0.05.
    assert all("no (floor × m = 0.0625)" in line for line in table)
    assert "TOST at ±0.0005" in out and "8 planned" in out


def test_plan_needs_a_stated_effect_or_margin(monkeypatch, capsys):
    from adaptive_lora.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["plan", "configs/alpaca-smollm2.yaml"]) == 2
    assert "smallest effect" in capsys.readouterr().err


class Ladder(FakeRuns):
    """Fake uniform runs whose test loss falls by 0.01 per doubling of rank, with noise."""

    def metrics(self, config):
        import math

        rank = int(config.allocation.budget[1:])
        return {
            "test_loss": 2.0 - 0.01 * math.log2(rank) + 5 * _noise(str(rank), config.seed),
            "effective_params": 1000 * rank,
        }


def test_plan_gives_the_seeds_to_establish_the_baselines_gain_per_doubling(tmp_path, capsys):
    """The ladder's sd is that of scipy's per-seed least-squares slopes; the seeds are
    statsmodels' t-test solution for gain / sd, rounded up."""
    import math

    import numpy as np
    from scipy import stats
    from statsmodels.stats.power import TTestPower

    from adaptive_lora.cli import main
    from adaptive_lora.study.power_plan import plan_ladder

    path = _study(tmp_path, budgets=["r1", "r2", "r4", "r8"], strategies=["uniform"],
                  seeds="0..5", hypotheses=None)  # fmt: skip
    study = load_study(path, check_sources=False)
    run_study(
        study, executor=LocalExecutor(Ladder(), load_model=lambda s: None), log=lambda x: None
    )
    with StudyStore.open(study.store_path, create=False) as store:
        rows = store.rows()
    plans = plan_ladder(study, load_study(path, check_sources=False), rows, gain=0.004)
    overall = plans[0]
    assert overall.span == "r1 → r8 (slope)" and overall.n_pilot == 6
    x = np.log2([1000, 2000, 4000, 8000])
    slopes = [
        -stats.linregress(x, [r.metrics["test_loss"] for r in sorted(
            (r for r in rows if r.seed == seed), key=lambda r: r.metrics["effective_params"])]).slope
        for seed in range(6)
    ]  # fmt: skip
    assert overall.mean == pytest.approx(np.mean(slopes), rel=1e-9)
    assert overall.sd == pytest.approx(np.std(slopes, ddof=1), rel=1e-9)
    needed = TTestPower().solve_power(effect_size=0.004 / overall.sd, alpha=0.05, power=0.8)
    assert overall.plan["t_seeds"] == math.ceil(needed - 1e-9)
    assert [p.span for p in plans[1:]] == ["r1 → r2", "r2 → r4", "r4 → r8"]
    assert main(["plan", str(path), "--gain-per-doubling", "0.004"]) == 0
    out = capsys.readouterr().out
    assert "| r1 → r8 (slope) |" in out and "establish 0.004 per doubling" in out
    assert main(["plan", str(path), "--gain-per-doubling", "-1"]) == 2


def test_a_strategy_the_pilot_never_ran_is_planned_from_the_baselines_paired_budgets(tmp_path):
    """Without the strategy's own pairs, the baseline's paired differences between the
    budget and its nearest neighbour stand in (same seeds, same data order)."""
    import numpy as np

    from adaptive_lora.study.power_plan import plan_study

    pilot_path = _study(tmp_path, budgets=["r2", "r4", "r8"], strategies=["uniform"],
                        seeds="0..5", hypotheses=None)  # fmt: skip
    rows = _ran_with_ladder(pilot_path)
    stage2 = load_study(
        _study(_folder(tmp_path / "s2"), budgets=["r2", "r4", "r8"], seeds="0..5", hypotheses=None,
               strategies=["uniform", {"name": "linear_decay", "budgets": ["r4"]}]),
        check_sources=False,
    )  # fmt: skip
    pilot = load_study(pilot_path, check_sources=False)
    [plan] = plan_study(stage2, pilot, rows, smallest_effect=0.01, margin=None)
    loss = {(r.budget, r.seed): r.metrics["test_loss"] for r in rows}
    diffs = [loss[("r4", s)] - loss[("r2", s)] for s in range(6)]  # r2 is listed first
    assert plan.source == "assumed: the baseline's r4 − r2 paired by seed (6 pairs)"
    assert plan.sd == pytest.approx(np.std(diffs, ddof=1), rel=1e-9)


@pytest.mark.parametrize("split", ["test_first", "per_seed"])
def test_without_pairs_the_baselines_seed_sd_stands_in_only_on_a_shared_test_set(tmp_path, split):
    """No pilot pairs and no neighbouring budget: on one test set for every seed, √2 × the
    baseline's seed sd stands in; with per-seed splits it does not, since that sd carries
    each seed's own test items, which a pair cancels (it overstated A1's paired sd 8-fold)."""
    import numpy as np

    from adaptive_lora.study.power_plan import plan_study

    data = {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32,
            "split": split}  # fmt: skip
    pilot_path = _study(tmp_path, strategies=["uniform"], seeds="0..5", hypotheses=None, data=data)
    rows = _ran_with_ladder(pilot_path)
    stage2 = load_study(
        _study(_folder(tmp_path / "s2"), strategies=["uniform", "linear_decay"], seeds="0..5",
               hypotheses=None, data=data),
        check_sources=False,
    )  # fmt: skip
    [plan] = plan_study(stage2, load_study(pilot_path, check_sources=False), rows,
                        smallest_effect=0.01, margin=None)  # fmt: skip
    if split == "per_seed":
        assert np.isnan(plan.sd) and "per-seed splits" in plan.source and not plan.plan
    else:
        losses = [r.metrics["test_loss"] for r in rows]
        assert plan.sd > 0 and plan.sd == pytest.approx(
            np.sqrt(2) * np.std(losses, ddof=1), rel=1e-9
        )
        assert plan.source == "assumed: √2 × the baseline's seed sd (6 seeds)"


def _ran_with_ladder(path: Path) -> list:
    """Run the study at `path` on the fake `Ladder` runs; its stored rows."""
    study = load_study(path, check_sources=False)
    run_study(
        study, executor=LocalExecutor(Ladder(), load_model=lambda s: None), log=lambda x: None
    )
    with StudyStore.open(study.store_path, create=False) as store:
        return store.rows()


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_dry_run_counts_the_first_looks_runs_to_come_and_says_the_most(tmp_path):
    """Tuning still to choose every rate: the reporting runs to come are the first look's
    (3 strategies × 4 seeds), up to the last look's (× 12) if every look goes on; a study of
    the baseline alone has one look only, so no "up to"."""
    from adaptive_lora.cli.run import format_dry_run

    tuned = {"lr_candidates": [0.001, 0.002], "lr_tuning_seeds": [0], "lr_extend": 0}
    study = load_study(_study(tmp_path, **tuned), check_sources=False)
    text = format_dry_run(study, retry_failed=False)
    assert "then 12 reporting run(s) at the first look (up to 36 if every look goes on)" in text
    assert "6 would run" in text and "18 run(s) in all" in text
    alone = load_study(_study(tmp_path, strategies=["uniform"], **tuned), check_sources=False)
    text = format_dry_run(alone, retry_failed=False)
    assert "then 4 reporting run(s), once the tuning seeds [0]" in text and "up to" not in text


class FirstLookOnly(Effects):
    """Fake runs whose later looks fail, so the study stops past its first look."""

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        if config.seed >= 4:
            run_dir = Path(out_root) / run_id
            run_dir.mkdir(parents=True)
            return RunResult(run_id, run_dir, "failed", {}, {}, "stopped for the test")
        return super().__call__(config, out_root, run_id=run_id, loaded=loaded, quiet=quiet)


def test_past_the_first_look_the_dry_run_counts_the_looks_still_open(tmp_path):
    """linear_decay is decided at the first look (4 seeds), attention_heavy goes on: the
    second look's 8 runs are expanded (failed here), and every look going on would add
    12 − 8 = 4 seeds to attention_heavy and to uniform, none to the decided linear_decay."""
    from adaptive_lora.cli.run import format_dry_run
    from adaptive_lora.study.plan import current_rows, open_store_if_any

    path = _study(tmp_path)
    executor = LocalExecutor(FirstLookOnly(), load_model=lambda s: None)
    run_study(load_study(path, check_sources=False), executor=executor, log=lambda x: None)
    study = load_study(path, check_sources=False)
    store = open_store_if_any(study)
    rows = [r for r in current_rows(study, store).values() if r is not None]
    store.close()
    assert sum(r.status == "failed" for r in rows) == 8
    assert study.runs_to_come() == 0
    assert study.runs_to_come(most=True, rows=rows) == 8
    assert study.runs_to_come(most=True) == 16  # without the rows no comparison is decided
    text = format_dry_run(study, retry_failed=True)
    assert "then up to 8 reporting run(s) more if every look goes on: 16 run(s) in all" in text


def test_the_reports_missing_runs_are_those_the_looks_still_call_for(tmp_path):
    """linear_decay decided at the first look gets no more seeds: the report lists only
    the second look's runs of uniform and attention_heavy (failed here) as missing."""
    from adaptive_lora.report.write import write_report

    path = _study(tmp_path)
    executor = LocalExecutor(FirstLookOnly(), load_model=lambda s: None)
    run_study(load_study(path, check_sources=False), executor=executor, log=lambda x: None)
    study = load_study(path, check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        text = write_report(study, store, tmp_path / "report", n_boot=200).report_md.read_text()
    assert "**8 run(s) are missing.**" in text
    missing = [line for line in text.splitlines() if "no result for seed(s)" in line]
    assert missing == [
        "- uniform @ r4: no result for seed(s) 4, 5, 6, 7",
        "- attention_heavy @ r4: no result for seed(s) 4, 5, 6, 7",
    ]


class LadderWithEffects(Effects):
    """Fake runs: 0.01 lower test loss per doubling of rank, plus each strategy's effect
    and noise per seed and rank."""

    def metrics(self, config):
        import math

        metrics = super().metrics(config)
        rank = int(config.allocation.budget[1:])
        strategy = config.allocation.strategy
        metrics["test_loss"] += -0.01 * math.log2(rank) + _noise(f"{strategy}{rank}", config.seed)
        metrics["effective_params"] = 1000 * rank
        return metrics


def _report_of(tmp_path: Path, budgets: list[str]) -> tuple[str, dict]:
    import json

    from adaptive_lora.report.write import write_report

    strategies = ["uniform", {"name": "linear_decay", "budgets": ["r4"]},
                  {"name": "attention_heavy", "budgets": ["r4"]}]  # fmt: skip
    path = _study(tmp_path, budgets=budgets, strategies=strategies)
    executor = LocalExecutor(LadderWithEffects(), load_model=lambda s: None)
    run_study(load_study(path, check_sources=False), executor=executor, log=lambda x: None)
    study = load_study(path, check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        files = write_report(study, store, tmp_path / "report", n_boot=200)
        rows = store.rows()
    return files.report_md.read_text(), json.loads(files.stats_json.read_text()), rows


def test_a_single_group_ladder_says_whether_rank_binds_and_the_answer_leads_with_the_design(
    tmp_path,
):
    """The baseline on r2, r4, r8: the Answer first gives its gain per doubling (the mean of
    numpy's per-seed least-squares slopes over log2 parameters, with scipy's t interval),
    then the sequential design's decisions, the fixed-sample tests after them."""
    import numpy as np
    from scipy import stats

    text, stats_json, rows = _report_of(tmp_path, ["r2", "r4", "r8"])
    uniform = [r for r in rows if r.label == "uniform" and r.status == "done"]
    seeds = sorted(
        {r.seed for r in uniform if r.budget == "r8"}
        & {r.seed for r in uniform if r.budget == "r2"}
    )
    x = np.log2([2000, 4000, 8000])
    loss = {(r.budget, r.seed): r.metrics["test_loss"] for r in uniform}
    slopes = [-np.polyfit(x, [loss[(b, s)] for b in ("r2", "r4", "r8")], 1)[0] for s in seeds]
    overall = stats_json["ladder"]["gain_per_doubling"]["overall"]
    assert overall["n"] == len(seeds) and overall["mean"] == pytest.approx(np.mean(slopes))
    half = stats.t.ppf(0.975, len(slopes) - 1) * np.std(slopes, ddof=1) / np.sqrt(len(slopes))
    assert overall["ci_t"] == pytest.approx([np.mean(slopes) - half, np.mean(slopes) + half])
    answer = text.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert (
        "- Where rank matters: `uniform`'s gain in test loss per doubling of the budget over r2, r4, r8"
        in answer
    )
    assert "**established**" in answer
    assert "by the declared group-sequential design" in answer
    assert "Beats `uniform`: linear_decay (Δ −0.05" in answer
    assert answer.index("group-sequential design") < answer.index(
        "Fixed-sample tests at these seeds"
    )
    assert "## Where does rank matter?" in text and "figures/regime_ladder.png" in text


def test_two_budgets_are_no_ladder(tmp_path):
    text, stats_json, _ = _report_of(tmp_path, ["r4", "r8"])
    assert "ladder" not in stats_json and "Where rank matters" not in text
    assert "by the declared group-sequential design" in text
