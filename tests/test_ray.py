"""Studies on Ray: parallel workers, a simulated two-node cluster, dead workers, bad requests.

Ray stays on this machine (127.0.0.1, no dashboard); every test is bounded in time
and shuts down the Ray it started.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from adaptive_lora.cli import main
from adaptive_lora.cli.status import format_status
from adaptive_lora.model.loading import cache_root
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


PER_SEED = {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 128,
            "template": "chat", "split": "per_seed"}  # fmt: skip


def test_two_workers_match_the_in_process_executor(tmp_path, tiny_model, time_limit, no_ray_left):
    time_limit(240)
    local = load_study(write_study(tmp_path / "local", tiny_model, data=PER_SEED))
    run_study(local, log=lambda line: None)
    path = write_study(tmp_path / "ray", tiny_model, data=PER_SEED)
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
    # Each seed draws its own split: its two runs never ran side by side (`dispatch`), so
    # the second read the first's untrained losses instead of measuring them again.
    for seed in (0, 1):
        first, second = sorted((r for r in got.values() if r.seed == seed), key=_start)
        assert second.started_at >= first.ended_at, seed


def _start(row) -> str:
    return row.started_at


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
    with pytest.raises(Exception, match="resources: unknown key"):
        load_study(bad)


def _raylet_of(pid: int) -> psutil.Process:
    """The raylet of the local Ray that the `run` process `pid` started (its child)."""
    found = [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "raylet"]
    found = [p for p in found if p.status() != psutil.STATUS_ZOMBIE]
    assert len(found) == 1, found
    return found[0]


def _interrupted_within(study, wanted: dict[str, int], seconds: float) -> float:
    """Seconds until each run of `wanted` has that many attempts ended as interrupted
    (fail after `seconds`)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        ended = [a[0] for a in attempts(study) if a[0] in wanted and a[2] == "interrupted"]
        if {run_id: ended.count(run_id) for run_id in wanted} == wanted:
            return time.monotonic() - start
        time.sleep(0.2)
    pytest.fail(f"runs {sorted(wanted)} not back to pending {seconds:.0f} s after the kill")


def _kill_the_raylet_and_see_the_runs_restart(study, proc) -> tuple[dict, dict]:
    """SIGKILL of the study's local raylet once both runs are on workers: within 30 s both
    are pending again, then Ray restarts and both start on new workers. Returns (run id →
    worker pid) before and after."""
    first = _runs_on_workers(study, proc, want=2)
    _raylet_of(proc.pid).kill()
    assert _interrupted_within(study, dict.fromkeys(first, 1), 30) < 30
    second = {}
    while len(second) < 2:  # the local Ray restarted: runs start on new workers
        second = {
            i: pid
            for i, pid in _runs_on_workers(study, proc, want=2).items()
            if pid not in first.values()
        }
    return first, second


def test_after_the_local_rays_restart_sigterm_still_stops_the_study_cleanly(
    tmp_path, tiny_model, time_limit, no_ray_left
):
    """SIGKILL of the local raylet mid-run: Ray restarts once and the runs start again on
    new workers; then `kill` (SIGTERM): ray.init, run again, had set its own handler (exit
    at once, then its core worker aborted: exit 134); the study's is put back, so the stop
    is the clean one — one line, exit 143, the started runs pending, and none of Ray's
    own dumps on the terminal."""
    time_limit(420)
    path = write_study(tmp_path, tiny_model, max_steps=200)
    study = load_study(path)
    flags = ["--quiet", "--workers", "2", "--threads-per-run", "1"]
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(path), *flags]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first, second = _kill_the_raylet_and_see_the_runs_restart(study, proc)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, lines[-20:]
    assert lines[-1] == "adaptive-lora: stopped by SIGTERM"
    # Ray's own notice of the dead raylet (its log's last lines, `[state-dump]` and all)
    # goes to the session's log, not the terminal.
    ray_noise = [line for line in [*lines, *out.decode().splitlines()] if "state-dump" in line]
    assert not ray_noise, ray_noise[:5]
    rows = stored(study)
    for run_id in second:
        assert (rows[run_id].status, rows[run_id].reason) == ("pending", "stopped by SIGTERM")


