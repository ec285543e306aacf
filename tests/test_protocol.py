"""The comparison protocol in a study: tuning seeds, per-strategy budgets, cross-budget keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_study import FakeRuns, quiet_run, write_study

from adaptive_lora.analysis import paired as stats
from adaptive_lora.errors import UserError
from adaptive_lora.records import METRIC_KEYS, RunResult, write_json
from adaptive_lora.report.write import write_report
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

# lr_extend 0: these tests are about the protocol, not the grid growing (test_lr_extend.py)
TUNED = {"lr_candidates": [0.001, 0.002], "lr_tuning_seeds": [0], "lr_extend": 0, "seeds": [1, 2]}


def test_tuning_seeds_must_not_be_reporting_seeds(tmp_path):
    path = write_study(tmp_path, lr_candidates=[0.001, 0.002], lr_tuning_seeds=[0, 1], seeds="1..3")
    with pytest.raises(UserError, match=r"lr_tuning_seeds \[1\] are also reporting seeds"):
        load_study(path, check_sources=False)


def test_tuning_seeds_need_candidates(tmp_path):
    path = write_study(tmp_path, lr_tuning_seeds=[0], seeds=[1, 2])
    with pytest.raises(UserError, match="lr_tuning_seeds needs learning-rate candidates"):
        load_study(path, check_sources=False)


def test_an_empty_candidate_list_is_refused(tmp_path):
    path = write_study(tmp_path, lr_candidates=[], lr_tuning_seeds=[0], seeds=[1, 2])
    with pytest.raises(UserError, match="lr_candidates must be a non-empty list"):
        load_study(path, check_sources=False)


@pytest.mark.parametrize(
    ("cross", "message"),
    [
        ({"small": "r4", "large": "r8", "margin": 0}, "margin must be a number > 0"),
        ({"small": "r4", "large": "r8", "margin": -0.1}, "margin must be a number > 0"),
        ({"small": "r4", "large": "r16"}, "no baseline runs at that budget"),
        ({"small": "r8", "large": "r4"}, "must be a larger budget"),
    ],
)
def test_bad_cross_budget_requests_are_one_line_errors(tmp_path, cross, message):
    path = write_study(tmp_path, budgets=["r4", "r8"], cross_budget=cross)
    with pytest.raises(UserError, match=message):
        load_study(path, check_sources=False)


def test_cross_budget_needs_the_baseline_at_the_larger_budget(tmp_path):
    strategies = [{"name": "uniform", "budgets": ["r4"]}, "linear_decay"]
    path = write_study(
        tmp_path,
        budgets=["r4", "r8"],
        strategies=strategies,
        cross_budget={"small": "r4", "large": "r8"},
    )
    with pytest.raises(UserError, match="no baseline runs at that budget"):
        load_study(path, check_sources=False)


def test_strategies_run_only_at_their_own_budgets(tmp_path):
    strategies = ["uniform", {"name": "linear_decay", "budgets": ["r4"]}]
    study = load_study(
        write_study(tmp_path, budgets=["r4", "r8"], strategies=strategies), check_sources=False
    )
    assert {(s.label, s.budget) for s in study.runs} == {
        ("uniform", "r4"), ("uniform", "r8"), ("linear_decay", "r4")
    }  # fmt: skip


def test_tuning_runs_first_then_reporting_runs_at_the_chosen_rate(tmp_path):
    path = write_study(tmp_path, **TUNED)
    study = load_study(path, check_sources=False)
    assert all(s.tuning and s.seed == 0 for s in study.runs)
    assert len(study.runs) == 2 * 2  # two strategies × two candidates on the tuning seed
    quiet_run(study, FakeRuns())  # val_loss = 2 + lr: the smaller rate wins
    study = load_study(path, check_sources=False)
    reporting = [s for s in study.runs if not s.tuning]
    assert {(s.seed, s.lr) for s in reporting} == {(1, 0.001), (2, 0.001)}
    assert len(reporting) == 2 * 2
    for choice in study.lr_choices.values():
        assert choice.chosen == 0.001 and choice.seeds == [0] and choice.complete
    assert all(study.reported(s) == (not s.tuning and s.lr == 0.001) for s in study.runs)


class TwoSlots:
    """An executor with two runs in flight (a stand-in for two Ray workers): it fills
    free slots from the queue, finishes the older run, yields it, and goes on until the
    queue is empty and nothing is in flight, as the Executor Protocol asks."""

    workers = 2

    def __init__(self, fake: FakeRuns):
        self.fake = fake
        self.events: list[tuple[str, str]] = []
        self.calls = 0

    def execute(self, specs, out_root, *, on_start, quiet=False, on_progress=None):
        self.calls += 1
        in_flight = []
        while specs or in_flight:
            while specs and len(in_flight) < self.workers:
                spec = specs.popleft()
                on_start(spec)
                self.events.append(("start", spec.run_id))
                in_flight.append(spec)
            spec = in_flight.pop(0)
            self.events.append(("end", spec.run_id))
            yield self.fake(spec.config, out_root, run_id=spec.run_id)


def test_reporting_runs_join_the_queue_while_other_tuning_runs_go_on(tmp_path):
    """Once uniform's rate is chosen its reporting runs are queued at once, so a free
    worker takes one before linear_decay's last tuning run ends: one pool, no idle slot."""
    path = write_study(tmp_path, **TUNED)
    study = load_study(path, check_sources=False)
    slots = TwoSlots(FakeRuns())
    lines: list[str] = []
    run_study(study, executor=slots, log=lines.append)
    assert slots.calls == 1
    final = load_study(path, check_sources=False)
    assert len(slots.fake.calls) == len(final.runs) == 8
    order = {event: i for i, event in enumerate(slots.events)}
    last_tuning = [s.run_id for s in final.runs if s.tuning and s.label == "linear_decay"][-1]
    first_report = next(s.run_id for s in final.runs if not s.tuning and s.label == "uniform")
    assert order[("start", first_report)] < order[("end", last_tuning)], slots.events
    assert any("run(s) join the queue" in line for line in lines), lines
    assert lines[-1].startswith("study t: ran 8 (8 done, 0 failed)")
    with StudyStore.open(study.store_path) as store:
        assert {row.status for row in store.rows()} == {"done"}


