"""The report describes the study it reports: each sentence of the set-up, the interval
explanation, the heatmap, the learning-rate paragraph and the timing follows the study and
its store, so studies that differ in one respect get reports that differ in that sentence."""

from __future__ import annotations

import json
import random

import pytest
from test_report import make_study, synthetic_run

from adaptive_lora.records import ITEMS_KEY
from adaptive_lora.report.regime import heatmap_colour
from adaptive_lora.report.write import write_report
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore


class Runs:
    """Synthetic runs (`test_report.synthetic_run`) with the records a test chooses: each
    test item's loss, the seconds of every phase, the answers the token limit cut off."""

    def __init__(self, *, items: bool = True, phases: bool = True, cut_off: bool = False):
        self.items, self.phases, self.cut_off = items, phases, cut_off

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        result = synthetic_run(config, out_root, run_id=run_id)
        metrics, rng = result.metrics, random.Random(run_id)
        # The ladder orders budgets by their parameters.
        metrics["effective_params"] = 512 * int(config.allocation.budget.lstrip("r"))
        # Tiny phase times, so that they fit inside the runs' real (millisecond) durations.
        metrics["train_seconds"] = 1e-5
        if self.phases:
            metrics.update(eval_seconds=2e-5, allocation_seconds=3e-6)
        if self.items:
            loss = metrics["test_loss"]
            metrics[ITEMS_KEY] = {
                "key": ["a", "b", "c", "d"],
                "loss": [loss + rng.gauss(0, 0.01) for _ in range(4)],
                "tokens": [3, 5, 4, 6],
            }
        if self.cut_off:
            metrics.update(answers_at_token_limit=3, answers_without_answer_line=2)
        return result


