"""Progress a user can see: each run's phase and step from the executors, in `status`,
and the bound past which a silent run counts as stalled."""

from __future__ import annotations

import re

import pytest

from adaptive_lora import progress
from adaptive_lora.progress import Progress
from adaptive_lora.study.progress_log import ProgressLog, read_progress
from adaptive_lora.study.ray_progress import StallWatch
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study


def test_reports_reach_the_sink_only_while_installed():
    heard = []
    progress.report("training", 1, 3)  # nobody listens: nothing happens
    with progress.reporting_to(heard.append):
        progress.report("training", 0, 3)
        progress.report("training", 1, 3)
        progress.report("test loss")
        progress.step(16, 100)
    progress.report("training", 2, 3)
    assert [p.text().split(" (")[0] for p in heard] == [
        "training 0/3", "training 1/3", "test loss", "test loss 16/100"
    ]  # fmt: skip
    assert heard[1].seconds_per_step is not None and heard[0].seconds_per_step is None


def test_a_validation_pass_inside_training_keeps_the_training_steps():
    heard = []
    with progress.reporting_to(heard.append):
        progress.report("training", 4, 10)
        progress.step(8, 32)  # mean_loss of a periodic validation pass
    assert [p.text() for p in heard][-1].startswith("training 4/10")


def test_a_failing_listener_never_fails_the_run():
    def broken(_):
        raise RuntimeError("listener down")

    with progress.reporting_to(broken):
        progress.report("training", 1, 2)  # no exception


def test_the_log_prints_the_first_step_at_once_and_status_reads_the_file(tmp_path):
    lines = []
    shown = ProgressLog(tmp_path, lines.append, lambda run_id: "[1/4]")
    shown.on_progress("r1", Progress("loading", at=1.0))
    shown.on_progress("r1", Progress("allocating", at=2.0))  # a phase a moment later: quiet
    shown.on_progress("r1", Progress("training", 0, 13, at=3.0))
    shown.on_progress("r1", Progress("training", 1, 13, at=4.0, seconds_per_step=1.0))
    shown.on_progress("r1", Progress("training", 2, 13, at=5.0, seconds_per_step=1.0))
    assert lines == ["[1/4] loading", "[1/4] training 1/13 (1.0 s/step)"]
    shown.done("r2")  # writes the file now
    assert read_progress(tmp_path)["r1"]["step"] == 2
    shown.done("r1")
    assert read_progress(tmp_path) == {}


def test_stall_bound_follows_the_runs_own_pace(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr("adaptive_lora.study.ray_progress.time.monotonic", lambda: clock["now"])
    watch = StallWatch(floor_s=30, factor=10)
    watch.started("slow")
    watch.started("quick")
    for t in (5.0, 10.0):  # quick reports every 5 s
        clock["now"] = t
        watch.heard("quick")
    clock["now"] = 40.0  # slow: silent 40 s since its start, past the 30 s floor
    watch.heard("quick")  # a 30 s silence: its bound grows to 300 s
    assert [run_id for run_id, _, _ in watch.stalled()] == ["slow"]
    assert watch.bound("quick") == 300 and watch.bound("slow") == 30
    clock["now"] = 341.0
    assert {run_id for run_id, _, _ in watch.stalled()} == {"slow", "quick"}


def test_an_in_process_study_prints_each_runs_step(tmp_path):
    from tiny import save_tiny, tiny_llama, write_tiny_study

    model = save_tiny(tiny_llama(), tmp_path / "m")
    study = load_study(write_tiny_study(tmp_path / "s", model, max_steps=2))
    lines = []
    run_study(study, quiet=True, log=lines.append)
    steps = [line for line in lines if re.match(r"\[\d/4\] training 1/2 \(", line)]
    assert len(steps) == 4, lines
    assert read_progress(study.out) == {}  # nothing running once the study ends


def test_the_estimate_before_any_run_comes_from_the_model_and_this_machine(tmp_path):
    from adaptive_lora.config import RunConfig
    from adaptive_lora.study import cost_model
    from tiny import save_tiny, tiny_llama

    model = save_tiny(tiny_llama(), tmp_path / "m")
    params, _, _ = cost_model.model_shape(model)
    assert params == sum(p.numel() for p in tiny_llama().parameters())
    seconds = [
        cost_model.estimated_seconds(
            RunConfig.from_dict({"model": model, "train": {"max_steps": steps}}), threads=1
        )
        for steps in (10, 20, 30)
    ]
    assert seconds[0] > cost_model.SETUP_S
    # Training is the only part that grows with the steps, and it grows in proportion.
    assert seconds[2] - seconds[1] == pytest.approx(seconds[1] - seconds[0], rel=1e-9)
    missing = RunConfig.from_dict({"model": str(tmp_path / "no-such-model")})
    assert cost_model.estimated_seconds(missing, threads=1) is None