def test_a_failed_candidate_is_excluded_and_said(tmp_path):
    path = write_study(tmp_path, **TUNED)
    study = load_study(path, check_sources=False)
    # the smaller rate fails for uniform on the tuning seed: it must not win by default
    fake = FakeRuns(fail={("uniform", 0)})
    quiet_run(study, fake)
    with StudyStore.open(study.store_path) as store:
        choices = study.select_lr(store.rows())
    uniform = choices[("uniform", "r4")]
    assert uniform.failed == {0.001: [0], 0.002: [0]}
    assert uniform.chosen is None and "every candidate failed" in uniform.note
    decay = choices[("linear_decay", "r4")]
    assert decay.chosen == 0.001 and decay.note == ""


def test_a_tie_goes_to_the_smaller_rate_and_is_said():
    from adaptive_lora.study.lr import choose_lr
    from adaptive_lora.study.store import RunRow

    def row(lr, seed, val):
        return RunRow(f"r{lr}{seed}", 0, "u", "uniform", "r8", seed, lr, "done", None, {},
                      metrics={"val_loss": val})  # fmt: skip

    rows = [row(0.002, 0, 1.5), row(0.001, 0, 1.5), row(0.004, 0, 1.7)]
    choice = choose_lr("u", "r8", [0.001, 0.002, 0.004], [0], rows)
    assert choice.chosen == 0.001 and "tie between 0.001, 0.002" in choice.note


def test_a_choice_at_the_end_of_the_grid_is_said():
    from adaptive_lora.study.lr import choose_lr
    from adaptive_lora.study.store import RunRow

    def rows(*vals):
        return [
            RunRow(f"r{lr}", 0, "u", "uniform", "r8", 0, lr, "done", None, {},
                   metrics={"val_loss": val})
            for lr, val in zip([0.001, 0.002, 0.004], vals)
        ]  # fmt: skip

    grid = [0.001, 0.002, 0.004]
    top = choose_lr("u", "r8", grid, [0], rows(1.7, 1.6, 1.5))
    assert top.chosen == 0.004 and "largest candidate" in top.note
    bottom = choose_lr("u", "r8", grid, [0], rows(1.5, 1.6, 1.7))
    assert bottom.chosen == 0.001 and "smallest candidate" in bottom.note
    inside = choose_lr("u", "r8", grid, [0], rows(1.6, 1.5, 1.7))
    assert inside.chosen == 0.002 and inside.note == ""
    # Two candidates: every choice is at an end, so nothing is said.
    assert choose_lr("u", "r8", grid[:2], [0], rows(1.7, 1.6)).note == ""
    # Not finished: the choice may still move, so nothing is said yet.
    assert choose_lr("u", "r8", grid, [0], rows(1.7, 1.6)).note == ""


# ---------------------------------------------------------------------- the report