def report(tmp_path, runs: Runs | None = None, **changes) -> tuple[str, dict]:
    """report.md and stats.json of a synthetic study with these changes to its file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = make_study(tmp_path, **{"seeds": "0..2", **changes})
    study = load_study(path)
    executor = LocalExecutor(runs or Runs(), lambda spec: None)
    run_study(study, executor=executor, log=lambda line: None)
    study = load_study(path)
    with StudyStore.open(study.store_path) as store:
        files = write_report(study, store, tmp_path / "report", n_boot=200)
    return files.report_md.read_text(), json.loads(files.stats_json.read_text())


def line_of(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


# ---------------------------------------------------------------- the evaluation line


@pytest.mark.parametrize(
    "evaluation, says",
    [
        # The built-in set's default: exact match, with ROUGE-L recorded on every run.
        ({}, "test loss; exact match on 8 generated answers (48 new tokens). ROUGE-L is "),
        (
            {"metrics": ["final_number"], "n_generate": 6, "max_new_tokens": 96},
            "test loss; final number on 6 generated answers (96 new tokens). ROUGE-L and "
            "exact match are recorded on every run as well.",
        ),
        (
            {"metrics": ["final_number"], "answer_pattern": r"is (\d+)"},
            "declared pattern `is (\\d+)` finds it.",
        ),
    ],
)
def test_the_evaluation_line_names_the_metrics_the_runs_were_scored_by(tmp_path, evaluation, says):
    data = {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 8, "max_length": 32}
    text, _ = report(tmp_path, data=data, eval=evaluation)
    line = line_of(text, "- **Evaluation:**")
    assert says in line
    assert "ROUGE-L and exact match on" not in line
    assert "stopped at the" not in line  # these runs did not count cut-off answers


def test_the_evaluation_line_counts_the_answers_the_token_limit_cut_off(tmp_path):
    data = {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 8, "max_length": 32}
    text, stats = report(
        tmp_path, Runs(cut_off=True), data=data, eval={"metrics": ["final_number"]}
    )
    assert stats["cut_off_answers"] == {
        "runs": 9,
        "answers": 9 * 8,
        "at_token_limit": 9 * 3,
        "without_answer_line": 9 * 2,
    }
    line = line_of(text, "- **Evaluation:**")
    assert (
        "Of the 72 answers of the 9 reported run(s), 27 stopped at the 48-token limit, 18 of "
        "them without an answer line (a `#### N` line): `final_number` scores those wrong"
    ) in line
    # Scored by ROUGE-L alone, an answer line means nothing: only the cut-off count is said.
    text, _ = report(tmp_path / "rouge", Runs(cut_off=True), eval={"metrics": ["rouge_l"]})
    line = line_of(text, "- **Evaluation:**")
    assert "27 stopped at the 48-token limit." in line and "answer line" not in line


# ---------------------------------------------------------------- the intervals


@pytest.mark.parametrize(
    "seeds, runs, says, two_level",
    [
        # Every run stored its per-item records: the only cause is the single seed.
        ([0], Runs(), "these comparisons have fewer than two paired seeds", False),
        ("0..2", Runs(items=False), "not every run of these comparisons stored per-item", False),
        ("0..2", Runs(), "Two-level interval: a bootstrap that resamples seeds and test", True),
    ],
)
def test_the_interval_explanation_names_the_actual_cause(tmp_path, seeds, runs, says, two_level):
    text, stats = report(tmp_path, runs, seeds=seeds)
    assert says in text
    comparison = stats["budgets"]["r8"]["comparisons"]["linear_decay"]
    assert (comparison["two_level"] is not None) is two_level
    if not two_level:
        assert comparison["seed_only_reason"] in {
            "fewer than two paired seeds",
            "runs without per-item records",
        }
    else:
        assert "seed_only_reason" not in comparison
    if seeds == [0]:
        assert "stored per-item test records" not in text  # they were all stored


# ---------------------------------------------------------------- learning rates


def test_the_learning_rate_paragraph_says_whether_and_how_rates_were_tuned(tmp_path):
    text, _ = report(tmp_path / "one")
    assert "One learning rate, not tuned (no rate is chosen" in line_of(text, "- **Data:**")
    assert "Learning rates are chosen on validation" not in text
    section = text[text.index("## Learning rate\n") :]
    assert section.startswith(
        "## Learning rate\n\nOne rate, not tuned: every run trained at learning rate 0.001;"
    )
    text, _ = report(
        tmp_path / "own", strategies=["uniform", {"name": "linear_decay", "lr": [4e-3]}]
    )
    assert "each strategy trained at its own rate: uniform 0.001, linear_decay 0.004" in text
    assert "One learning rate per strategy, not tuned" in line_of(text, "- **Data:**")

    tuned = {"lr_candidates": [1e-3, 2e-3], "lr_tuning_seeds": [0], "seeds": "1..3"}
    text, _ = report(tmp_path / "tuned", **tuned)
    assert "Learning rates are chosen on validation; every reported" in line_of(text, "- **Data:**")
    assert "## Learning-rate selection" in text and "One rate, not tuned" not in text
    assert "Candidates were tried on the tuning seed(s) [0] only" in text
    mixed = {**tuned, "strategies": ["uniform", {"name": "linear_decay", "lr": [1e-3]}]}
    text, _ = report(tmp_path / "mixed", **mixed)
    assert (
        "Learning rates are chosen on validation for uniform; linear_decay runs at one rate, "
        "not tuned" in line_of(text, "- **Data:**")
    )


# ---------------------------------------------------------------- time


@pytest.mark.parametrize("phases", [True, False])
def test_the_timing_paragraph_and_figure_show_every_phase_the_runs_recorded(tmp_path, phases):
    text, stats = report(tmp_path, Runs(phases=phases))
    compute = stats["compute"]
    paragraph = line_of(text, "Compute:")
    split = compute["phase_seconds"]
    assert sum(split.values()) == pytest.approx(compute["run_seconds"])
    if phases:
        assert list(split) == ["training", "evaluation", "allocation", "rest"]
        assert "Of the run time: training 0 s, evaluation 0 s, allocation 0 s, and " in paragraph
    else:
        assert list(split) == ["training", "rest"]
        assert "Of the run time: training 0 s, and " in paragraph
    assert "outside them (loading the model and data" in paragraph
    assert "![Time per run by phase (training, evaluation, allocation, the rest)" in text
    assert "Training time per run" not in text


# ---------------------------------------------------------------- the factorial report


@pytest.mark.parametrize("seeds", [[0], "0..2"])
def test_the_heatmap_sentence_says_what_the_colour_encodes_and_the_figures_are_embedded(
    tmp_path, seeds
):
    data = {"source": "builtin", "n_train": [8, 16], "n_val": 4, "n_test": 4, "max_length": 32}
    text, stats = report(tmp_path, data=data, seeds=seeds, budgets=["r4", "r8"])
    key, label, sentence = heatmap_colour(stats["cells"])
    assert sentence in text
    # In the loss's own units whatever the seeds (d_z painted a tiny Δ as a deep win).
    assert key == "mean_diff" and "by its Δ in test-loss units" in sentence
    assert "Holm p < 0.05" in sentence and "d_z" not in label
    assert "![The baseline over the budget ladder" in text
    assert "](figures/regime_ladder.png)" in text and "](figures/regime_heatmap.png)" in text
    assert "`figures/regime_heatmap.png`" not in text  # embedded, not a path in backticks
    assert text.index("](figures/regime_ladder.png)") < text.index("### Every strategy against")
    # The figures sit with their tables, before the groups' sections.
    assert text.index("](figures/regime_heatmap.png)") < text.index("## Decisions")


def test_a_heatmap_of_a_sequential_design_names_the_decision_not_the_holm_star():
    cells = [{"d_z": 0.4, "decision": "equivalent"}, {"d_z": float("nan"), "decision": None}]
    key, _, sentence = heatmap_colour(cells)
    assert key == "mean_diff" and "the design's sequential decision under it" in sentence
    assert "Holm" not in sentence


def test_a_claim_the_items_do_not_carry_says_so_beside_the_verdict():
    """Two units of inference: a claim over seeds whose seeds × items interval includes 0
    holds on these test items only; the report says so after the verdict."""
    from adaptive_lora.report.regime import items_tail

    wide = {"ci": [-0.0001, 0.0045], "confidence": 0.95}
    assert items_tail("inferior", wide) == (
        "; with test items resampled too, [−0.0001, 0.0045] (95%) includes 0: "
        "so on these test items only"
    )
    assert items_tail("superior", {"ci": [-0.004, 0.0002], "confidence": 0.95})
    assert items_tail("inferior", {"ci": [0.0005, 0.0042], "confidence": 0.95}) == ""
    assert items_tail("equivalent", wide) == "" and items_tail("inferior", None) == ""


def test_a_heatmap_cell_holds_its_delta_and_the_decision_in_a_word():
    from adaptive_lora.report.regime import _cell_text

    cell = {"mean_diff": 0.0018, "decision": "inferior", "significant": True}
    assert _cell_text(cell, sequential=True) == "+0.0018\nworse"
    assert _cell_text({**cell, "decision": "equivalent"}, sequential=True) == "+0.0018\nequiv."
    assert _cell_text({**cell, "decision": None}, sequential=True) == "+0.0018\nopen"
    assert _cell_text(cell, sequential=False) == "+0.0018*"
