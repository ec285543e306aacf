"""Studies on Ray: parallel workers, a simulated two-node cluster, dead workers, bad requests.

Ray stays on this machine (127.0.0.1, no dashboard); every test is bounded in time
and shuts down the Ray it started.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from adaptive_lora.cli import main
from adaptive_lora.cli.status import format_status
from adaptive_lora.records import METRIC_KEYS
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore

ray = pytest.importorskip("ray")

# How long a run took, not what it computed: everything else must match bit for bit.
TIMINGS = {
    "train_seconds",
    "eval_seconds",
    "allocation_seconds",
    "tokens_per_second",
    "peak_memory_mb",
}


@pytest.fixture
def time_limit():
    """Fail a test that runs past its limit instead of hanging the suite; a test stuck
    in Ray's C++ code (where no Python signal handler runs) ends the process soon after."""

    def on_alarm(signum, frame):
        raise TimeoutError("test ran past its time limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)

    def limit(seconds: int) -> None:
        signal.alarm(seconds)
        faulthandler.dump_traceback_later(seconds + 30, exit=True, file=sys.__stderr__)

    yield limit
    signal.alarm(0)
    faulthandler.cancel_dump_traceback_later()
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def no_ray_left():
    """Whatever a test started, Ray is down after it."""
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from tiny import save_tiny, tiny_llama

    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("model") / "m")


def write_study(folder: Path, model: str, *, max_steps: int = 2, **changes) -> Path:
    from tiny import write_tiny_study

    return write_tiny_study(folder, model, max_steps=max_steps, **changes)


def stored(study) -> dict:
    with StudyStore.open(study.store_path, create=False) as store:
        return {row.id: row for row in store.rows()}


def attempts(study) -> list[tuple[str, int, str]]:
    with StudyStore.open(study.store_path, create=False) as store:
        return [(a["run_id"], a["attempt"], a["status"]) for a in store.attempts()]


def computed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def assert_all_done_once(study) -> None:
    """Every run done, with its folder; every attempt ended (none left running)."""
    rows = stored(study)
    assert {r.status for r in rows.values()} == {"done"}
    assert all(status in ("done", "interrupted") for _, _, status in attempts(study))
    for run_id, row in rows.items():
        assert [a for a in attempts(study) if a[0] == run_id][-1][2] == "done"
        folder = study.out / row.run_dir
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test_loss"] == row.metrics["test_loss"]
        assert (folder / "adapter").is_dir() and (folder / "manifest.json").is_file()


# ---------------------------------------------------------------------- default suite


