"""A study: expand its YAML into run specs, run the pending ones, resume after a crash.

A study file (every shipped one starts with a comment giving the command that runs it):

    name: quickstart                  # letters, digits, `-`, `_`, `.`
    description: optional free text   # shown in the report
    model: smollm2-135m               # preset, hub id, model folder or .gguf
    data: {source: builtin, n_train: 96, n_val: 16, n_test: 32, data_seed: 0,
           max_length: 128, template: alpaca}
    budgets: [r8, r16]                # rN or a parameter count
    strategies:                       # a name, or a mapping
      - uniform
      - {name: linear_decay, params: {ratio: 4}, label: decay-4x, lr: [5e-4, 1e-3]}
    seeds: 0..7                       # inclusive range, or a list [0, 1, 2]
    train: {...}                      # the RunConfig sections, passed through
    eval: {...}
    adapter: {...}
    allocation: {min_rank: 1, max_rank: null, target: all}
    lr_candidates: [5e-4, 1e-3]       # optional; a strategy's own `lr` list overrides it
    baseline: uniform                 # a strategy label
    out: studies/quickstart           # default studies/<name>

**Paths.** Relative paths in a study (`data.source`, a model folder, `out`) are
read relative to the current working directory, as any path typed on a command
line is: run studies from the repository root. They stay as written in the run
configs, so run ids do not depend on where the repository lives.

**Runs.** One run per budget × seed × strategy × learning rate, in that order
(seed-major, so a half-finished study already holds complete pairs). Its id is
`records.run_id_for(resolved RunConfig dict)`; the strategy label is display only
and lives in the store. With several learning-rate candidates, the one with the
lowest mean *validation* loss across seeds is chosen per strategy × budget
(`select_lr`); the report shows *test* numbers of the chosen runs only.

**Executors.** The runner hands pending specs to an `Executor` and stores each
`RunResult` as it comes back. `LocalExecutor` runs them one after another in this
process, loading each model once; a distributed executor plugs in the same way.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import platform
import re
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from adaptive_lora.config import RunConfig, load_yaml
from adaptive_lora.environment import git_commit, package_versions
from adaptive_lora.errors import UserError
from adaptive_lora.records import STATUS_DONE, STATUS_FAILED, RunResult, canonical_json, run_id_for
from adaptive_lora.store import DONE, FAILED, PENDING, RUNNING, RunRow, StudyLock, StudyStore

ADALORA = "adalora"  # the published adaptive baseline; registered by its own module
TOP_KEYS = (
    "name",
    "description",
    "model",
    "data",
    "budgets",
    "strategies",
    "seeds",
    "train",
    "eval",
    "adapter",
    "allocation",
    "lr_candidates",
    "baseline",
    "out",
)
REQUIRED_KEYS = ("name", "budgets", "strategies", "seeds")
STRATEGY_KEYS = ("name", "params", "label", "lr")
ALLOCATION_KEYS = ("min_rank", "max_rank", "target")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")

# Rough speed for the time estimate before any run has finished: SmolLM2-135M with
# LoRA and bf16 autocast trains at about 270 tokens/s on a 2-core CPU (DESIGN.md).
HEURISTIC_TRAIN_TOKENS_PER_S = 270.0
HEURISTIC_EVAL_TOKENS_PER_S = 3 * HEURISTIC_TRAIN_TOKENS_PER_S  # forward only
HEURISTIC_GENERATED_TOKENS_PER_S = 15.0
HEURISTIC_SETUP_S = 10.0


# ---------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class StrategyEntry:
    """One entry of `strategies`: a registered strategy, its settings, its display label."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    lr: tuple[float, ...] | None = None  # this strategy's own learning-rate candidates


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: what to run and where it sits in the study."""

    run_id: str
    label: str
    strategy: str
    budget: str
    seed: int
    lr: float
    config: RunConfig
    position: int

    def describe(self) -> str:
        return f"{self.label} {self.budget} seed {self.seed} lr {self.lr:g}"


@dataclass
class Study:
    """A validated study: its settings and the runs it expands into."""

    path: Path
    name: str
    description: str
    model: str
    budgets: list[str]
    strategies: list[StrategyEntry]
    seeds: list[int]
    baseline: str
    lr_candidates: tuple[float, ...] | None
    out: Path
    runs: list[RunSpec]
    spec_hash: str
    text: str

    @property
    def store_path(self) -> Path:
        return self.out / "study.db"

    @property
    def lock_path(self) -> Path:
        return self.out / ".lock"

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    @property
    def run_ids(self) -> list[str]:
        return [spec.run_id for spec in self.runs]

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self.strategies]

    def lrs_for(self, label: str) -> tuple[float, ...]:
        """The learning rates a strategy is run with (one when nothing is tuned)."""
        return tuple(sorted({spec.lr for spec in self.runs if spec.label == label}))

    @property
    def tunes_lr(self) -> bool:
        return any(len(self.lrs_for(label)) > 1 for label in self.labels)


def parse_seeds(value: Any, where: str = "seeds") -> list[int]:
    """`[0, 1, 2]` or an inclusive range string `"0..7"` → a list of distinct seeds."""
    if isinstance(value, str):
        match = _RANGE.match(value)
        if not match:
            raise UserError(
                f"{where}: cannot read {value!r}; write a range like '0..7' or a list like [0, 1, 2]"
            )
        low, high = int(match.group(1)), int(match.group(2))
        if low < 0 or high < low:
            raise UserError(
                f"{where}: range {value!r} must run upwards from a seed >= 0 (e.g. '0..7')"
            )
        return list(range(low, high + 1))
    if isinstance(value, list) and value:
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad:
            raise UserError(f"{where}: seeds must be integers >= 0, got {bad}")
        if len(set(value)) != len(value):
            raise UserError(f"{where}: a seed appears twice in {value}")
        return list(value)
    raise UserError(
        f"{where} must be a non-empty list like [0, 1, 2] or a range like '0..7', got {value!r}"
    )


def _known_strategies() -> list[str]:
    from adaptive_lora.allocation import STRATEGIES

    return sorted(set(STRATEGIES) | {ADALORA})


def _lr_list(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where} must be a non-empty list of learning rates, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, str):  # YAML reads `1e-3` (no dot) as a string
            try:
                item = float(item)
            except ValueError:
                raise UserError(f"{where}: {item!r} is not a number") from None
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not item > 0:
            raise UserError(f"{where}: learning rates must be numbers > 0, got {item!r}")
        out.append(float(item))
    if len(set(out)) != len(out):
        raise UserError(f"{where}: a learning rate appears twice in {out}")
    return tuple(out)


def _strategy_entry(raw: Any, index: int) -> StrategyEntry:
    from adaptive_lora.allocation import STRATEGIES

    where = f"strategies[{index}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a strategy name or a mapping with `name`, got {raw!r}")
    unknown = sorted(set(raw) - set(STRATEGY_KEYS))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(STRATEGY_KEYS)}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}.name is missing: give a strategy name")
    if name not in STRATEGIES and name != ADALORA:
        raise UserError(
            f"{where}.name: unknown strategy {name!r}; choose one of: "
            f"{', '.join(_known_strategies())}"
        )
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{where}.params must be a mapping like {{ratio: 4}}, got {params!r}")
    if name in STRATEGIES:
        try:
            STRATEGIES[name].check_params(params)
        except UserError as error:
            raise UserError(f"{where}.params: {error}") from None
    label = raw.get("label", name)
    if not isinstance(label, str) or not _NAME.match(label):
        raise UserError(f"{where}.label must be letters, digits, `-`, `_` or `.`, got {label!r}")
    lr = _lr_list(raw["lr"], f"{where}.lr") if raw.get("lr") is not None else None
    return StrategyEntry(name=name, label=label, params=dict(params), lr=lr)


def _budget_list(value: Any) -> list[str]:
    from adaptive_lora.allocation import resolve_budget
    from adaptive_lora.inventory import ModuleInfo

    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"budgets must be a non-empty list like [r8, r16], got {value!r}")
    # The syntax check of `resolve_budget`, on a one-module stand-in inventory.
    probe = [ModuleInfo("probe", 0, "q", 1, 1)]
    out = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise UserError(f"budgets[{index}]: {item!r} is not a budget (e.g. r8 or 1.2M)")
        try:
            out.append(resolve_budget(str(item), probe).label)
        except UserError as error:
            raise UserError(f"budgets[{index}]: {error}") from None
    if len(set(out)) != len(out):
        raise UserError(f"budgets: a budget appears twice in {out}")
    return out


def _check_sources(config: RunConfig) -> None:
    """Fail now, not an hour in, on a model or data path that does not exist."""
    from adaptive_lora.data import load_examples, make_splits
    from adaptive_lora.models import resolve_source

    resolve_source(config.model)
    source = config.data.source
    if source == "builtin" or Path(source).exists() or source.endswith((".json", ".jsonl")):
        d = config.data
        make_splits(load_examples(source), d.n_train, d.n_val, d.n_test, d.data_seed)
    # A hub data set id is checked when the first run loads it.


def load_study(path: str | Path, *, check_sources: bool = True) -> Study:
    """Read and validate a study file; expand it into run specs. Writes nothing.

    Every problem is a one-line `UserError` that names the file and the key.
    `check_sources=False` skips the model and data path checks (tests with a fake
    executor).
    """
    path = Path(path)
    raw = load_yaml(str(path))
    try:
        return _build_study(path, raw, check_sources=check_sources)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _build_study(path: Path, raw: dict[str, Any], *, check_sources: bool) -> Study:
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)}; a study has: {', '.join(TOP_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if raw.get(k) is None]
    if missing:
        raise UserError(f"missing key(s) {', '.join(missing)}")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"name must be letters, digits, `-`, `_` or `.`, got {name!r}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise UserError("description must be text")
    model = raw.get("model", RunConfig().model)
    if not isinstance(model, str) or not model:
        raise UserError(f"model must be a preset, hub id, folder or .gguf path, got {model!r}")

    budgets = _budget_list(raw["budgets"])
    seeds = parse_seeds(raw["seeds"])
    if not isinstance(raw["strategies"], list) or not raw["strategies"]:
        raise UserError("strategies must be a non-empty list of strategy names or mappings")
    entries = [_strategy_entry(item, i) for i, item in enumerate(raw["strategies"])]
    labels = [e.label for e in entries]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(
                f"strategies: label {label!r} is used twice; give each entry its own `label`"
            )
    baseline = raw.get("baseline", "uniform")
    if baseline not in labels:
        raise UserError(
            f"baseline {baseline!r} is not one of the strategies' labels ({', '.join(labels)})"
        )
    lr_candidates = (
        _lr_list(raw["lr_candidates"], "lr_candidates")
        if raw.get("lr_candidates") is not None
        else None
    )

    allocation = raw.get("allocation") or {}
    if not isinstance(allocation, dict):
        raise UserError("allocation must be a mapping (min_rank, max_rank, target)")
    bad = sorted(set(allocation) - set(ALLOCATION_KEYS))
    if bad:
        raise UserError(
            f"allocation: unknown or per-run key(s) {', '.join(bad)}; a study sets only "
            f"{', '.join(ALLOCATION_KEYS)} here (strategy and budget come from "
            "`strategies` and `budgets`)"
        )
    base: dict[str, Any] = {"model": model, "allocation": dict(allocation)}
    for section in ("data", "train", "eval", "adapter"):
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise UserError(f"{section} must be a mapping, got {value!r}")
        base[section] = dict(value)
    base_config = RunConfig.from_dict(copy.deepcopy(base))  # every section error, once
    tuned = lr_candidates is not None or any(e.lr for e in entries)
    if tuned and base_config.data.n_val < 1:
        raise UserError(
            "data.n_val must be >= 1: learning-rate candidates are chosen on validation loss"
        )
    if base_config.data.n_test < 1:
        raise UserError("data.n_test must be >= 1: the study reports test loss")
    if check_sources:
        _check_sources(base_config)

    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for budget in budgets:
        for seed in seeds:
            for entry in entries:
                lrs = entry.lr or lr_candidates or (base_config.train.lr,)
                for lr in lrs:
                    resolved = copy.deepcopy(base)
                    resolved["seed"] = seed
                    resolved["allocation"].update(
                        strategy=entry.name, budget=budget, params=dict(entry.params)
                    )
                    resolved["train"]["lr"] = lr
                    config = RunConfig.from_dict(resolved)
                    run_id = run_id_for(config.to_dict())
                    if run_id in seen:
                        raise UserError(
                            f"strategies {seen[run_id]!r} and {entry.label!r} describe the "
                            "same runs; change a parameter or drop one"
                        )
                    seen[run_id] = entry.label
                    runs.append(
                        RunSpec(
                            run_id=run_id,
                            label=entry.label,
                            strategy=entry.name,
                            budget=budget,
                            seed=seed,
                            lr=config.train.lr,
                            config=config,
                            position=len(runs),
                        )
                    )
    spec_hash = hashlib.sha256(
        canonical_json(
            {"name": name, "baseline": baseline, "runs": [[r.run_id, r.label] for r in runs]}
        ).encode()
    ).hexdigest()[:16]
    out = raw.get("out", f"studies/{name}")
    if not isinstance(out, str) or not out:
        raise UserError(f"out must be a folder path, got {out!r}")
    return Study(
        path=path,
        name=name,
        description=description.strip(),
        model=model,
        budgets=budgets,
        strategies=entries,
        seeds=seeds,
        baseline=baseline,
        lr_candidates=lr_candidates,
        out=Path(out).expanduser(),
        runs=runs,
        spec_hash=spec_hash,
        text=path.read_text(),
    )


# ---------------------------------------------------------------------- executors


class Executor(Protocol):
    """Runs specs and yields one `RunResult` per spec, as each finishes (any order).

    It calls `on_start(spec)` right before a run starts (the runner cleans the run
    folder and marks the run `running` there). A `UserError` ends the study; any
    other failure of one run comes back as a failed `RunResult`.
    """

    def execute(
        self,
        specs: Sequence[RunSpec],
        out_root: Path,
        *,
        on_start: Callable[[RunSpec], None],
        quiet: bool = False,
    ) -> Iterator[RunResult]: ...


class LocalExecutor:
    """Runs specs one after another in this process, loading each model once.

    `execute_run` and `load_model` default to `train.execute_run` and
    `models.load_model`; tests inject stand-ins.
    """

    def __init__(
        self,
        execute_run: Callable[..., RunResult] | None = None,
        load_model: Callable[[str], Any] | None = None,
    ):
        self._execute_run = execute_run
        self._load_model = load_model
        self._models: dict[str, Any] = {}

    def _loaded(self, spec: str) -> Any:
        if spec not in self._models:
            load = self._load_model
            if load is None:
                from adaptive_lora.models import load_model as load
            self._models[spec] = load(spec)
        return self._models[spec]

    def execute(
        self,
        specs: Sequence[RunSpec],
        out_root: Path,
        *,
        on_start: Callable[[RunSpec], None],
        quiet: bool = False,
    ) -> Iterator[RunResult]:
        execute_run = self._execute_run
        if execute_run is None:
            from adaptive_lora.train import execute_run
        for spec in specs:
            loaded = self._loaded(spec.config.model)
            on_start(spec)
            try:
                result = execute_run(
                    spec.config, out_root, run_id=spec.run_id, loaded=loaded, quiet=quiet
                )
            except UserError:
                raise
            except Exception as error:  # a bug in one run must not end a night of runs
                run_dir = Path(out_root) / spec.run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "traceback.txt").write_text(traceback.format_exc())
                result = RunResult(spec.run_id, run_dir, STATUS_FAILED, error=_one_line(error))
            yield result


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


# ---------------------------------------------------------------------- planning


def open_store_if_any(study: Study) -> StudyStore | None:
    """The study's store if it exists (read-only use: status, dry runs, reports)."""
    return StudyStore.open(study.store_path, create=False) if study.store_path.is_file() else None


