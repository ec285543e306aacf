"""The Ray executor: runs on Ray workers, on this machine (`--workers`) or a cluster (`--address`).

Each worker is a Ray actor that holds `threads_per_run` CPUs (and `gpus_per_run`
GPUs, `memory_gb`), sets torch's intra-op threads and OpenMP/MKL's to that share
before its first tensor op, and loads each model once for all the runs it gets. A
run executes in a scratch folder on the worker and comes back, with its
`RunResult`, as a tar archive through Ray's object store; the driver unpacks it into
the study's `runs/<id>/` and stays the only writer of the store, so no shared file
system is needed.

Faults: a worker that dies mid-run (SIGKILL) is replaced and the run is retried on
another worker up to `max_retries` times, then handed back `interrupted` (the runner
makes it pending again). A dead node is noticed within seconds (`NODE_CHECK_S`; Ray's
own notice may never reach the driver when the dead node is its own): the runs in flight
there come back `interrupted` (pending, the attempt recorded) and one line says what
happens next. On the local Ray, the executor restarts it once and runs them again; on a
cluster, it goes on with the nodes left; when the driver's own node of a cluster dies, or
the local Ray dies a second time, the study stops with exit status 1 and the command that
resumes it. An address that cannot be reached, a cluster that wants a token this
process lacks, or a resource request that no node can meet, is a one-line `UserError`
from `connect()`, before any run starts.

Only its owner can use the local Ray: it listens on 127.0.0.1 only, and token
authentication is on whatever Ray's default, with a token made for it alone, kept in
the environment of its processes (readable by their owner only), never on disk.
Joining a cluster (`--address`) that answers clients without a token prints one warning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import ray
import ray.exceptions
import torch

from adaptive_lora import progress
from adaptive_lora.errors import UserError, one_line
from adaptive_lora.model.loading import cache_root, load_model
from adaptive_lora.progress import Progress
from adaptive_lora.records import STATUS_FAILED, STATUS_INTERRUPTED, RunResult, write_json
from adaptive_lora.run import execute_run
from adaptive_lora.study.dispatch import take_next
from adaptive_lora.study.executor import Stopped, Where, resume_command
from adaptive_lora.study.ray_messages import RayMessagesToLog
from adaptive_lora.study.ray_progress import STALL_FLOOR_S, ProgressBoard, StallWatch, worker_sink
from adaptive_lora.study.spec import RunSpec

GIB = 2**30
START_TIMEOUT_S = 300.0  # how long a study waits for its first worker before giving up
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # run folders are a few MB each; keep /dev/shm free
NODE_CHECK_S = 2.0  # how often the driver looks for dead nodes while it waits
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# What Ray raises for a run whose worker, node or result object went away.
_LOST = tuple(
    getattr(ray.exceptions, name)
    for name in ("RayActorError", "ObjectLostError", "NodeDiedError")
    if hasattr(ray.exceptions, name)
)


@dataclass(frozen=True)
class Resources:
    """What one run takes from a worker; None: decided when connecting (see `connect`)."""

    threads_per_run: int | None = None
    gpus_per_run: float = 0.0
    memory_gb: float | None = None

    @classmethod
    def merge(cls, study: dict[str, Any], **flags: Any) -> Resources:
        """The study's `resources`, each value overridden by a flag that was given."""
        values = {**study, **{k: v for k, v in flags.items() if v is not None}}
        threads = values.get("threads_per_run")
        memory = values.get("memory_gb")
        return cls(
            threads_per_run=int(threads) if threads else None,
            gpus_per_run=float(values.get("gpus_per_run") or 0.0),
            memory_gb=float(memory) if memory else None,
        )

    def text(self) -> str:
        parts = [f"{self.threads_per_run} thread(s)"]
        if self.gpus_per_run:
            parts.append(f"{self.gpus_per_run:g} GPU")
        if self.memory_gb:
            parts.append(f"{self.memory_gb:g} GB")
        return ", ".join(parts) + " per run"


# ---------------------------------------------------------------------- the worker