@pytest.mark.slow
def test_a_dead_raylet_is_noticed_the_local_ray_restarts_once_then_the_study_stops(
    tmp_path, tiny_model, time_limit, no_ray_left
):
    """SIGKILL of the local raylet mid-run: within 30 s both runs are pending again (their
    attempts recorded), Ray restarts and the runs start again; killed a second time, the
    study stops with exit 1 and the command that resumes it; the next `run` finishes it
    with nothing lost or run twice, and no worker process is left."""
    time_limit(420)
    path = write_study(tmp_path, tiny_model, max_steps=200)
    study = load_study(path)
    flags = ["--quiet", "--workers", "2", "--threads-per-run", "1"]
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(path), *flags]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first, second = _kill_the_raylet_and_see_the_runs_restart(study, proc)
        _raylet_of(proc.pid).kill()
        wanted = {run_id: 1 + (run_id in first) for run_id in second}
        assert _interrupted_within(study, wanted, 30) < 30
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    died = [line for line in out.decode().splitlines() if "died:" in line]
    assert len(died) == 1 and died[0].startswith("Ray node 127.0.0.1 ("), died
    assert died[0].endswith("2 run(s) back to pending; restarting the local Ray once and going on")
    assert proc.returncode == 1, err.decode()[-2000:]
    last = err.decode().strip().splitlines()[-1]
    assert "died a second time: 2 run(s) back to pending; resume with: adaptive-lora run" in last
    assert last.endswith(f"run {path} {' '.join(flags)}"), last
    for pid in [*first.values(), *second.values()]:  # no worker left behind
        deadline = time.monotonic() + 30
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert main(["run", str(path), *flags]) == 0
    assert_all_done_once(study)
    for run_id in {*first, *second}:
        ended = [a[2] for a in attempts(study) if a[0] == run_id]
        assert ended[-1] == "done" and set(ended[:-1]) <= {"interrupted"}, (run_id, ended)


def test_a_dead_node_of_a_cluster_hands_back_only_its_runs(tmp_path, tiny_model, monkeypatch):
    """Without Ray: the runs on the dead node come back interrupted (pending, the attempt
    recorded) and are queued again for the nodes left; the other node's run goes on."""
    from collections import deque

    import adaptive_lora.study.ray_executor as ray_executor
    from adaptive_lora.study.executor import Where

    monkeypatch.setattr(ray_executor, "_alive_nodes", lambda: [{"CPU": 1.0}])
    lines: list[str] = []
    executor = ray_executor.RayExecutor(address="10.0.0.1:6379", workers=2, log=lines.append)
    pool = ray_executor._Pool(executor)
    specs = load_study(write_study(tmp_path, tiny_model)).runs
    for i, node_id in enumerate(["aaaa1111", "bbbb2222"]):
        worker = ray_executor._Worker(object(), Where("vm", 10 + i), node_id)
        pool.busy[f"ref{i}"] = (worker, specs[i], 0)
    queue: deque = deque(specs[2:])
    dead = ray_executor._DeadNode("bbbb2222", "10.0.0.2", drivers=False)
    results = list(executor._node_died(dead, pool, queue, {specs[1].run_id: 1}, tmp_path))
    assert [(r.run_id, r.status) for r in results] == [(specs[1].run_id, "interrupted")]
    assert results[0].error == "its Ray node 10.0.0.2 (bbbb2222) died"
    assert list(queue) == [specs[1], *specs[2:]]  # first in line for the nodes left
    assert [spec.run_id for _, spec, _ in pool.busy.values()] == [specs[0].run_id]
    assert lines == [
        "Ray node 10.0.0.2 (bbbb2222) died: 1 run(s) back to pending, to run again on the "
        "1 node(s) left"
    ]