def current_rows(study: Study, store: StudyStore | None) -> dict[str, RunRow | None]:
    """Run id → its stored row (None when never stored), for every run of the spec."""
    stored = {row.id: row for row in store.rows(study.run_ids)} if store else {}
    return {run_id: stored.get(run_id) for run_id in study.run_ids}


def would_run(
    study: Study, rows: dict[str, RunRow | None], *, retry_failed: bool, lock_held: bool
) -> list[RunSpec]:
    """The specs a `run` started now would execute, in order."""
    chosen = []
    for spec in study.runs:
        row = rows[spec.run_id]
        status = PENDING if row is None else row.status
        if (
            status == PENDING
            or (status == FAILED and retry_failed)
            or (status == RUNNING and not lock_held)
        ):
            chosen.append(spec)
    return chosen


@dataclass
class Estimate:
    """Seconds that `n_runs` runs will take, and how that was estimated."""

    seconds: float
    n_runs: int
    source: str

    def text(self) -> str:
        if self.n_runs == 0:
            return "nothing left to run"
        return f"{self.n_runs} run(s) ≈ {format_duration(self.seconds)} ({self.source})"


def heuristic_seconds(config: RunConfig) -> float:
    """A rough duration of one run from its size alone (see HEURISTIC_* constants)."""
    t, d, e = config.train, config.data, config.eval
    steps = t.max_steps or math.ceil(t.epochs * d.n_train / (t.batch_size * t.grad_accum))
    train_tokens = steps * t.batch_size * t.grad_accum * d.max_length
    eval_tokens = 2 * (d.n_val + d.n_test) * d.max_length  # before and after training
    generated = e.n_generate * e.max_new_tokens
    return (
        HEURISTIC_SETUP_S
        + train_tokens / HEURISTIC_TRAIN_TOKENS_PER_S
        + eval_tokens / HEURISTIC_EVAL_TOKENS_PER_S
        + generated / HEURISTIC_GENERATED_TOKENS_PER_S
    )