def test_two_workers_match_the_in_process_executor(tmp_path, tiny_model, time_limit, no_ray_left):
    time_limit(240)
    local = load_study(write_study(tmp_path / "local", tiny_model))
    run_study(local, log=lambda line: None)
    path = write_study(tmp_path / "ray", tiny_model)
    assert main(["run", str(path), "--workers", "2", "--threads-per-run", "1", "--quiet"]) == 0
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    on_ray = load_study(path)
    assert on_ray.run_ids == local.run_ids
    assert_all_done_once(on_ray)
    want, got = stored(local), stored(on_ray)
    for run_id in local.run_ids:
        assert set(METRIC_KEYS) <= set(got[run_id].metrics)
        assert computed(got[run_id].metrics) == computed(want[run_id].metrics), run_id
        manifest = got[run_id].manifest
        assert manifest["hostname"] and manifest["device"] == "cpu"
        assert manifest["worker"]["pid"] != os.getpid() and manifest["worker"]["threads"] == 1
        on_disk = json.loads((on_ray.out / got[run_id].run_dir / "manifest.json").read_text())
        assert on_disk["worker"] == manifest["worker"]
    assert "running now" not in format_status(on_ray)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--address", "127.0.0.1:{port}"], "cannot reach the Ray cluster"),
        (["--workers", "1", "--threads-per-run", "4096"], "no node of this machine"),
        (["--workers", "1", "--gpus-per-run", "64"], "no node of this machine"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--threads-per-run", "1"], "need --workers N or --address"),
    ],
)
def test_bad_cluster_or_resources_are_one_line_errors_before_any_run(
    tmp_path, tiny_model, time_limit, no_ray_left, capsys, flags, message
):
    time_limit(60)
    path = write_study(tmp_path, tiny_model)
    flags = [f.format(port=_free_port()) for f in flags]
    assert main(["run", str(path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "study.db").exists()


def test_resources_key_of_a_study(tmp_path, tiny_model):
    path = write_study(tmp_path, tiny_model, resources={"threads_per_run": 1, "gpus_per_run": 0})
    assert load_study(path).resources == {"threads_per_run": 1, "gpus_per_run": 0}
    bad = write_study(tmp_path / "bad", tiny_model, resources={"cores": 2})
    with pytest.raises(Exception, match="unknown resources key"):
        load_study(bad)


# ---------------------------------------------------------------------- slow


@pytest.mark.slow
def test_a_two_node_cluster_runs_a_study_on_both_nodes(
    tmp_path, tiny_model, time_limit, no_ray_left, monkeypatch
):
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    time_limit(300)
    # Ray replaces a loopback address by this machine's interface address unless it
    # thinks it cannot cluster; the nodes here listen on 127.0.0.1 only.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        # Runs long enough that the second worker is up before the first one is done.
        path = write_study(tmp_path, tiny_model, max_steps=40)
        assert main(["run", str(path), "--address", cluster.address, "--quiet"]) == 0
        study = load_study(path)
        assert_all_done_once(study)
        nodes = {row.manifest["worker"]["node_id"] for row in stored(study).values()}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def _runs_on_workers(study, proc, want: int, timeout: float = 180) -> dict[str, int]:
    """Wait until the store shows `want` runs started on worker processes (not the
    driver `proc`); their run id → worker pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        if study.store_path.exists():
            conn = sqlite3.connect(study.store_path, timeout=10)
            try:
                rows = conn.execute(
                    "SELECT id, pid FROM runs WHERE status = 'running' AND started_at IS NOT NULL"
                ).fetchall()
            except sqlite3.OperationalError:  # schema not written yet
                rows = []
            finally:
                conn.close()
            on_workers = {run_id: pid for run_id, pid in rows if pid != proc.pid}
            if len(on_workers) >= want:
                return on_workers
        time.sleep(0.05)
    pytest.fail(f"{want} run(s) never started on workers")


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_mid_run_loses_nothing(tmp_path, tiny_model, time_limit, retries):
    time_limit(420)
    path = write_study(tmp_path, tiny_model, max_steps=200)
    study = load_study(path)
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(path), "--quiet"]
    flags = ["--workers", "2", "--threads-per-run", "1", "--max-retries", str(retries)]
    proc = subprocess.Popen(command + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        killed, pid = next(iter(_runs_on_workers(study, proc, want=1).items()))
        os.kill(pid, signal.SIGKILL)  # the run was handed to it: it dies mid-run
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = stored(study)
    if retries:  # retried on another worker within the same attempt
        assert_all_done_once(study)
        assert rows[killed].attempts == 1 and rows[killed].manifest["worker"]["attempt"] == 2
        return
    assert rows[killed].status == "pending" and "interrupted" in rows[killed].reason
    assert {r.status for i, r in rows.items() if i != killed} == {"done"}
    done_before = {i: r.ended_at for i, r in rows.items() if i != killed}
    assert main(["run", str(path), "--workers", "2", "--threads-per-run", "1", "--quiet"]) == 0
    assert_all_done_once(study)
    rows = stored(study)
    assert {i: r.ended_at for i, r in rows.items() if i != killed} == done_before
    assert [a[2] for a in attempts(study) if a[0] == killed] == ["interrupted", "done"]


@pytest.mark.slow
def test_sigterm_stops_a_ray_study_its_workers_and_ray(tmp_path, tiny_model, time_limit):
    """`kill` of `run --workers 2` mid-run (ray.init installs a SIGTERM handler of its
    own; ours must win): one line, exit 143, both started runs pending with the reason,
    the worker processes gone, and a second `run` finishes the study."""
    time_limit(420)
    path = write_study(tmp_path, tiny_model, max_steps=200)
    study = load_study(path)
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(path), "--quiet"]
    flags = ["--workers", "2", "--threads-per-run", "1"]
    proc = subprocess.Popen(command + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        running = _runs_on_workers(study, proc, want=2)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, lines[-20:]
    assert lines[-1] == "adaptive-lora: stopped by SIGTERM"
    rows = stored(study)
    for run_id in running:
        assert (rows[run_id].status, rows[run_id].reason) == ("pending", "stopped by SIGTERM")
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) for pid in running.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(psutil.pid_exists(pid) for pid in running.values())
    assert main(["run", str(path), *flags]) == 0
    assert {row.status for row in stored(study).values()} == {"done"}
    for run_id in running:  # the stopped attempt, then the one that finished it
        assert [a[2] for a in attempts(study) if a[0] == run_id] == ["error", "done"]