def test_the_drivers_node_of_a_cluster_dead_stops_the_study_with_the_resume_command(
    tmp_path, tiny_model, monkeypatch
):
    from collections import deque

    import adaptive_lora.study.ray_executor as ray_executor
    from adaptive_lora.study.executor import Where

    monkeypatch.setattr(sys, "argv", ["adaptive-lora", "run", "s.yaml", "--address", "h:1"])
    executor = ray_executor.RayExecutor(address="h:1", workers=1, log=lambda _: None)
    pool = ray_executor._Pool(executor)
    spec = load_study(write_study(tmp_path, tiny_model)).runs[0]
    pool.busy["ref"] = (ray_executor._Worker(object(), Where("vm", 10), "aaaa1111"), spec, 0)
    dead = ray_executor._DeadNode("aaaa1111", "10.0.0.1", drivers=True)
    outcome = executor._node_died(dead, pool, deque(), {}, tmp_path)
    assert next(outcome).status == "interrupted"  # pending again before the study stops
    with pytest.raises(ray_executor.ClusterLost) as stop:
        next(outcome)
    assert stop.value.exit_code == 1 and str(stop.value) == (
        "Ray node 10.0.0.1 (aaaa1111) died: 1 run(s) back to pending; "
        "resume with: adaptive-lora run s.yaml --address h:1"
    )


# ---------------------------------------------------------------------- who may connect


def _listening(process: psutil.Process) -> list[str]:
    """`ip:port` of every TCP socket that `process` or its children listen on."""
    found = []
    for proc in [process, *process.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [f"{c.laddr.ip}:{c.laddr.port}" for c in connections if c.status == "LISTEN"]
    return found


def test_the_local_ray_listens_on_the_loopback_only_and_refuses_clients_without_its_token(
    time_limit, no_ray_left
):
    from adaptive_lora.study.ray_executor import RayExecutor, Resources, answers

    time_limit(120)
    before = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    executor = RayExecutor(workers=1, resources=Resources(threads_per_run=1), log=lambda _: None)
    executor.connect()
    try:
        worker = executor._start_worker()
        ray.get(worker.where.remote(), timeout=60)  # a worker listens too
        listening = _listening(psutil.Process())
        assert listening and all(
            a.rsplit(":", 1)[0] in ("127.0.0.1", "::ffff:127.0.0.1") for a in listening
        ), listening
        gcs = ray.get_runtime_context().gcs_address
        assert gcs.startswith("127.0.0.1:")
        assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN"]
        assert answers(gcs, token=False) is False  # a client without the token: refused
        assert answers(gcs, token=True) is True  # the same client with it: answered
        # Its sessions, sockets and logs in a private folder under the user's cache.
        temp = Path(ray._private.worker._global_node.get_temp_dir_path())
        assert temp == cache_root() / "ray" / "t"
        assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700  # Ray makes its own 0777
        assert Path(ray._private.worker._global_node.get_session_dir_path()).parent == temp
    finally:
        executor.close()
    assert {name: os.environ.get(name) for name in before} == before  # the token is gone


def test_rays_own_messages_go_to_its_session_log_not_the_terminal(time_limit, no_ray_left, capfd):
    """A message on Ray's error channel (what a dead raylet's agents publish: its log's
    last lines, `[state-dump]` and all) lands in the session's log while the executor
    holds Ray; after `close`, Ray prints as it did."""
    from ray._private import ray_constants
    from ray._private.utils import publish_error_to_driver

    from adaptive_lora.study.ray_executor import RayExecutor, Resources
    from adaptive_lora.study.ray_messages import LOG_NAME

    time_limit(120)
    executor = RayExecutor(workers=1, resources=Resources(threads_per_run=1), log=lambda _: None)
    printer = ray._private.worker.print_to_stdstream
    executor.connect()
    try:
        log = Path(ray._private.worker._global_node.get_logs_dir_path()) / LOG_NAME
        message = "Raylet is terminated.\n    [state-dump] DebugString() time ms: 0"
        gcs = ray._private.worker.global_worker.gcs_client
        publish_error_to_driver(ray_constants.RAYLET_DIED_ERROR, message, gcs_client=gcs)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            log.exists() and "state-dump" in log.read_text()
        ):
            time.sleep(0.2)
        assert "(raylet) Raylet is terminated." in log.read_text()
    finally:
        executor.close()
    out, err = capfd.readouterr()
    assert "state-dump" not in out + err
    assert ray._private.worker.print_to_stdstream is printer  # Ray's own printer is back