def _pack(folder: Path) -> bytes:
    """The run folder as an uncompressed tar (adapters barely compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=folder.name)
    return buffer.getvalue()


@ray.remote(max_restarts=0, max_task_retries=0)
class RunWorker:
    """One worker process: runs one run at a time, each model loaded once."""

    def __init__(self, threads: int, cwd: str):
        # Before any tensor op: more threads than the share oversubscribes the cores.
        torch.set_num_threads(threads)
        if os.path.isdir(cwd):  # relative model and data paths mean what they mean on the driver
            os.chdir(cwd)
        self._models: dict[str, Any] = {}
        context = ray.get_runtime_context()
        self._facts = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id(),
            "actor_id": context.get_actor_id(),
            "threads": torch.get_num_threads(),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        }

    def where(self) -> tuple[Where, str]:
        """Host, pid and actor of this worker, and its node's id (also: the worker is up)."""
        facts = self._facts
        where = Where(facts["host"], facts["pid"], f"actor {facts['actor_id'][:8]}")
        return where, facts["node_id"]

    def run(self, spec: RunSpec, attempt: int, board: Any = None) -> tuple[str, Any, bytes]:
        """Execute one run in a scratch folder, its progress sent to `board`; return
        ("result", RunResult, tar of the folder), or ("user_error", message, b"") for a
        `UserError` (it ends the study)."""
        scratch = Path(tempfile.mkdtemp(prefix="adaptive-lora-run-"))
        sink = worker_sink(board, spec.run_id) if board is not None else None
        try:
            try:
                with progress.reporting_to(sink) if sink else contextlib.nullcontext():
                    result = self._execute(spec, scratch)
            except UserError as error:
                return "user_error", str(error), b""
            except Exception as error:  # a bug in one run must not end a night of runs
                run_dir = scratch / spec.run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "traceback.txt").write_text(traceback.format_exc())
                result = RunResult(spec.run_id, run_dir, STATUS_FAILED, error=one_line(error))
            result.manifest["worker"] = {**self._facts, "attempt": attempt}
            if (result.run_dir / "manifest.json").is_file():
                write_json(result.run_dir / "manifest.json", result.manifest)
            return "result", result, _pack(result.run_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _execute(self, spec: RunSpec, scratch: Path) -> RunResult:
        model = spec.config.model
        if model not in self._models:
            progress.report("loading")
            self._models[model] = load_model(model)
        return execute_run(
            spec.config, scratch, run_id=spec.run_id, loaded=self._models[model], quiet=True
        )


# ---------------------------------------------------------------------- the driver


def _unpack(archive: bytes, run_id: str, out_root: Path) -> Path:
    """Put a worker's run folder at `out_root/run_id` (replacing what is there)."""
    out_root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{run_id}-", dir=out_root))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(incoming, filter="data")  # no absolute paths, no links out
        target = out_root / run_id
        if target.exists():
            shutil.rmtree(target)
        (incoming / run_id).rename(target)
        return target
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _check_reachable(address: str) -> None:
    """A `host:port` that takes no TCP connection is an error now (Ray would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT or auto, got {address!r}")
    targets = [host]
    if host in ("127.0.0.1", "localhost", "::1"):
        # Ray dials this machine's interface address instead of the loopback one; a head
        # bound to 127.0.0.1 only would leave ray.init retrying for many minutes.
        targets.append(ray.util.get_node_ip_address())
    for target in dict.fromkeys(targets):
        try:
            socket.create_connection((target, int(port)), timeout=5).close()
        except OSError as error:
            via = f" (Ray connects to {target}:{port})" if target != host else ""
            raise UserError(
                f"cannot reach the Ray cluster at {address}{via}: {error.strerror or error}"
            ) from None


def _this_machine() -> dict[str, float]:
    """This machine's resources, as Ray names them."""
    return {
        "CPU": float(os.cpu_count() or 1),
        "GPU": float(torch.cuda.device_count()),
        "memory": float(psutil.virtual_memory().total),
    }


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _check_feasible(resources: Resources, nodes: list[dict[str, float]], where: str) -> None:
    """Some node must hold one run's threads, GPUs and memory, or no run could ever start."""
    need = {
        "CPU": float(resources.threads_per_run or 1),
        "GPU": resources.gpus_per_run,
        "memory": (resources.memory_gb or 0.0) * GIB,
    }
    if any(all(node.get(key, 0.0) >= amount for key, amount in need.items()) for node in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)), default={})
    raise UserError(
        f"no node of {where} can give a run {resources.text()}: its largest has "
        f"{largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs, "
        f"{largest.get('memory', 0) / GIB:.1f} GB"
    )


