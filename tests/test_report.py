"""The study report on synthetic results: tables, p-values from stats, figures, partial studies."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from adaptive_lora.analysis import descriptive, formatting, paired
from adaptive_lora.analysis.power import minimum_detectable_d_z
from adaptive_lora.records import ALLOCATION_KEY, METRIC_KEYS, RunResult, write_json
from adaptive_lora.report.analyse import analyse
from adaptive_lora.report.write import write_report
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

# Mean test loss per strategy: linear_decay clearly better, attention_heavy about the same.
EFFECT = {"uniform": 0.0, "linear_decay": -0.05, "attention_heavy": 0.002, "adalora": -0.01}
MODULES = [
    {"name": f"model.layers.{layer}.{part}.{kind}_proj", "layer": layer, "kind": kind}
    for layer in range(3)
    for part, kinds in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
    for kind in kinds
]


def synthetic_run(config, out_root, *, run_id=None, loaded=None, quiet=False):
    """A run folder with allocation.json and metrics, test loss = seed effect + strategy effect."""
    strategy, seed = config.allocation.strategy, config.seed
    rng = random.Random(f"{strategy}-{seed}")
    run_dir = Path(out_root) / run_id
    run_dir.mkdir(parents=True)
    ranks = {
        m["name"]: (8 if strategy == "uniform" else 4 + 2 * m["layer"] + (m["kind"] in "qkvo"))
        for m in MODULES
    }
    write_json(
        run_dir / "allocation.json",
        {"modules": [{**m, "rank": ranks[m["name"]], "params": 0} for m in MODULES]},
    )
    metrics = {key: None for key in METRIC_KEYS}
    metrics.update(
        test_loss=2.0 + 0.03 * seed + EFFECT[strategy] + rng.gauss(0, 0.004),
        val_loss=2.1 + 0.03 * seed + EFFECT[strategy] + rng.gauss(0, 0.004),
        rouge_l=0.3 + rng.random() * 0.05,
        trainable_params=4096 + (7 if strategy == "linear_decay" else 0),
        budget_params=4096,
        deviation_pct=100 * (7 if strategy == "linear_decay" else 0) / 4096,
        train_seconds=10.0 + rng.random(),
        train_loss_curve=[[1, 3.0], [2, 2.6], [3, 2.4]],
        val_loss_curve=[[3, 2.5]],
    )
    if strategy == "adalora":
        metrics["final_ranks"] = {f"base_model.model.{m['name']}": 2 + m["layer"] for m in MODULES}
        metrics["initial_ranks"] = {m["name"]: 12 for m in MODULES}
    write_json(run_dir / "metrics.json", metrics)
    manifest = {"versions": {"torch": "2.13.0+cpu", "peft": "0.21"}, "device": "cpu"}
    return RunResult(run_id, run_dir, "done", metrics, manifest)


def make_study(
    folder: Path, seeds="0..4", strategies=("uniform", "linear_decay", "attention_heavy"), **changes
) -> Path:
    spec = {
        "name": "synthetic",
        "model": "fake/model",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
        "budgets": ["r8"],
        "strategies": list(strategies),
        "seeds": seeds,
        "train": {"max_steps": 1},
        "out": str(folder / "study"),
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text("# adaptive-lora run study.yaml\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


def fill(path: Path, only=None):
    """Run the study with synthetic runs (only the run ids in `only`, when given)."""
    study = load_study(path)
    if only is not None:
        study.runs = [s for s in study.runs if s.run_id in only]
    run_study(study, executor=LocalExecutor(synthetic_run, lambda spec: None), log=lambda s: None)
    return load_study(path)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    study = fill(make_study(folder))
    with StudyStore.open(study.store_path) as store:
        store.add_note(
            "linear_decay ahead after 5 seeds",
            decision="run 3 more seeds",
            rationale="Wilcoxon cannot reach 0.05 with 5",
            run_ids=study.run_ids[:2],
        )
        files = write_report(study, store, folder / "report", n_boot=2000)
        rows = store.rows()
    return study, files, rows


def expected_family(study, rows):
    results = {label: {} for label in study.labels}
    for row in rows:
        results[row.label][row.seed] = row.metrics["test_loss"]
    return paired.compare_family(results, "uniform", n_boot=2000, metric="test loss")


def test_main_table_holds_the_stats_numbers(full):
    study, files, rows = full
    text = files.report_md.read_text()
    family = expected_family(study, rows)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header = table[0]
    assert "test loss, mean [95% CI]" in header and "Δ vs uniform" in header
    assert "p (paired t, Holm)" in header and "p (Wilcoxon, Holm)" in header and "d_z" in header
    by_label = {line.split("|")[1].strip(): line for line in table[1:4]}
    for label in ("linear_decay", "attention_heavy"):
        cells = [c.strip() for c in by_label[label].split("|")[1:-1]]
        comparison = family[label]
        assert cells[4] == formatting.fmt_p(comparison.p_t_holm)
        assert cells[5] == formatting.fmt_p(comparison.p_wilcoxon_holm)
        assert cells[6] == formatting.fmt_sig(comparison.d_z)
        assert cells[3].startswith(formatting.fmt_num(comparison.mean_diff, 4, plus=True))
        assert comparison.verdict in text
    assert by_label["linear_decay"].count("4,103") == 1 and "+0.17%" in by_label["linear_decay"]
    assert family["linear_decay"].p_t_holm < 0.05  # the synthetic effect is found


def test_stats_json_has_every_table_number(full):
    study, files, rows = full
    data = json.loads(files.stats_json.read_text())  # strict JSON: no NaN
    family = expected_family(study, rows)
    block = data["budgets"]["r8"]
    for label, comparison in family.items():
        stored = block["comparisons"][label]
        assert stored["p_t_holm"] == pytest.approx(comparison.p_t_holm)
        assert stored["p_wilcoxon_holm"] == pytest.approx(comparison.p_wilcoxon_holm)
        assert stored["ci_t"] == pytest.approx(comparison.ci_t)
    uniform = block["strategies"]["uniform"]["test_loss"]
    values = [r.metrics["test_loss"] for r in rows if r.label == "uniform"]
    assert uniform["mean"] == pytest.approx(descriptive.describe(values)["mean"])
    assert uniform["ci_t"][0] < uniform["mean"] < uniform["ci_t"][1]
    assert set(block["secondary"]) == {"val_loss", "rouge_l"}  # exact_match is never set
    assert data["counts"]["done"] == 15


def test_the_answer_quotes_the_comparisons_and_what_the_seeds_can_resolve(full):
    study, files, rows = full
    text = files.report_md.read_text()
    answer = text[text.index("## Answer") : text.index("## Status")]
    family = expected_family(study, rows)
    decay = family["linear_decay"]
    assert decay.significant and not family["attention_heavy"].significant
    lo, hi = decay.ci_t
    quoted = (
        f"better than uniform: linear_decay Δ = {formatting.fmt_num(decay.mean_diff, 4, plus=True)}"
        f" [{formatting.fmt_num(lo, 4)}, {formatting.fmt_num(hi, 4)}]"
    )
    assert quoted in answer and "1 other(s) do not differ significantly" in answer
    assert "Provisional" not in answer
    assert f"|d_z| ≥ {formatting.fmt_sig(minimum_detectable_d_z(5, 0.05))} with 80% power" in answer
    assert f"α/2, where |d_z| ≥ {formatting.fmt_sig(minimum_detectable_d_z(5, 0.025))}" in answer


def test_the_answer_without_a_winner_names_the_closest():
    from adaptive_lora.report.answer import answer_lines

    noise = [-0.010, 0.012, -0.008, 0.009, -0.011, 0.006, -0.007, 0.003]  # mean −0.00075
    base = {seed: 2.0 + 0.03 * seed for seed in range(8)}

    def answer(shift_a: float, shift_b: float) -> str:
        results = {
            "uniform": base,
            "a": {s: v + shift_a + noise[s] for s, v in base.items()},
            "b": {s: v + shift_b + noise[::-1][s] for s, v in base.items()},
        }
        family = paired.compare_family(results, "uniform", n_boot=200)
        assert not any(c.significant for c in family.values())
        analysis = {
            "budgets": {"r8": {"comparisons": family}},
            "n_runs": 24,
            "counts": {"done": 24},
            "cross_budget": None,
        }
        return "\n".join(answer_lines("uniform", analysis))

    text = answer(0.0, 0.002)
    assert "two-sided, Holm-corrected): none differs significantly from uniform after Holm" in text
    assert "no 95% t interval excludes 0" in text
    assert "Largest mean improvement over uniform: a Δ = −0.0008" in text
    assert "What 8 seeds can resolve" in text
    assert "the smallest gap: b Δ = +0.0023" in answer(0.004, 0.00305)


def test_wilcoxon_floor_and_decisions_are_reported(full):
    _, files, _ = full
    text = files.report_md.read_text()
    # 5 seeds: 2/2^5 = 0.0625 alone, × 2 comparisons = 0.125 after Holm.
    assert (
        "With 5 paired seeds and Holm over 2 comparisons, a two-sided Wilcoxon signed-rank test "
        "cannot reach p < 0.05: its smallest possible p-value is 2/2^5 = 0.0625, and Holm "
        "multiplies the smallest by 2: 0.125" in text
    )
    data = json.loads(files.stats_json.read_text())
    for comparison in data["budgets"]["r8"]["comparisons"].values():
        assert comparison["can_reach_significance"] is False
        assert comparison["wilcoxon_holm_floor_p"] == pytest.approx(0.125)
    assert "## Decisions" in text and "linear_decay ahead after 5 seeds" in text
    assert "run 3 more seeds" in text and "Wilcoxon cannot reach 0.05 with 5" in text
    assert "15 of 15 runs done" in text and "missing" not in text
    assert "### Secondary metrics at budget r8" in text and "ROUGE-L" in text
    assert "`versions.torch`: 2.13.0+cpu" in text  # from the run manifests


def test_figures_exist_in_png_and_svg(full):
    _, files, _ = full
    names = {p.name for p in files.figures}
    for stem in ("test_loss", "paired_diff", "allocation_r8", "loss_curves", "time_per_run"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
    for path in files.figures:
        assert path.is_file() and path.stat().st_size > 1000
    text = files.report_md.read_text()
    assert "![" in text and "figures/allocation_r8.png" in text and "figures/test_loss.svg" in text


def allocation_in_store_run(config, out_root, *, run_id=None, loaded=None, quiet=False):
    """A synthetic run whose allocation lives only in its metrics (as real runs store it)."""
    result = synthetic_run(config, out_root, run_id=run_id)
    allocation = result.run_dir / "allocation.json"
    result.metrics[ALLOCATION_KEY] = json.loads(allocation.read_text())["modules"]
    allocation.unlink()
    return result


def test_the_store_alone_draws_the_allocation_heatmaps(tmp_path):
    """A committed study database without its run folders still has every figure."""
    import shutil

    study = load_study(make_study(tmp_path, seeds="0..2"))
    run_study(
        study,
        executor=LocalExecutor(allocation_in_store_run, lambda spec: None),
        log=lambda s: None,
    )
    shutil.rmtree(study.runs_dir)
    with StudyStore.open(study.store_path) as store:
        files = write_report(study, store, tmp_path / "report", n_boot=200)
    assert "allocation_r8.png" in {p.name for p in files.figures}


def test_latex_table_is_booktabs(full):
    _, files, _ = full
    tex = files.table_tex.read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\end{table}"):
        assert rule in tex
    assert "linear\\_decay" in tex and "−" not in tex and "Δ" not in tex
    body = [line for line in tex.splitlines() if line.endswith("\\\\")]
    columns = {line.count(" & ") for line in body}
    assert len(columns) == 1  # every row has the header's number of cells
    assert tex.count("{") == tex.count("}")


def test_report_exports_results(full):
    study, files, _ = full
    import pandas as pd

    csv = next(p for p in files.exports if p.suffix == ".csv")
    frame = pd.read_csv(csv)
    assert len(frame) == len(study.runs)
    assert {"test_loss", "rouge_l", "config.allocation.strategy", "config.seed"} <= set(frame)


def test_partial_study_says_what_is_missing(tmp_path):
    path = make_study(tmp_path)
    study = load_study(path)
    # linear_decay lacks seeds 3 and 4, attention_heavy lacks seed 0.
    skip = {
        s.run_id
        for s in study.runs
        if (s.label == "linear_decay" and s.seed >= 3)
        or (s.label == "attention_heavy" and s.seed == 0)
    }
    study = fill(path, only={i for i in study.run_ids if i not in skip})
    with StudyStore.open(study.store_path) as store:
        files = write_report(study, store, tmp_path / "report", n_boot=500)
        rows = store.rows()
    text = files.report_md.read_text()
    assert "12 of 15 runs done" in text
    assert "**3 run(s) are missing.**" in text
    assert "use only the seeds present for both the strategy and `uniform`" in text
    assert "linear_decay @ r8: no result for seed(s) 3, 4" in text
    analysis = analyse(study, rows, n_boot=500)
    comparison = analysis["budgets"]["r8"]["comparisons"]["linear_decay"]
    assert comparison.n == 3 and comparison.seeds == [0, 1, 2]
    assert "cannot reach p < 0.05" in text  # 3 or 4 paired seeds
    answer = text[text.index("## Answer") : text.index("## Status")]
    assert "*Provisional: 3 of 15 runs are missing;" in answer
    assert "3–4 paired seeds" in answer and "What 3 seeds can resolve" in answer
    # a caveat names the comparisons it concerns
    assert "- seeds only in the baseline, dropped: [3, 4] (linear_decay)" in text
    assert "- seeds only in the baseline, dropped: [0] (attention_heavy)" in text


def test_the_answer_leaves_the_cross_budget_question_open_until_both_budgets_ran(tmp_path):
    path = make_study(tmp_path, budgets=["r8", "r16"], cross_budget={"small": "r8", "large": "r16"})
    study = load_study(path)
    study = fill(path, only={s.run_id for s in study.runs if s.budget == "r8"})
    with StudyStore.open(study.store_path) as store:
        text = write_report(study, store, tmp_path / "report", n_boot=100).report_md.read_text()
    assert "no seed has uniform at both r8 and r16 yet" in text  # the answer
    assert "No seed has uniform at both r8 and r16 yet: the question is still open." in text
    assert "gains nothing measurable" not in text


def test_report_of_a_study_with_nothing_finished(tmp_path):
    path = make_study(tmp_path)
    study = load_study(path)
    with StudyStore.open(study.store_path) as store:
        store.sync_runs(study.runs)
        files = write_report(study, store, tmp_path / "report", n_boot=100)
    text = files.report_md.read_text()
    assert "0 of 15 runs done" in text and files.figures == []
    assert "## Answer" not in text  # nothing compared, nothing to answer
    assert "no seeds in common" in text
    json.loads(files.stats_json.read_text())


def test_lr_selection_and_adalora_final_ranks(tmp_path):
    path = make_study(
        tmp_path,
        seeds="0..2",
        strategies=("uniform", "adalora"),
        lr_candidates=[0.001, 0.002],
    )
    study = fill(path)
    with StudyStore.open(study.store_path) as store:
        files = write_report(study, store, tmp_path / "report", n_boot=200)
    text = files.report_md.read_text()
    assert "## Learning-rate selection" in text
    assert "| strategy | lr | n |" in text  # the chosen lr is shown
    names = {p.name for p in files.figures}
    assert {"adalora_final_ranks_r8.png", "adalora_final_ranks_r8.svg"} <= names
    data = json.loads(files.stats_json.read_text())
    assert {c["label"] for c in data["lr_selection"]} == {"uniform", "adalora"}
    # Only the chosen learning rate's runs enter the comparison: 3 seeds, not 6.
    assert data["budgets"]["r8"]["comparisons"]["adalora"]["n"] == 3
    assert not math.isnan(data["budgets"]["r8"]["strategies"]["adalora"]["lr"])


def test_compute_time_counts_the_hours_runs_were_going_not_the_gaps_between_sessions():
    from adaptive_lora.report.timing import compute_line, compute_time
    from adaptive_lora.study.store import RunRow

    def row(i, status, start, end, seconds):
        return RunRow(f"r{i}", i, "uniform", "uniform", "r8", 0, 1e-3, status, None, {},
                      seconds=seconds, started_at=f"2026-11-30T{start}:00+00:00",
                      ended_at=f"2026-11-30T{end}:00+00:00" if end else None)  # fmt: skip

    rows = [
        row(0, "done", "01:00", "01:10", 600.0),  # two workers side by side ...
        row(1, "done", "01:00", "01:08", 480.0),
        row(2, "failed", "01:09", "01:20", 660.0),  # ... then a third run, 1 min after
        row(3, "done", "05:00", "05:30", 1800.0),  # the next session
        row(4, "running", "05:30", None, None),  # not finished: not counted
        row(5, "pending", "05:31", "05:40", 540.0),  # interrupted and reset: not counted
    ]
    timing = compute_time(rows)
    assert timing["runs"] == 4 and timing["run_seconds"] == 600 + 480 + 660 + 1800
    assert timing["wall_seconds"] == 20 * 60 + 30 * 60 and timing["stretches"] == 2
    assert timing["first_start"].startswith("2026-11-30T01:00")
    line = compute_line(timing)
    assert "4 finished run(s) took 59 min 00 s of run time in 50 min 00 s of wall time" in line
    assert "in 2 stretches, 2026-11-30 01:00 to 2026-11-30 05:30 UTC" in line
    assert compute_line(compute_time([])) == "No run has finished yet."


@pytest.mark.parametrize(
    "large_losses, says, answers",
    [
        ({}, "the question is still open", "no seed has uniform at both r8 and r16 yet"),
        (
            {0: 1.52, 1: 1.61, 2: 1.55},  # r16 no better than r8
            "the question does not arise",
            "uniform gains nothing measurable from r8 to r16",
        ),
        (
            {0: 1.40, 1: 1.50, 2: 1.42},  # r16 gains 0.10
            "Equivalence margin ±0.0500",
            "0 of 1 strategy at r8 shown to recover it (equivalent to uniform at r16 within "
            "±0.0500 (post hoc) by TOST, or better). Worse than uniform at r16 (95% interval above 0, "
            "uncorrected): eva.",
        ),
    ],
)
def test_cross_budget_verdict_open_absent_or_measured(large_losses, says, answers):
    from adaptive_lora.report.answer import answer_lines
    from adaptive_lora.report.cross_budget import cross_budget, verdict_lines
    from adaptive_lora.study.protocol import CrossBudget

    small = {"uniform": {0: 1.50, 1: 1.60, 2: 1.52}, "eva": {0: 1.49, 1: 1.60, 2: 1.53}}
    block = cross_budget(
        CrossBudget("r8", "r16", None),
        "uniform",
        {"r8": small, "r16": {"uniform": large_losses} if large_losses else {}},
        {"r8": {"uniform": 8.0, "eva": 8.0}, "r16": {"uniform": 16.0}},
    )
    assert any(says in line for line in verdict_lines(block))
    comparisons = paired.compare_family(small, "uniform", n_boot=100)
    analysis = {
        "budgets": {"r8": {"comparisons": comparisons}},
        "n_runs": 9,
        "counts": {"done": 9},
        "cross_budget": block,
    }
    assert answers in "\n".join(answer_lines("uniform", analysis))


def test_runs_from_several_commits_with_one_source_hash_are_explained():
    from adaptive_lora.report.markdown import _commits_note

    one_hash = {"git_commit": ["aaa-dirty", "bbb"], "source_hash": ["1660bcb4a191bff7"]}
    assert "span 2 git commits" in "\n".join(_commits_note(one_hash))
    assert _commits_note({**one_hash, "git_commit": ["aaa"]}) == []
    # two source hashes: the environment check refuses to pool them; nothing to explain
    assert _commits_note({**one_hash, "source_hash": ["1", "2"]}) == []


def test_a_budget_with_only_the_baseline_says_there_is_nothing_to_compare(tmp_path, monkeypatch):
    from adaptive_lora.report import figures

    panels = {}
    real_subplots = figures._subplots

    def counting_subplots(n, *args, **kwargs):
        import inspect

        panels[inspect.stack()[1].function] = n  # which figure asked for how many panels
        return real_subplots(n, *args, **kwargs)

    monkeypatch.setattr(figures, "_subplots", counting_subplots)
    strategies = ["uniform", {"name": "linear_decay", "budgets": ["r8"]}]
    path = make_study(
        tmp_path,
        budgets=["r8", "r16"],
        strategies=strategies,
        cross_budget={"small": "r8", "large": "r16"},
    )
    study = fill(path)
    with StudyStore.open(study.store_path) as store:
        text = write_report(study, store, tmp_path / "report", n_boot=100).report_md.read_text()
    r16 = text[text.index("## Test loss at budget r16") : text.index("## Does a strategy")]
    assert "Only `uniform` runs at this budget: nothing to compare here." in r16
    assert "Holm-corrected" not in r16
    assert panels["_fig_paired"] == 1  # no empty r16 panel of differences
    assert panels["_fig_test_loss"] == 2


def test_a_caveat_shared_by_every_comparison_is_said_once():
    from adaptive_lora.report.markdown import _caveats_by_strategy

    narrow = "with only 8 pairs the bootstrap intervals are too narrow"
    comparisons = {  # the one field it reads, beside each strategy
        "eva": SimpleNamespace(warnings=[narrow, "seeds only in the baseline, dropped: [9]"]),
        "spectral": SimpleNamespace(warnings=[narrow, "Wilcoxon test cannot reach p < 0.05"]),
    }
    assert _caveats_by_strategy(comparisons) == [
        ("seeds only in the baseline, dropped: [9]", "eva"),
        (narrow, "all comparisons"),
    ]


@pytest.mark.parametrize(
    "ci, equivalent, kind",
    [
        ((-0.01, 0.01), True, "equivalent"),
        ((-0.30, -0.10), False, "better"),  # all of it below −margin
        ((0.10, 0.30), False, "worse_beyond_margin"),  # all of it above +margin
        ((0.01, 0.30), False, "worse"),  # above 0, reaching past the margin
        ((-0.01, 0.30), False, "inconclusive"),
        ((-0.30, 0.01), False, "inconclusive"),
        ((math.nan, math.nan), None, "untestable"),
    ],
)
def test_what_a_cross_budget_difference_says(ci, equivalent, kind):
    from adaptive_lora.report.cross_budget import recovery

    tost = None if equivalent is None else {"equivalent": equivalent, "p": 0.5}
    assert recovery({"ci_t": ci, "tost": tost}, margin=0.05) == kind


def test_a_note_typed_with_its_own_full_stop_keeps_just_that_one():
    from types import SimpleNamespace

    from adaptive_lora.report.markdown import notes_lines

    note = SimpleNamespace(created_at="2026-12-03T06:00:00", text="Moved two cells.",
                           decision="narrow the file", rationale="the machine, not the numbers.",
                           run_ids=[])  # fmt: skip
    [line] = [x for x in notes_lines([note], SimpleNamespace(path="s.yaml")) if x.startswith("- ")]
    assert line.endswith("*Decision:* narrow the file. *Rationale:* the machine, not the numbers.")