def test_rays_folder_is_private_under_the_cache_short_enough_for_its_sockets(
    tmp_path_factory, monkeypatch
):
    from adaptive_lora.study.ray_executor import SESSIONS_KEPT, SOCKET_PATH_MAX, ray_temp_dir

    tmp_path = tmp_path_factory.mktemp("r")  # short: the test's own folder name is long
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("ADAPTIVE_LORA_CACHE", str(tmp_path / "c"))
    private = tmp_path / "c" / "ray"
    private.mkdir(parents=True)
    os.chmod(private, 0o777)
    assert ray_temp_dir() == private / "t"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # made private
    # Ended sessions beyond the newest few are removed; one whose Ray still runs is kept.
    names = [f"session_2026-01-0{day}_00-00-00_000000_{pid}"
             for day, pid in enumerate([999999999, 999999998, os.getpid()] + [999999990] * 5, 1)]  # fmt: skip
    for name in names:
        (private / "t" / name).mkdir()
    ray_temp_dir()
    left = sorted(p.name for p in (private / "t").iterdir())
    assert left == sorted([names[2], *names[-SESSIONS_KEPT:]])
    # A cache path too long for Ray's socket paths: a private folder under the system's tmp.
    deep = tmp_path / ("x" * 80)
    monkeypatch.setenv("ADAPTIVE_LORA_CACHE", str(deep))
    short = Path(tempfile.mkdtemp(dir="/tmp"))  # the system's tmp, for the test
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    try:
        folder = ray_temp_dir()
        assert folder == short / f"adaptive-lora-ray-{os.getuid()}" / "t"
        assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
        socket = "session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"
        assert len(str(deep / "ray" / "t" / socket)) > SOCKET_PATH_MAX
        assert len(str(folder / socket)) <= SOCKET_PATH_MAX
    finally:
        shutil.rmtree(short)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "mine"))  # the user's own choice
    assert ray_temp_dir() is None


@pytest.fixture
def cluster_tmp(monkeypatch):
    """A `ray.cluster_utils.Cluster` keeps its sessions in Ray's default folder (`/tmp/ray`,
    open to every user, never cleaned): here they go to a private folder of their own,
    short enough for Ray's socket paths, removed after the test."""
    folder = tempfile.mkdtemp(prefix="alr-")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cluster_auth(monkeypatch, cluster_tmp):
    """Start a one-node cluster on 127.0.0.1 with `RAY_AUTH_MODE` set as asked; yields
    its address; the environment and this process's Ray auth settings come back after."""
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    from adaptive_lora.study.ray_executor import _reload_auth

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    clusters = []

    def start(mode: str) -> str:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
        monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
        _reload_auth()
        node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
        clusters.append(Cluster(initialize_head=True, head_node_args=node))
        return clusters[-1].address

    yield start
    ray.shutdown()
    for cluster in clusters:
        cluster.shutdown()
    monkeypatch.undo()
    _reload_auth()


def test_joining_a_cluster_without_authentication_warns_in_one_line(cluster_auth, time_limit):
    from adaptive_lora.study.ray_executor import RayExecutor

    time_limit(120)
    address = cluster_auth("disabled")
    lines: list[str] = []
    executor = RayExecutor(address=address, workers=1, log=lines.append)
    executor.connect()
    executor.close()
    warnings = [line for line in lines if line.startswith("warning")]
    assert warnings == [
        f"warning: the Ray cluster at {address} has no authentication: anyone who can reach "
        "it can run code there; start it with RAY_AUTH_MODE=token (README)"
    ]