# ---------------------------------------------------------------------- Ray's own files

# Ray binds Unix sockets at <temp>/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store;
# the kernel takes at most 107 bytes for such a path, so the folder must leave room.
SOCKET_PATH_MAX = 107
_SESSION_TAIL = "/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"
SESSIONS_KEPT = 5  # finished session folders (Ray's logs) kept for a look after a failure
RAYS_OWN = "t"  # Ray's folder inside the private one (short: the socket paths count)


def ray_temp_dir() -> Path | None:
    """The folder a local Ray keeps its sessions, sockets and logs in: `ray/t` under the
    user's cache (`cache_root()`). Ray makes its own folder 0777, so it lies inside a
    private one (`ray/`, 0700): no other user can read its logs or reach its sockets
    (Ray's default `/tmp/ray` is open to every user, 0777 without the sticky bit). None
    when `RAY_TMPDIR` names one (the user's choice, Ray's to use).

    A cache path too long for Ray's socket paths falls back to a private
    `<tmp>/adaptive-lora-ray-<uid>` (the system's temporary folder, else `/tmp`), or a
    fresh private folder if that name is taken by something this user does not own.
    Old sessions beyond the last `SESSIONS_KEPT` are removed, never one whose Ray still
    runs.
    """
    if os.environ.get("RAY_TMPDIR"):
        return None
    mine = f"adaptive-lora-ray-{os.getuid()}"
    candidates = [cache_root() / "ray", Path(tempfile.gettempdir()) / mine, Path("/tmp") / mine]
    room = SOCKET_PATH_MAX - len(f"/{RAYS_OWN}{_SESSION_TAIL}")
    fits = [c for c in candidates if len(str(c)) <= room]
    private = fits[0] if fits else candidates[-1]
    try:
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = private.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise PermissionError(f"{private} is not a folder of this user")
        os.chmod(private, 0o700)
    except OSError:
        private = Path(tempfile.mkdtemp(prefix="adaptive-lora-ray-"))  # 0700, its own
    folder = private / RAYS_OWN
    folder.mkdir(exist_ok=True)
    _prune_sessions(folder)
    return folder