class ShapedRuns(FakeRuns):
    """Test loss shaped by budget and strategy; the package source differs for one seed."""

    def __init__(self, source_by_seed=None, numerics_by_seed=None):
        super().__init__()
        self.source_by_seed = source_by_seed or {}
        # A seed missing here ran before numerics versions were (no `numerics_version`).
        self.numerics_by_seed = numerics_by_seed or {}

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        self.calls.append(run_id)
        run_dir = Path(out_root) / run_id
        run_dir.mkdir(parents=True)
        seed, strategy = config.seed, config.allocation.strategy
        loss = 2.0 + 0.001 * seed + (0.0 if config.allocation.budget == "r8" else 0.10)
        loss += {"uniform": 0.0, "linear_decay": -0.02, "attention_heavy": -0.095}.get(strategy, 0)
        loss += 0.003 * (seed % 2) + (0.002 * (seed % 3) if strategy != "uniform" else 0.0)
        metrics = {k: None for k in METRIC_KEYS}
        metrics.update(test_loss=loss, val_loss=2.0 + config.train.lr, train_seconds=1.0)
        metrics.update(trainable_params=100, effective_params=100, deviation_pct=0.0)
        write_json(run_dir / "metrics.json", metrics)
        manifest = {"versions": {"torch": "x"}, "source_hash": self.source_by_seed.get(seed, "s1"),
                    "device": "cpu", "cpu": "AMD EPYC" if seed % 2 else "Intel Xeon"}  # fmt: skip
        if seed in self.numerics_by_seed:
            manifest["numerics_version"] = self.numerics_by_seed[seed]
        return RunResult(run_id, run_dir, "done", metrics, manifest)


def run_all(path, fake):
    """One `run`: the tuning runs, then the reporting runs their choice opened."""
    summary = quiet_run(load_study(path, check_sources=False), fake)
    study = load_study(path, check_sources=False)
    assert sorted(summary.ran) == sorted(study.run_ids)  # all of it in one call
    return study


def test_tuning_seeds_never_reach_a_reported_test(tmp_path, monkeypatch):
    path = write_study(tmp_path, **{**TUNED, "seeds": "1..4"})
    study = run_all(path, ShapedRuns())
    seen = []
    real = stats.compare_family

    def spy(values, baseline, **kw):
        seen.append({label: set(by_seed) for label, by_seed in values.items()})
        return real(values, baseline, **kw)

    monkeypatch.setattr(stats, "compare_family", spy)
    write_report(study, StudyStore.open(study.store_path), tmp_path / "report", n_boot=200)
    assert seen, "no comparison was computed"
    for inputs in seen:
        for seeds in inputs.values():
            assert seeds == {1, 2, 3, 4}  # the reporting seeds, never the tuning seed 0


def test_the_report_states_the_choice_and_the_cross_budget_verdict(tmp_path):
    path = write_study(
        tmp_path,
        budgets=["r4", "r8"],
        strategies=[
            "uniform",
            {"name": "linear_decay", "budgets": ["r4"]},
            {"name": "attention_heavy", "budgets": ["r4"]},
        ],
        lr_candidates=[0.001, 0.002],
        lr_tuning_seeds=[0, 1],
        lr_extend=0,
        seeds="2..7",
        cross_budget={"small": "r4", "large": "r8"},
    )
    study = run_all(path, ShapedRuns())  # r4 costs uniform +0.10 test loss against r8
    files = write_report(study, StudyStore.open(study.store_path), tmp_path / "report", n_boot=200)
    text = files.report_md.read_text()
    assert "Tuning seeds are excluded from every test in this report." in text
    assert "## Does a strategy at r4 recover the r8 gain?" in text
    assert "Equivalence margin ±0.0500 (half of the baseline's measured gain)" in text
    decay = next(line for line in text.splitlines() if "**linear_decay** at r4" in line)
    assert (
        "worse than uniform at r8 by more than the margin: it does not recover" in decay
    )  # Δ ≈ +0.08
    heavy = next(line for line in text.splitlines() if "**attention_heavy** at r4" in line)
    assert "equivalent within the margin: it recovers the r8 result" in heavy  # Δ ≈ +0.005
    block = json.loads(files.stats_json.read_text())["cross_budget"]
    assert block["gain"]["n"] == 6 and block["gain"]["mean"] == pytest.approx(0.1)
    assert block["strategies"]["attention_heavy"]["tost"]["equivalent"] is True
    # The same answer as a second LaTeX table: one row per strategy, then the baseline.
    tex = files.table_tex.read_text()
    table = tex[tex.index("\\label{tab:t-cross-budget}") :]
    rows = {line.split(" & ")[0]: line for line in table.splitlines() if line.endswith("\\\\")}
    assert rows["attention\\_heavy"].endswith("& yes \\\\")
    assert rows["linear\\_decay"].endswith("& no \\\\")
    assert "uniform at r8" in rows and len({r.count(" & ") for r in rows.values()}) == 1
    assert "−" not in tex and "±" not in tex and tex.count("{") == tex.count("}")