def test_joining_a_token_cluster_without_its_token_is_a_one_line_error(
    cluster_auth, time_limit, monkeypatch, tmp_path, tiny_model, capsys
):
    from adaptive_lora.study.ray_executor import _reload_auth

    time_limit(120)
    address = cluster_auth("token")
    monkeypatch.delenv("RAY_AUTH_TOKEN")  # this client has no token (Ray would retry for minutes)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _reload_auth()
    path = write_study(tmp_path, tiny_model)
    assert main(["run", str(path), "--address", address]) == 2
    err = capsys.readouterr().err.strip()
    assert "refuses this process's token: set RAY_AUTH_MODE=token" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out" / "study.db").exists()


# ---------------------------------------------------------------------- slow


@pytest.mark.slow
def test_a_two_node_cluster_runs_a_study_on_both_nodes(
    tmp_path, tiny_model, time_limit, no_ray_left, monkeypatch, cluster_tmp
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


@pytest.mark.slow
def test_a_dead_node_of_a_cluster_leaves_the_study_to_the_nodes_left(
    tmp_path, tiny_model, time_limit, no_ray_left, monkeypatch, capsys, cluster_tmp
):
    import threading

    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    time_limit(300)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        path = write_study(tmp_path, tiny_model, max_steps=200)
        study = load_study(path)
        killed: list[str] = []

        def kill_the_second_node_mid_run() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not killed:
                rows = stored(study) if study.store_path.exists() else {}
                running = [r for r in rows.values() if r.status == "running" and r.started_at]
                if len(running) == 2:
                    killed.append(second.unique_id)
                    cluster.remove_node(second, allow_graceful=False)
                time.sleep(0.2)

        killer = threading.Thread(target=kill_the_second_node_mid_run, daemon=True)
        killer.start()
        assert main(["run", str(path), "--address", cluster.address, "--quiet"]) == 0
        killer.join(timeout=5)
        assert killed
        out = capsys.readouterr().out
        assert_all_done_once(study)
        # Noticed either as the node's death or as its worker's, whichever Ray says first.
        assert "died: 1 run(s) back to pending, to run again on the 1 node(s) left" in out or (
            "its worker died; retrying" in out
        ), out
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_frozen_worker_is_noticed_and_its_run_goes_back(tmp_path, tiny_model, time_limit):
    """SIGSTOP a worker mid-run: the driver hears no progress from it past the bound (its
    floor set low here), stops it, and the run goes back to pending; the others finish."""
    from adaptive_lora.study import ray_executor

    time_limit(300)
    path = write_study(tmp_path, tiny_model, max_steps=200)
    study = load_study(path)
    command = [sys.executable, "-m", "adaptive_lora.cli", "run", str(path), "--quiet"]
    flags = ["--workers", "1", "--threads-per-run", "1", "--max-retries", "0"]
    env = {**os.environ, "ADAPTIVE_LORA_STALL_FLOOR_S": "6"}
    proc = subprocess.Popen(
        command + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        frozen, pid = next(iter(_runs_on_workers(study, proc, want=1).items()))
        assert psutil.Process(pid).nice() == 0  # a study owns its machine: not Ray's 15
        time.sleep(1)  # into training: the run has reported its pace
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert re.search(r"\[1/4\] (loading|allocating|training \d+/200)", text), text[-2000:]
    match = re.search(rf"{frozen}: no progress for (\d+) s \(bound (\d+) s\)", text)
    assert match, text[-3000:]
    silent, bound = int(match[1]), int(match[2])
    assert bound >= 6 and silent <= bound + 3 * ray_executor.NODE_CHECK_S + 1
    rows = stored(study)
    assert rows[frozen].status == "pending" and "stalled" in rows[frozen].reason
    assert {r.status for i, r in rows.items() if i != frozen} == {"done"}
    assert time.monotonic() - stopped_at < 200