def _prune_sessions(folder: Path) -> None:
    """Remove the session folders of Rays that ended, all but the newest `SESSIONS_KEPT`."""
    sessions = sorted(
        (p for p in folder.glob("session_2*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: p.name,
    )
    for session in sessions[:-SESSIONS_KEPT]:
        pid = session.name.rsplit("_", 1)[-1]
        if pid.isdigit() and psutil.pid_exists(int(pid)):
            continue  # its Ray may still run (another study on this machine)
        shutil.rmtree(session, ignore_errors=True)


# ---------------------------------------------------------------------- who may connect


@contextlib.contextmanager
def _niceness(value: int) -> Iterator[None]:
    """While a local Ray starts: its workers at this niceness. Ray's default, 15, suits a
    shared cluster; a study owns the machine it starts Ray on, and at 15 a worker got ~20%
    of a core beside other work where an in-process run got its share."""
    before = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = before


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local Ray starts: keep 127.0.0.1 as its node address.

    Ray replaces a loopback node address by this machine's interface address (so that
    other machines could join) and its servers then listen on every interface; left at
    127.0.0.1, they listen on the loopback only. The switch is the one Ray itself flips
    on macOS and Windows, where it does not cluster.
    """
    import ray._private.ray_constants as constants

    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if before is None:  # a Ray without the switch: it binds where it binds
        yield
        return
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def _reload_auth() -> None:
    """Make this process's Ray read the auth variables again (it caches mode and token)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")  # the mode before the token, as Ray's own test helpers do
    AuthenticationTokenLoader.instance().reset_cache()


def _token_auth_on() -> dict[str, str | None]:
    """Token authentication for a local Ray about to start, with a token made for it alone;
    the token lives in the environment its processes inherit, never in a file another
    user might read. Returns the variables replaced (for `_restore_auth`)."""
    previous = {name: os.environ.get(name) for name in AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    _reload_auth()
    return previous


def _restore_auth(previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reload_auth()


# A Ray client that asks the GCS for its keys; exit 3 when the GCS refuses its token.
_PROBE = """\
import sys
import ray._raylet
from ray.exceptions import AuthenticationError
try:
    ray._raylet.GcsClient(address=sys.argv[1]).internal_kv_keys(b"", namespace=None, timeout=5)
except AuthenticationError:
    sys.exit(3)
"""


def answers(gcs_address: str, *, token: bool) -> bool | None:
    """Does the Ray cluster whose GCS is at `gcs_address` answer a client with this
    process's auth settings (`token=True`), or one that sends no token? None: cannot tell.

    In a child process: this process's Ray caches its auth settings, and `ray.init` to a
    cluster that refuses the token retries for minutes instead of saying so.
    """
    env = dict(os.environ)
    if not token:
        env = {name: value for name, value in env.items() if name not in AUTH_VARS}
        env["RAY_AUTH_MODE"] = "disabled"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, gcs_address], env=env, capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 3: False}.get(probe.returncode)


# ---------------------------------------------------------------------- dead nodes


class ClusterLost(Stopped):
    """The study cannot go on on this Ray (the driver's node died, or the local Ray twice):
    it stops as on a signal (started runs back to pending, exports written), exit status 1."""

    def __init__(self, message: str):
        KeyboardInterrupt.__init__(self, message)
        self.exit_code = 1


def _signal_handlers() -> dict[int, Any]:
    """SIGTERM's and SIGINT's Python handlers now ({} off the main thread: none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _put_back(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:  # None: a handler not set from Python, nothing to restore
            signal.signal(sig, handler)


@dataclass(frozen=True)
class _DeadNode:
    node_id: str
    address: str
    drivers: bool  # the driver's own node: nothing runs on this Ray without it

    def text(self) -> str:
        return f"Ray node {self.address} ({self.node_id[:8]})"


def _local_ray_died() -> bool:
    """Has the raylet or the GCS of the local Ray this process started died? (Seen from
    here at once; the GCS takes its health checks' time to mark a node dead, and when the
    node is the driver's own, the news may never reach the waiting driver.)"""
    node = getattr(ray._private.worker, "_global_node", None)
    try:
        dead = node.dead_processes() if node is not None else []
    except Exception:  # a private API: if it changed, the GCS's view below still holds
        return False
    return any(kind in ("raylet", "gcs_server") for kind, _ in dead)


class RayExecutor:
    """Runs specs on Ray workers (the `Executor` Protocol); see the module docstring.

    `workers=N` without `address` starts a local Ray on 127.0.0.1 with N workers;
    `address` ("HOST:PORT" or "auto") joins a running cluster, with `workers` (default:
    as many as its CPUs hold) workers there. Threads per run default to the cores
    (the cluster's CPUs) divided by the workers, at least 1.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        resources: Resources = Resources(),
        max_retries: int = 1,
        log: Callable[[str], None] = print,
        stall_floor_s: float = STALL_FLOOR_S,
    ):
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if max_retries < 0:
            raise UserError(f"--max-retries must be >= 0, got {max_retries}")
        self.workers = workers
        self.address = address
        self.resources = resources
        self.max_retries = max_retries
        self._log = log
        self._connected = False
        self._owns_ray = False  # shut Ray down at close() only if this executor began it
        self._auth_before: dict[str, str | None] | None = None  # set while a local Ray runs
        self._node_id: str | None = None  # the driver's node
        self._restarts = 0  # of the local Ray after its node died
        self._watch = StallWatch(stall_floor_s)
        self._stalls: dict[str, str] = {}  # run id → why its worker was stopped
        self._on_progress: Callable[[str, Progress], None] | None = None
        self._ray_messages = RayMessagesToLog()  # Ray's own notices: its log, not the terminal

    # -- connecting ----------------------------------------------------------------------
    def connect(self) -> None:
        """Start or join Ray and settle workers and threads; raises a one-line `UserError`
        (before any run starts) if the cluster cannot be reached or no node can hold a run."""
        if self._connected:
            return
        self._ray_messages.install()
        try:
            if self.address is None:
                self._start_local()
            else:
                self._join_cluster(self.address)
        except BaseException:
            self._ray_messages.uninstall()
            raise
        self._node_id = ray.get_runtime_context().get_node_id()
        self._connected = True
        self._log(
            f"Ray: {self.workers} worker(s), {self.resources.text()}"
            + (f", on the cluster at {self.address}" if self.address else ", on this machine")
        )

    def _warn_if_busy(self, cores: int) -> None:
        """One line when other work already holds the cores (runs will crawl and time
        nothing a report can compare)."""
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this system
            return
        if load >= 0.75 * cores:
            self._log(
                f"warning: this machine is busy (load average {load:.1f} on {cores} cores): "
                "runs will be slower, and their times not comparable with an idle machine's"
            )

    def _start_local(self) -> None:
        machine = _this_machine()
        cores = int(machine["CPU"])
        workers = self.workers or cores
        threads = self.resources.threads_per_run or max(1, cores // workers)
        self._settle(workers, threads)
        _check_feasible(self.resources, [machine], "this machine")
        if ray.is_initialized():
            return
        self._warn_if_busy(cores)
        self._auth_before = _token_auth_on()
        temp = ray_temp_dir()
        try:
            with _loopback_only(), _niceness(0):
                ray.init(
                    # More CPUs than cores only if the user asked for oversubscription.
                    num_cpus=max(cores, workers * threads),
                    num_gpus=int(machine["GPU"]),
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    **({"_temp_dir": str(temp)} if temp is not None else {}),
                )
        except BaseException:
            self.close()
            raise
        self._owns_ray = True

    def _join_cluster(self, address: str) -> None:
        if not ray.is_initialized():
            _check_reachable(address)
            gcs = None if address == "auto" or address.startswith("ray://") else address
            if gcs and answers(gcs, token=True) is False:
                raise UserError(
                    f"the Ray cluster at {address} refuses this process's token: set "
                    "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
                    "cluster's token (README: Parallel runs and Ray clusters)"
                )
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError, ...
                raise UserError(
                    f"cannot join the Ray cluster at {address}: {one_line(error)}"
                ) from None
            self._owns_ray = True
            self._warn_if_open(gcs or ray.get_runtime_context().gcs_address, address)
        nodes = _alive_nodes()
        cpus = [int(n.get("CPU", 0)) for n in nodes]
        threads = self.resources.threads_per_run
        if threads is None:
            # Cores over workers, but never more than one node has: a run lives on one node.
            threads = max(
                1, min(sum(cpus) // (self.workers or sum(cpus) or 1), max(cpus, default=1))
            )
        workers = self.workers or max(1, sum(c // threads for c in cpus))
        self._settle(workers, threads)
        try:
            _check_feasible(self.resources, nodes, f"the Ray cluster at {address}")
        except UserError:
            self.close()
            raise

    def _warn_if_open(self, gcs_address: str | None, address: str) -> None:
        """One line when the cluster answers clients that send no token (anyone who can
        reach its ports can then run code on it as the user who started it)."""
        if gcs_address and answers(gcs_address, token=False):
            self._log(
                f"warning: the Ray cluster at {address} has no authentication: anyone who "
                "can reach it can run code there; start it with RAY_AUTH_MODE=token (README)"
            )

    def _settle(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.resources = Resources(threads, self.resources.gpus_per_run, self.resources.memory_gb)

    def close(self) -> None:
        """Shut down (or leave) the Ray this executor started or joined."""
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._ray_messages.uninstall()
        if self._auth_before is not None:
            _restore_auth(self._auth_before)
            self._auth_before = None
        self._owns_ray = False
        self._connected = False

    def _restart_local(self) -> bool:
        """Start the local Ray again after its node died; False if it does not start.

        `ray.init` installs a SIGTERM handler of its own (exit at once; its core worker
        then aborts the process): the study's handlers, set when it began, are put back,
        so a `kill` after the restart still stops the study cleanly (exit 143)."""
        self._restarts += 1
        handlers = _signal_handlers()
        try:
            self.close()
            self.connect()
        except Exception as error:  # said in the line that stops the study
            self._log(f"the local Ray did not start again: {one_line(error)}")
            return False
        finally:
            _put_back(handlers)
        return True

    # -- running -------------------------------------------------------------------------
    def _start_worker(self) -> Any:
        threads = self.resources.threads_per_run or 1
        options: dict[str, Any] = {
            "num_cpus": threads,
            "num_gpus": self.resources.gpus_per_run,
            "scheduling_strategy": "SPREAD",  # across nodes first, like a cluster user expects
            # OpenMP and MKL read these when they load, before any code of ours runs.
            "runtime_env": {
                "env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            },
        }
        if self.resources.memory_gb:
            options["memory"] = int(self.resources.memory_gb * GIB)
        return RunWorker.options(**options).remote(threads, os.getcwd())

    def execute(
        self,
        specs: deque[RunSpec],
        out_root: Path,
        *,
        on_start: Callable[..., None],
        quiet: bool = False,
        on_progress: Callable[[str, Progress], None] | None = None,
    ) -> Iterator[RunResult]:
        """Run the specs of the queue on the workers; yield each result as its run folder
        lands in `out_root`. Calls `on_start(spec, where)` as a worker takes a run (again
        on a retry), and `on_progress(run_id, progress)` as its worker reports. One pool
        serves the whole queue, also what the runner appends to it."""
        self.connect()
        self._on_progress = on_progress
        pool = _Pool(self)
        tries: dict[str, int] = {}  # run id → failed attempts so far (worker deaths)
        try:
            while specs or pool.busy:
                pool.grow(min(self.workers or 1, len(specs) + len(pool.busy)))
                while specs and pool.idle:
                    spec = take_next(specs, pool.running())
                    pool.submit(spec, tries.get(spec.run_id, 0), on_start)
                yield from self._next_outcome(pool, specs, tries, Path(out_root))
        finally:
            pool.stop()

    def _next_outcome(
        self, pool: _Pool, specs: deque[RunSpec], tries: dict[str, int], out_root: Path
    ) -> Iterator[RunResult]:
        """Wait for the next event: a worker up, a run back, a worker dead (→ retry), or a
        node dead (→ its runs back to pending)."""
        ref, event = pool.wait(lambda: self._between_results(pool))
        if event == "up":
            return
        if isinstance(event, _DeadNode):
            yield from self._node_died(event, pool, specs, tries, out_root)
            return
        worker, spec, attempt = event
        self._watch.done(spec.run_id)
        try:
            kind, payload, archive = ray.get(ref)
        except _LOST as error:  # the worker process (or its node, or the result) is gone
            stall = self._stalls.pop(spec.run_id, None)
            # The next `grow` starts a fresh worker (another process, maybe another node).
            if attempt < self.max_retries:
                tries[spec.run_id] = attempt + 1
                specs.appendleft(spec)
                return
            reason = (
                f"it stalled: {stall}"
                if stall
                else f"its worker ({worker.where.text()}) died: {one_line(error)[:120]}"
            )
            yield RunResult(spec.run_id, out_root / spec.run_id, STATUS_INTERRUPTED, error=reason)
            return
        pool.idle.append(worker)
        if kind == "user_error":
            raise UserError(payload)
        payload.run_dir = _unpack(archive, spec.run_id, out_root)
        yield payload

    def _between_results(self, pool: _Pool) -> _DeadNode | None:
        """What the driver does while it waits: hears progress, stops stalled runs' workers,
        and looks for a dead node (returned)."""
        for run_id, latest in pool.take_progress().items():
            self._watch.heard(run_id)
            if self._on_progress is not None:
                self._on_progress(run_id, latest)
        for run_id, silent, bound in self._watch.stalled():
            self._watch.done(run_id)
            worker = pool.worker_of(run_id)
            if worker is None:
                continue
            why = f"no progress for {silent:.0f} s (bound {bound:.0f} s) on {worker.where.text()}"
            self._stalls[run_id] = why
            self._log(f"  {run_id}: {why}: stopping that worker; the run goes back to the queue")
            ray.kill(worker.actor)  # its reference then fails as a lost worker's does
        return self._dead_node(pool)

    def _dead_node(self, pool: _Pool) -> _DeadNode | None:
        """A dead node the study needs: the driver's, or one that holds its workers."""
        if self._owns_ray and self.address is None and _local_ray_died():
            return _DeadNode(self._node_id or "?", "127.0.0.1", drivers=True)
        try:
            nodes = ray.nodes()
        except Exception:  # the GCS does not answer: the cluster is gone with it
            return _DeadNode(self._node_id or "?", self.address or "127.0.0.1", drivers=True)
        dead = {node["NodeID"]: node for node in nodes if not node.get("Alive")}
        for node_id in (self._node_id, *sorted(pool.node_ids())):
            if node_id in dead:
                at = dead[node_id].get("NodeManagerAddress") or "?"
                return _DeadNode(node_id, at, drivers=node_id == self._node_id)
        return None

    def _node_died(
        self,
        dead: _DeadNode,
        pool: _Pool,
        specs: deque[RunSpec],
        tries: dict[str, int],
        out_root: Path,
    ) -> Iterator[RunResult]:
        """The runs in flight on `dead` go back to pending (each attempt recorded as
        interrupted); then: the nodes left take them, or the local Ray restarts once and
        takes them, or the study stops (exit 1) with the command that resumes it."""
        lost = pool.drop(None if dead.drivers else dead.node_id)
        back = f"{len(lost)} run(s) back to pending"
        local = dead.drivers and self._owns_ray and self.address is None
        restart = local and self._restarts == 0  # once: a Ray that dies again stays dead
        if not dead.drivers:
            left = len(_alive_nodes())
            self._log(f"{dead.text()} died: {back}, to run again on the {left} node(s) left")
        elif restart:
            self._log(f"{dead.text()} died: {back}; restarting the local Ray once and going on")
        for spec, _ in lost:
            tries.pop(spec.run_id, None)  # the next attempt starts afresh
            reason = f"its {dead.text()} died"
            yield RunResult(spec.run_id, out_root / spec.run_id, STATUS_INTERRUPTED, error=reason)
        if dead.drivers and not (restart and self._restart_local()):
            why = " and the local Ray did not start again" if restart else ""
            why = " a second time" if local and not restart else why
            raise ClusterLost(f"{dead.text()} died{why}: {back}; resume with: {resume_command()}")
        specs.extendleft(reversed([spec for spec, _ in lost]))


@dataclass
class _Worker:
    actor: Any
    where: Where
    node_id: str


class _Pool:
    """The workers of one `execute`: starting, idle and busy ones, all on Ray actors."""

    def __init__(self, executor: RayExecutor):
        self._executor = executor
        self._watch = executor._watch  # one watch per executor: the driver's clocks
        self._board: Any = None
        self.starting: dict[Any, Any] = {}  # where() reference → actor
        self.idle: list[_Worker] = []
        self.busy: dict[Any, tuple[_Worker, RunSpec, int]] = {}  # run reference → ...
        self._actors: list[Any] = []
        self.failed_starts = 0

    def grow(self, wanted: int) -> None:
        """Start workers until `wanted` are alive (starting, idle or busy): at the start,
        when the queue grows, and in place of one that died. A worker that dies while
        starting is not replaced more than the pool's size times over: something is
        wrong with every start then, and `wait` says so once none is left."""
        while self.alive < wanted and self.failed_starts < (self._executor.workers or 1):
            actor = self._executor._start_worker()
            self._actors.append(actor)
            self.starting[actor.where.remote()] = actor

    @property
    def alive(self) -> int:
        return len(self.starting) + len(self.idle) + len(self.busy)

    def node_ids(self) -> set[str]:
        """The nodes the pool's started workers are on."""
        return {w.node_id for w in self.idle} | {w.node_id for w, _, _ in self.busy.values()}

    def submit(self, spec: RunSpec, tries: int, on_start: Callable[..., None]) -> None:
        worker = self.idle.pop(0)
        on_start(spec, worker.where)
        self._watch.started(spec.run_id)
        self.busy[worker.actor.run.remote(spec, tries + 1, self.board())] = (worker, spec, tries)

    def board(self) -> Any:
        """The progress board of this pool's Ray (started again after a Ray restart)."""
        if self._board is None:
            self._board = ProgressBoard.remote()
        return self._board

    def take_progress(self) -> dict[str, Progress]:
        """The runs' progress since the last call ({} if the board cannot answer)."""
        try:
            return ray.get(self.board().take.remote(), timeout=NODE_CHECK_S)
        except Exception:  # noqa: BLE001 - Ray restarting or gone: progress is a courtesy
            self._board = None
            return {}

    def running(self) -> list[RunSpec]:
        return [spec for _, spec, _ in self.busy.values()]

    def worker_of(self, run_id: str) -> _Worker | None:
        return next((w for w, spec, _ in self.busy.values() if spec.run_id == run_id), None)

    def wait(self, dead_node: Callable[[], _DeadNode | None]) -> tuple[Any, Any]:
        """The next reference that is ready: ("up" for a worker that started, else the
        busy entry of the run); or (None, the dead node) as soon as `dead_node()`, asked
        every `NODE_CHECK_S`, finds one. Raises `UserError` when no worker can start."""
        if not self.starting and not self.busy:
            raise UserError("every Ray worker died before it could take a run")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pending = list(self.starting) + list(self.busy)
            try:
                ready, _ = ray.wait(pending, num_returns=1, timeout=NODE_CHECK_S)
            except ray.exceptions.RayError:  # Ray itself failing: a dead node, say so
                if (dead := dead_node()) is not None:
                    return None, dead
                raise
            if ready:
                break
            if (dead := dead_node()) is not None:
                return None, dead
            if not self.busy and not self.idle and time.monotonic() > deadline:
                raise UserError(
                    f"no Ray worker started in {START_TIMEOUT_S:.0f} s: does the cluster "
                    f"have {self._executor.resources.text()} free?"
                )
        ref = ready[0]
        if ref in self.busy:
            return ref, self.busy.pop(ref)
        actor = self.starting.pop(ref)
        try:
            where, node_id = ray.get(ref)
            self.idle.append(_Worker(actor, where, node_id))
        except ray.exceptions.RayError:  # died while starting: the others carry on
            self.failed_starts += 1
        return ref, "up"

    def drop(self, node_id: str | None) -> list[tuple[RunSpec, Where]]:
        """Forget the workers on `node_id` (None: every worker, the whole Ray is gone);
        the runs they had in flight."""

        def there(worker: _Worker) -> bool:
            return node_id is None or worker.node_id == node_id

        lost = [(spec, w.where) for w, spec, _ in self.busy.values() if there(w)]
        self.busy = {ref: entry for ref, entry in self.busy.items() if not there(entry[0])}
        self.idle = [w for w in self.idle if not there(w)]
        if node_id is None:  # handles of a Ray that is gone must not be used again
            self._board = None
            self.starting.clear()
            self._actors.clear()
            self.failed_starts = 0
        return lost

    def stop(self) -> None:
        """End every worker (also the busy ones, when the study stops early)."""
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead, or Ray is gone: nothing left to stop
                pass