def estimate(study: Study, rows: dict[str, RunRow | None], todo: Sequence[RunSpec]) -> Estimate:
    """From the mean wall time of this study's finished runs; before any, a heuristic."""
    from adaptive_lora.stats import describe

    finished = [
        r.seconds for r in rows.values() if r is not None and r.status == DONE and r.seconds
    ]
    if finished:
        mean = describe(finished)["mean"]
        source = f"mean of {len(finished)} finished run(s): {format_duration(mean)} each"
        return Estimate(mean * len(todo), len(todo), source)
    seconds = sum(heuristic_seconds(spec.config) for spec in todo)
    source = (
        "rough heuristic, no finished runs yet: "
        f"{HEURISTIC_TRAIN_TOKENS_PER_S:g} training tokens/s as SmolLM2-135M on 2 CPU cores, "
        "every example at max_length, so an upper bound"
    )
    return Estimate(seconds, len(todo), source)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


# ---------------------------------------------------------------------- learning rates


@dataclass
class LrChoice:
    """The learning rate chosen for one strategy × budget, on validation loss."""

    label: str
    budget: str
    candidates: list[float]
    val_loss_mean: dict[float, float]  # lr → mean validation loss over its finished seeds
    n_seeds: dict[float, int]
    chosen: float | None  # None: no candidate has a finished run yet