def test_runs_from_different_sources_are_refused_then_pooled_with_allow_mixed(tmp_path):
    path = write_study(tmp_path, seeds="0..3")
    study = load_study(path, check_sources=False)
    quiet_run(study, ShapedRuns(source_by_seed={3: "s2"}))
    store = StudyStore.open(study.store_path)
    with pytest.raises(
        UserError,
        match=r"differ in numerics version: unversioned \(source s1\) .*; "
        r"unversioned \(source s2\) .*--allow-mixed",
    ):
        write_report(study, store, tmp_path / "report", n_boot=200)
    assert not (tmp_path / "report").exists()  # nothing half-written
    files = write_report(study, store, tmp_path / "report", n_boot=200, allow_mixed=True)
    text = files.report_md.read_text()
    assert "runs from different environments are pooled" in text
    assert "CPU model differs between runs (a warning, not a refusal)" in text


def test_dry_run_counts_the_reporting_runs_to_come(tmp_path):
    from adaptive_lora.cli.run import format_dry_run

    study = load_study(write_study(tmp_path, **TUNED), check_sources=False)
    text = format_dry_run(study, retry_failed=False)
    assert "4 would run" in text
    assert "then 4 reporting run(s), once the tuning seeds [0] have chosen" in text
    assert "8 run(s) in all" in text


def test_a_named_task_metric_gets_a_column_and_a_paired_test(tmp_path):
    class WithMetric(ShapedRuns):
        def __call__(self, config, out_root, **kw):
            result = super().__call__(config, out_root, **kw)
            result.metrics["final_number"] = 0.5 + 0.05 * config.seed  # a share of examples
            return result

    path = write_study(tmp_path, seeds="0..3", eval={"metrics": ["final_number"]})
    study = load_study(path, check_sources=False)
    quiet_run(study, WithMetric())
    files = write_report(study, StudyStore.open(study.store_path), tmp_path / "r", n_boot=200)
    secondary = json.loads(files.stats_json.read_text())["budgets"]["r4"]["secondary"]
    assert secondary["final_number"]["comparisons"]["linear_decay"]["n"] == 4
    assert "final number (higher is better)" in files.report_md.read_text()


def test_status_shows_tuning_seeds_and_leaves_unrun_rates_blank(tmp_path):
    from adaptive_lora.cli.status import format_status

    study = run_all(write_study(tmp_path, **TUNED), ShapedRuns())
    lines = format_status(study).splitlines()
    assert "seeds t0  1  2" in lines[2]
    rows = {tuple(line.split()[:3]): line for line in lines[3:7]}
    assert rows[("uniform", "r4", "0.001")].split()[3:] == ["✓", "✓", "✓"]
    assert rows[("uniform", "r4", "0.002")].split()[3:] == ["✓"]  # tuning seed only


def test_one_numerics_version_pools_runs_of_several_sources_with_a_note(tmp_path):
    """The source hash is provenance: code that changes no number never splits a study."""
    path = write_study(tmp_path, seeds="0..3")
    study = load_study(path, check_sources=False)
    quiet_run(
        study, ShapedRuns(source_by_seed={3: "s2"}, numerics_by_seed=dict.fromkeys(range(4), 1))
    )
    files = write_report(study, StudyStore.open(study.store_path), tmp_path / "r", n_boot=200)
    text = files.report_md.read_text()
    assert "runs from different environments are pooled" not in text
    assert "package source differs between runs (a warning, not a refusal): s1" in text


def test_two_numerics_versions_are_refused(tmp_path):
    path = write_study(tmp_path, seeds="0..3")
    study = load_study(path, check_sources=False)
    quiet_run(study, ShapedRuns(numerics_by_seed={0: 1, 1: 1, 2: 2}))  # seed 3: unversioned
    store = StudyStore.open(study.store_path)
    with pytest.raises(
        UserError, match=r"differ in numerics version: 1 .*; 2 .*; unversioned \(source s1\)"
    ):
        write_report(study, store, tmp_path / "report", n_boot=200)
    assert not (tmp_path / "report").exists()


def test_source_hash_covers_what_a_run_computes_and_not_what_reads_it(tmp_path):
    """A fix to the report or the scheduler keeps a long study one environment;
    an edit to anything a run computes with does not."""
    import shutil

    import adaptive_lora
    from adaptive_lora.environment import sources_digest

    package = tmp_path / "adaptive_lora"
    shutil.copytree(Path(adaptive_lora.__file__).parent, package)
    before = sources_digest(package)
    for reader in ("report/markdown.py", "study/runner.py", "analysis/paired.py", "cli/run.py"):
        (package / reader).write_text((package / reader).read_text() + "\n# a later fix\n")
    assert sources_digest(package) == before
    for computes in ("training/loop.py", "allocation/budget.py", "evaluation.py", "run.py"):
        path = package / computes
        original = path.read_text()
        path.write_text(original + "\n# a change\n")
        assert sources_digest(package) != before, computes
        path.write_text(original)
    assert sources_digest(package) == before
