"""The Ray executor: runs on Ray workers, on this machine (`--workers`) or a cluster (`--address`).

Each worker is a Ray actor that holds `threads_per_run` CPUs (and `gpus_per_run`
GPUs, `memory_gb`), sets torch's intra-op threads and OpenMP/MKL's to that share
before its first tensor op, and loads each model once for all the runs it gets. A
run executes in a scratch folder on the worker and comes back, with its
`RunResult`, as a tar archive through Ray's object store; the driver unpacks it into
the study's `runs/<id>/` and stays the only writer of the store, so no shared file
system is needed.

Faults: a worker that dies mid-run (SIGKILL, a lost node) is replaced and the run is
retried on another worker up to `max_retries` times, then handed back `interrupted`
(the runner makes it pending again). An address that cannot be reached, or a
resource request that no node can meet, is a one-line `UserError` from `connect()`,
before any run starts.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tarfile
import tempfile
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

from adaptive_lora.errors import UserError, one_line
from adaptive_lora.model.loading import load_model
from adaptive_lora.records import STATUS_FAILED, STATUS_INTERRUPTED, RunResult, write_json
from adaptive_lora.run import execute_run
from adaptive_lora.study.executor import Where
from adaptive_lora.study.spec import RunSpec

GIB = 2**30
START_TIMEOUT_S = 300.0  # how long a study waits for its first worker before giving up
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # run folders are a few MB each; keep /dev/shm free


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

    def where(self) -> Where:
        """Host, pid and actor of this worker (also: the worker is up)."""
        facts = self._facts
        return Where(facts["host"], facts["pid"], f"actor {facts['actor_id'][:8]}")

    def run(self, spec: RunSpec, attempt: int) -> tuple[str, Any, bytes]:
        """Execute one run in a scratch folder; return ("result", RunResult, tar of the
        folder), or ("user_error", message, b"") for a `UserError` (it ends the study)."""
        scratch = Path(tempfile.mkdtemp(prefix="adaptive-lora-run-"))
        try:
            try:
                model = spec.config.model
                if model not in self._models:
                    self._models[model] = load_model(model)
                result = execute_run(
                    spec.config, scratch, run_id=spec.run_id, loaded=self._models[model], quiet=True
                )
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

    # -- connecting ----------------------------------------------------------------------
    def connect(self) -> None:
        """Start or join Ray and settle workers and threads; raises a one-line `UserError`
        (before any run starts) if the cluster cannot be reached or no node can hold a run."""
        if self._connected:
            return
        if self.address is None:
            self._start_local()
        else:
            self._join_cluster(self.address)
        self._connected = True
        self._log(
            f"Ray: {self.workers} worker(s), {self.resources.text()}"
            + (f", on the cluster at {self.address}" if self.address else ", on this machine")
        )

    def _start_local(self) -> None:
        machine = _this_machine()
        cores = int(machine["CPU"])
        workers = self.workers or cores
        threads = self.resources.threads_per_run or max(1, cores // workers)
        self._settle(workers, threads)
        _check_feasible(self.resources, [machine], "this machine")
        if not ray.is_initialized():
            ray.init(
                # More CPUs than cores only if the user asked for oversubscription.
                num_cpus=max(cores, workers * threads),
                num_gpus=int(machine["GPU"]),
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            )
            self._owns_ray = True

    def _join_cluster(self, address: str) -> None:
        if not ray.is_initialized():
            _check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError, ...
                raise UserError(
                    f"cannot join the Ray cluster at {address}: {one_line(error)}"
                ) from None
            self._owns_ray = True
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

    def _settle(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.resources = Resources(threads, self.resources.gpus_per_run, self.resources.memory_gb)

    def close(self) -> None:
        """Shut down (or leave) the Ray this executor started or joined."""
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self._connected = False

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
    ) -> Iterator[RunResult]:
        """Run the specs of the queue on the workers; yield each result as its run folder
        lands in `out_root`. Calls `on_start(spec, where)` as a worker takes a run (again
        on a retry). One pool serves the whole queue, also what the runner appends to it."""
        self.connect()
        pool = _Pool(self)
        tries: dict[str, int] = {}  # run id → failed attempts so far (worker deaths)
        try:
            while specs or pool.busy:
                pool.grow(min(self.workers or 1, len(specs) + len(pool.busy)))
                while specs and pool.idle:
                    spec = specs.popleft()
                    pool.submit(spec, tries.get(spec.run_id, 0), on_start)
                yield from self._next_outcome(pool, specs, tries, Path(out_root))
        finally:
            pool.stop()

    def _next_outcome(
        self, pool: _Pool, specs: deque[RunSpec], tries: dict[str, int], out_root: Path
    ) -> Iterator[RunResult]:
        """Wait for the next event: a worker up, a run back, or a worker dead (→ retry)."""
        ref, event = pool.wait()
        if event == "up":
            return
        actor, where, spec, attempt = event
        try:
            kind, payload, archive = ray.get(ref)
        except ray.exceptions.RayActorError as error:  # the worker process died mid-run
            # The next `grow` starts a fresh worker (another process, maybe another node).
            if attempt < self.max_retries:
                tries[spec.run_id] = attempt + 1
                specs.appendleft(spec)
                return
            reason = f"its worker ({where.text()}) died: {one_line(error)[:120]}"
            yield RunResult(spec.run_id, out_root / spec.run_id, STATUS_INTERRUPTED, error=reason)
            return
        pool.idle.append((actor, where))
        if kind == "user_error":
            raise UserError(payload)
        payload.run_dir = _unpack(archive, spec.run_id, out_root)
        yield payload


class _Pool:
    """The workers of one `execute`: starting, idle and busy ones, all on Ray actors."""

    def __init__(self, executor: RayExecutor):
        self._executor = executor
        self.starting: dict[Any, Any] = {}  # where() reference → actor
        self.idle: list[tuple[Any, Where]] = []
        self.busy: dict[Any, tuple[Any, Where, RunSpec, int]] = {}  # run reference → ...
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

    def submit(self, spec: RunSpec, tries: int, on_start: Callable[..., None]) -> None:
        actor, where = self.idle.pop(0)
        on_start(spec, where)
        self.busy[actor.run.remote(spec, tries + 1)] = (actor, where, spec, tries)

    def wait(self) -> tuple[Any, Any]:
        """The next reference that is ready: ("up" for a worker that started, else the
        busy entry of the run). Raises `UserError` when no worker can start."""
        if not self.starting and not self.busy:
            raise UserError("every Ray worker died before it could take a run")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pending = list(self.starting) + list(self.busy)
            ready, _ = ray.wait(pending, num_returns=1, timeout=10.0)
            if ready:
                break
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
            self.idle.append((actor, ray.get(ref)))
        except ray.exceptions.RayError:  # died while starting: the others carry on
            self.failed_starts += 1
        return ref, "up"

    def stop(self) -> None:
        """End every worker (also the busy ones, when the study stops early)."""
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead, or Ray is gone: nothing left to stop
                pass