def select_lr(study: Study, rows: Sequence[RunRow]) -> dict[tuple[str, str], LrChoice]:
    """Per strategy label × budget, the lr with the lowest mean val_loss across seeds.

    Only finished runs count. With a single candidate it is chosen as is. Test loss
    never enters the choice (DESIGN.md: model selection uses validation).
    """
    from adaptive_lora.stats import describe

    by_key: dict[tuple[str, str, float], list[float]] = {}
    for row in rows:
        if row.status == DONE:
            value = row.metrics.get("val_loss")
            if value is not None and math.isfinite(float(value)):
                by_key.setdefault((row.label, row.budget, row.lr), []).append(float(value))
    choices = {}
    for label in study.labels:
        candidates = list(study.lrs_for(label))
        for budget in study.budgets:
            means, counts = {}, {}
            for lr in candidates:
                values = by_key.get((label, budget, lr), [])
                counts[lr] = len(values)
                if values:
                    means[lr] = describe(values)["mean"]
            if len(candidates) == 1:
                chosen = candidates[0]
            else:
                chosen = min(means, key=lambda lr: (means[lr], lr)) if means else None
            choices[(label, budget)] = LrChoice(label, budget, candidates, means, counts, chosen)
    return choices


# ---------------------------------------------------------------------- manifest


def _git_state() -> dict[str, Any]:
    """The tool's source commit and whether it had local changes (see environment.git_commit)."""
    commit = git_commit()
    if commit is None:
        return {"commit": None}
    return {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty")}


def study_manifest(study: Study) -> dict[str, Any]:
    """What the store records about the study and the machine at each `run`."""
    return {
        "name": study.name,
        "spec_path": str(study.path),
        "spec_hash": study.spec_hash,
        "spec_text": study.text,
        "versions": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git": _git_state(),
        "argv": sys.argv,
    }


def record_manifest(store: StudyStore, study: Study) -> None:
    """Refresh the manifest; keep a history of spec hashes and of runs of `run`."""
    from adaptive_lora.store import now_iso

    old = store.manifest()
    new = study_manifest(study)
    history = list(old.get("spec_history", []))
    if not history or history[-1]["spec_hash"] != study.spec_hash:
        history.append({"spec_hash": study.spec_hash, "since": now_iso()})
    sessions = list(old.get("sessions", []))[-49:]
    sessions.append({"started": now_iso(), "host": new["host"], "pid": os.getpid()})
    new.update(created_at=old.get("created_at", now_iso()), spec_history=history, sessions=sessions)
    store.update_manifest(new)


# ---------------------------------------------------------------------- the runner


@dataclass
class RunSummary:
    """What one `run` did."""

    ran: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # reset from a dead process
    retried: list[str] = field(default_factory=list)
    skipped_done: int = 0
    exports: list[Path] = field(default_factory=list)


def run_study(
    study: Study,
    *,
    executor: Executor | None = None,
    retry_failed: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run every pending run of `study`, in order, recording each state change.

    Holds the study lock throughout; rows left `running` by a dead process are reset
    and re-run (their partial folders removed first); done runs are never re-run;
    failed runs are recorded with their reason and the study goes on
    (`retry_failed=True` runs them again).
    """
    executor = executor or LocalExecutor()
    summary = RunSummary()
    study.out.mkdir(parents=True, exist_ok=True)
    with StudyLock(study.lock_path), StudyStore.open(study.store_path) as store:
        record_manifest(store, study)
        added = store.sync_runs(study.runs)
        summary.interrupted = store.reset_interrupted()
        if retry_failed:
            summary.retried = store.reset_failed(study.run_ids)
        rows = current_rows(study, store)
        todo = [s for s in study.runs if rows[s.run_id].status == PENDING]
        summary.skipped_done = sum(1 for r in rows.values() if r.status == DONE)
        n_failed = sum(1 for r in rows.values() if r.status == FAILED)
        log(
            f"study {study.name}: {len(study.runs)} runs, {summary.skipped_done} done, "
            f"{n_failed} failed (kept; --retry-failed re-runs them), {len(todo)} to run"
            + (f"; {added} new" if added and added != len(study.runs) else "")
        )
        for run_id in summary.interrupted:
            log(f"  {run_id} was interrupted (its process ended mid-run): running it again")
        if todo:
            log(f"  estimate: {estimate(study, rows, todo).text()}")

        started: dict[str, float] = {}
        index = {spec.run_id: i for i, spec in enumerate(todo, 1)}

        def on_start(spec: RunSpec) -> None:
            run_dir = study.runs_dir / spec.run_id
            if run_dir.exists():  # what an interrupted or failed attempt left behind
                shutil.rmtree(run_dir)
            store.mark_running(spec.run_id, run_dir=str(Path("runs") / spec.run_id))
            started[spec.run_id] = time.monotonic()
            log(f"[{index[spec.run_id]}/{len(todo)}] {spec.describe()}  ({spec.run_id})")

        try:
            for result in executor.execute(todo, study.runs_dir, on_start=on_start, quiet=quiet):
                if result.run_id not in started:
                    raise RuntimeError(f"executor returned {result.run_id}, which never started")
                seconds = time.monotonic() - started.pop(result.run_id)
                done = result.status == STATUS_DONE
                store.mark_finished(
                    result.run_id,
                    status=DONE if done else FAILED,
                    metrics=result.metrics,
                    manifest=result.manifest,
                    reason=None if done else (result.error or "failed (no reason given)"),
                    seconds=seconds,
                )
                summary.ran.append(result.run_id)
                (summary.done if done else summary.failed).append(result.run_id)
                if done:
                    loss = result.metrics.get("test_loss")
                    shown = f"test loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
                    log(f"    done in {format_duration(seconds)}  {shown}".rstrip())
                else:
                    log(f"    FAILED after {format_duration(seconds)}: {result.error}")
                store.export(study.out, study.run_ids)
        except BaseException as error:
            # Runs this process started but will not finish go back to pending.
            reason = (
                "stopped by the user"
                if isinstance(error, KeyboardInterrupt)
                else f"stopped: {_one_line(error)}"
            )
            for run_id in started:
                store.mark_pending(run_id, reason)
            with contextlib.suppress(Exception):  # keep the original error in view
                store.export(study.out, study.run_ids)
            raise
        summary.exports = store.export(study.out, study.run_ids)
    log(
        f"study {study.name}: ran {len(summary.ran)} ({len(summary.done)} done, "
        f"{len(summary.failed)} failed); results in {study.out / 'results.csv'}"
    )
    return summary
