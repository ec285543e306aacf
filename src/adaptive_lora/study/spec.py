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
`RunConfig.run_id()` (see `records.ID_SCHEMA_1`); the strategy label is display only
and lives in the store. With several learning-rate candidates, the one with the
lowest mean *validation* loss across seeds is chosen per strategy × budget
(`select_lr`); the report shows *test* numbers of the chosen runs only.

**Executors.** The runner hands pending specs to an `Executor` and stores each
`RunResult` as it comes back. `LocalExecutor` runs them one after another in this
process, loading each model once; a distributed executor plugs in the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptive_lora.allocation.budget import parse_budget
from adaptive_lora.allocation.core import STRATEGIES
from adaptive_lora.config import RunConfig, load_yaml
from adaptive_lora.data.splits import load_splits
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import check_metric_data
from adaptive_lora.model.loading import resolve_source
from adaptive_lora.records import canonical_json
from adaptive_lora.study.design import Group, build_groups, group_signature, parse_tasks
from adaptive_lora.study.hypotheses import Hypotheses, SeedPlan, parse_hypotheses, parse_seed_plan
from adaptive_lora.study.lr import LrChoice, choose_lr_extending
from adaptive_lora.study.protocol import (
    CrossBudget,
    parse_cross_budget,
    parse_entry_budgets,
    parse_tuning_seeds,
)
from adaptive_lora.study.sequential_seeds import seed_counts
from adaptive_lora.study.store import RunRow, StudyStore

ADALORA = "adalora"  # the published adaptive baseline; registered by its own module


TOP_KEYS = (
    "name",
    "description",
    "model",
    "models",
    "data",
    "budgets",
    "strategies",
    "seeds",
    "train",
    "eval",
    "adapter",
    "allocation",
    "lr_candidates",
    "lr_tuning_seeds",
    "cross_budget",
    "baseline",
    "out",
    "resources",
    "tasks",
    "hypotheses",
    "lr_extend",
)


REQUIRED_KEYS = ("name", "budgets", "strategies", "seeds")


STRATEGY_KEYS = ("name", "params", "label", "lr", "budgets")


ALLOCATION_KEYS = ("min_rank", "max_rank", "target")


# What one run may take from a Ray worker (`study/ray_executor.py`); flags override them.
RESOURCE_KEYS = ("threads_per_run", "gpus_per_run", "memory_gb")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class StrategyEntry:
    """One entry of `strategies`: a registered strategy, its settings, its display label."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    lr: tuple[float, ...] | None = None  # this strategy's own learning-rate candidates
    budgets: tuple[str, ...] | None = None  # the budgets it runs at (None: all of them)


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
    tuning: bool = False  # a learning-rate tuning run: never in a reported test
    group: str = ""  # its model × task × size (`design.Group.key`)

    def describe(self) -> str:
        role = "  (lr tuning)" if self.tuning else ""
        return f"{self.label} {self.budget} seed {self.seed} lr {self.lr:g}{role}"


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
    base_lr: float = 1e-3  # train.lr: the rate of a strategy with no candidates
    lr_tuning_seeds: list[int] = field(default_factory=list)
    cross_budget: CrossBudget | None = None
    # (label, budget) → its LrChoice, from the tuning runs stored so far (the first group's).
    lr_choices: dict[tuple[str, str], LrChoice] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # several: paired within each model
    resources: dict[str, float] = field(default_factory=dict)  # RESOURCE_KEYS given
    # The factorial design: model × task × size groups, and each group's rate choices.
    groups: list[Group] = field(default_factory=list)
    lr_choices_by_group: dict[str, dict[tuple[str, str], LrChoice]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the parsed file: expansion re-reads it
    hypotheses: Hypotheses = field(default_factory=Hypotheses)  # declared before the runs
    seed_plan: SeedPlan | None = None  # sequential seeds; None: every seed runs
    lr_extend: int = 0  # steps a tuning grid may grow past an edge where the best rate sits

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

    def entry(self, label: str) -> StrategyEntry:
        return next(e for e in self.strategies if e.label == label)

    def lrs_for(self, label: str) -> tuple[float, ...]:
        """The learning-rate candidates of a strategy (one when nothing is tuned)."""
        return tuple(sorted(self.entry(label).lr or self.lr_candidates or (self.base_lr,)))

    def budgets_for(self, label: str) -> list[str]:
        own = self.entry(label).budgets
        return [b for b in self.budgets if own is None or b in own]

    @property
    def tunes_lr(self) -> bool:
        return any(len(self.lrs_for(label)) > 1 for label in self.labels)

    @property
    def choice_seeds(self) -> list[int]:
        """The seeds a learning-rate choice looks at: the tuning seeds, else every seed."""
        return self.lr_tuning_seeds or self.seeds

    @property
    def multi_model(self) -> bool:
        return len(self.models) > 1

    @property
    def multi_group(self) -> bool:
        return len(self.groups) > 1

    def varies(self) -> tuple[bool, bool, bool]:
        """Which factors take more than one level: (model, task, data size)."""
        return tuple(
            len({getattr(g, name) for g in self.groups}) > 1 for name in ("model", "task", "n_train")
        )  # type: ignore[return-value]

    def group_of(self, config: dict[str, Any]) -> Group | None:
        """The group a stored run belongs to, by its model and data settings."""
        signature = group_signature(config)
        return next((g for g in self.groups if g.signature == signature), None)

    def rows_of(self, group: Group, rows: Sequence[RunRow]) -> list[RunRow]:
        return [r for r in rows if group_signature(r.config) == group.signature]

    def for_group(self, group: Group) -> Study:
        """The part of a study on one model × task × size: its runs and its rate choices."""
        choices = self.lr_choices_by_group.get(group.key, {})
        return dataclasses.replace(
            self,
            model=group.model,
            models=[group.model],
            runs=[spec for spec in self.runs if spec.group == group.key],
            lr_choices=choices,
            groups=[group],
            lr_choices_by_group={group.key: choices},
        )

    def reported(self, spec: RunSpec) -> bool:
        """Whether a run may enter a reported comparison: not a tuning run, and at its
        strategy × budget's chosen rate."""
        choices = self.lr_choices_by_group.get(spec.group, self.lr_choices)
        choice = choices.get((spec.label, spec.budget))
        return not spec.tuning and choice is not None and choice.chosen == spec.lr

    def runs_to_come(self) -> int:
        """Reporting runs not expanded yet: their strategy × budget is still tuning."""
        if not self.lr_tuning_seeds:
            return 0
        choices = self.lr_choices_by_group.values() or [self.lr_choices]
        waiting = [c for by_key in choices for c in by_key.values() if not c.complete]
        return len(waiting) * len(self.seeds)

    def sequential_design(self, label: str, family_size: int) -> Any:
        """The group-sequential design of one comparison (None with fixed seeds)."""
        if self.seed_plan is None:
            return None
        from adaptive_lora.analysis.sequential import SequentialDesign

        h = self.hypotheses.for_comparison(label)
        return SequentialDesign(
            looks=self.seed_plan.looks,
            alternative=h.alternative,
            spending=self.seed_plan.spending,
            margin=h.margin,
            smallest_effect=h.smallest_effect,
            family_size=family_size,
        )

    def with_rows(self, rows: Sequence[RunRow]) -> Study:
        """The same study file expanded again with `rows` (rates chosen since): no re-read.

        The runner calls this as tuning runs finish; the file on disk is only compared
        (`check_unchanged`), never used again mid-study.
        """
        return _build_study(self.path, self.raw, check_sources=False, rows=rows, text=self.text)

    def check_unchanged(self) -> None:
        """Refuse, in one line, a study file edited while its runs go on."""
        try:
            now = self.path.read_text()
        except OSError:
            now = None
        if now != self.text:
            raise UserError(
                f"{self.path} changed while its study runs; the runs so far used the file as it "
                "was. Put it back, or stop this `run` and start it again to use the new file"
            )

    def select_lr(self, rows: Sequence[RunRow]) -> dict[tuple[str, str], LrChoice]:
        """Per strategy label × budget, the rate chosen on validation loss (see `study.lr`)."""
        return {
            (label, budget): choose_lr_extending(
                label, budget, self.lrs_for(label), self.choice_seeds, rows, self.lr_extend
            )
            for label in self.labels
            for budget in self.budgets_for(label)
        }


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


def _strategy_entry(raw: Any, index: int, budgets: list[str]) -> StrategyEntry:

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
    own = parse_entry_budgets(raw.get("budgets"), budgets, where)
    return StrategyEntry(name=name, label=label, params=dict(params), lr=lr, budgets=own)


def _budget_list(value: Any) -> list[str]:

    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"budgets must be a non-empty list like [r8, r16], got {value!r}")
    out = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise UserError(f"budgets[{index}]: {item!r} is not a budget (e.g. r8 or 1.2M)")
        try:
            out.append(parse_budget(str(item)).label)
        except UserError as error:
            raise UserError(f"budgets[{index}]: {error}") from None
    if len(set(out)) != len(out):
        raise UserError(f"budgets: a budget appears twice in {out}")
    return out


def _check_sources(config: RunConfig) -> None:
    """Fail now, not an hour in, on a missing model or data path, a size the data cannot
    give, or data a metric cannot score."""

    resolve_source(config.model)
    source = config.data.source
    local = source == "builtin" or Path(source).exists() or source.endswith((".json", ".jsonl"))
    if local or source.startswith("reasoning_gym:"):
        splits = load_splits(config.data)
        check_metric_data(config.eval.metrics, splits.test[: config.eval.n_generate])


def _stored_rows(out: Path) -> list[RunRow]:
    """The runs already stored for a study (none before its first `run`)."""
    if not (out / "study.db").is_file():
        return []
    with StudyStore.open(out / "study.db", create=False) as store:
        return store.rows()


def load_study(path: str | Path, *, check_sources: bool = True) -> Study:
    """Read and validate a study file; expand it into run specs. Writes nothing.

    Every problem is a one-line `UserError` that names the file and the key.
    `check_sources=False` skips the model and data path checks (tests with a fake
    executor).
    """
    path = Path(path)
    raw = load_yaml(str(path))
    try:
        text = path.read_text()
        out = Path(str(raw.get("out") or f"studies/{raw.get('name')}")).expanduser()
        return _build_study(
            path, raw, check_sources=check_sources, rows=_stored_rows(out), text=text
        )
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _build_study(
    path: Path,
    raw: dict[str, Any],
    *,
    check_sources: bool,
    rows: Sequence[RunRow] = (),
    text: str = "",
) -> Study:
    """Validate every key of a study file and expand it into run specs, in order.

    A pure function of the parsed file and the stored rows: with `lr_tuning_seeds`, the
    reporting runs of a strategy × budget in a group exist only once its tuning runs
    there have chosen a rate.
    """
    name, description, models = _check_header(raw)
    budgets = _budget_list(raw["budgets"])
    entries = _strategy_entries(raw["strategies"], budgets)
    baseline = _baseline(raw.get("baseline", "uniform"), entries)
    hypotheses = parse_hypotheses(raw.get("hypotheses"), [e.label for e in entries], baseline)
    lr_candidates = (
        _lr_list(raw["lr_candidates"], "lr_candidates")
        if raw.get("lr_candidates") is not None
        else None
    )
    tuning = (
        parse_seeds(raw["lr_tuning_seeds"], "lr_tuning_seeds")
        if raw.get("lr_tuning_seeds") is not None
        else []
    )
    seed_plan = parse_seed_plan(raw["seeds"], tuning) if isinstance(raw["seeds"], dict) else None
    seeds = seed_plan.seeds if seed_plan else parse_seeds(raw["seeds"])
    tuning_seeds = []
    if raw.get("lr_tuning_seeds") is not None:
        tunes = (lr_candidates and len(lr_candidates) > 1) or any(
            e.lr and len(e.lr) > 1 for e in entries
        )
        tuning_seeds = parse_tuning_seeds(seeds, tuning, bool(tunes))
    baseline_entry = next(e for e in entries if e.label == baseline)
    cross_budget = parse_cross_budget(
        raw.get("cross_budget"), budgets, baseline_entry.budgets or tuple(budgets)
    )
    groups = build_groups(models, parse_tasks(raw), _base_sections(raw, models[0]))
    tuned = lr_candidates is not None or any(e.lr for e in entries)
    for group in groups:  # every section error, once per task and size, before any run
        config = RunConfig.from_dict(copy.deepcopy(group.sections))
        if tuned and config.data.n_val < 1:
            raise UserError(
                "data.n_val must be >= 1: learning-rate candidates are chosen on validation loss"
            )
        if config.data.n_test < 1:
            raise UserError("data.n_test must be >= 1: the study reports test loss")
    if check_sources:
        _check_group_sources(groups)
    out = raw.get("out", f"studies/{name}")
    if not isinstance(out, str) or not out:
        raise UserError(f"out must be a folder path, got {out!r}")
    base_config = RunConfig.from_dict(copy.deepcopy(groups[0].sections))
    study = Study(
        path=path,
        name=name,
        description=description.strip(),
        model=models[0],
        budgets=budgets,
        strategies=entries,
        seeds=seeds,
        baseline=baseline,
        lr_candidates=lr_candidates,
        out=Path(out).expanduser(),
        runs=[],
        spec_hash="",
        text=text,
        base_lr=base_config.train.lr,
        lr_tuning_seeds=tuning_seeds,
        cross_budget=cross_budget,
        resources=_resources(raw.get("resources")),
        models=models,
        groups=groups,
        raw=copy.deepcopy(raw),
        hypotheses=hypotheses,
        seed_plan=seed_plan,
        lr_extend=_lr_extend(raw.get("lr_extend"), tuning_seeds),
    )
    study.lr_choices_by_group = {
        g.key: study.select_lr(study.rows_of(g, rows)) for g in groups
    }
    study.lr_choices = study.lr_choices_by_group[groups[0].key]
    study.runs = _expand_runs(study, rows)
    study.spec_hash = _spec_hash(name, baseline, study.runs)
    return study


def _lr_extend(value: Any, tuning_seeds: list[int]) -> int:
    """`lr_extend: N`: how many rates a tuning grid may grow past each edge (default 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"lr_extend must be a whole number >= 0 (steps per edge), got {value!r}")
    if value and not tuning_seeds:
        raise UserError("lr_extend needs lr_tuning_seeds: the grid grows on the tuning seeds")
    return value


def _check_group_sources(groups: list[Group]) -> None:
    """Each model once, and each task at its largest size (the smaller ones are inside it)."""
    for model in dict.fromkeys(g.model for g in groups):
        resolve_source(model)
    largest: dict[str, Group] = {}
    for group in groups:
        if group.task not in largest or group.n_train > largest[group.task].n_train:
            largest[group.task] = group
    for group in largest.values():
        _check_sources(RunConfig.from_dict(copy.deepcopy(group.sections)))


def _resources(raw: Any) -> dict[str, float]:
    """The `resources` section: known keys, non-negative numbers, whole threads >= 1."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"resources must be a mapping of {', '.join(RESOURCE_KEYS)}")
    unknown = sorted(set(raw) - set(RESOURCE_KEYS))
    if unknown:
        known = ", ".join(RESOURCE_KEYS)
        raise UserError(f"unknown resources key(s) {', '.join(unknown)}; known: {known}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"resources.{key} must be a number >= 0, got {value!r}")
    threads = raw.get("threads_per_run")
    if threads is not None and (threads != int(threads) or threads < 1):
        raise UserError(f"resources.threads_per_run must be a whole number >= 1, got {threads!r}")
    return dict(raw)


def _check_header(raw: dict[str, Any]) -> tuple[str, str, list[str]]:
    """Known keys, required keys present; (name, description, models)."""
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
    if raw.get("models") is not None:
        return name, description, _model_list(raw)
    model = raw.get("model", RunConfig().model)
    if not isinstance(model, str) or not model:
        raise UserError(f"model must be a preset, hub id, folder or .gguf path, got {model!r}")
    return name, description, [model]


def _model_list(raw: dict[str, Any]) -> list[str]:
    """`models: [a, b]`: runs are paired by seed within a model, statistics are per model."""
    if raw.get("model") is not None:
        raise UserError("give `model` (one) or `models` (a list), not both")
    models = raw["models"]
    if not isinstance(models, list) or not models:
        raise UserError(f"models must be a non-empty list of model specs, got {models!r}")
    if any(not isinstance(m, str) or not m for m in models):
        raise UserError(
            f"models: each must be a preset, hub id, folder or .gguf path, got {models}"
        )
    if len(set(models)) != len(models):
        raise UserError(f"models: a model appears twice in {models}")
    return list(models)


def _strategy_entries(value: Any, budgets: list[str]) -> list[StrategyEntry]:
    if not isinstance(value, list) or not value:
        raise UserError("strategies must be a non-empty list of strategy names or mappings")
    entries = [_strategy_entry(item, i, budgets) for i, item in enumerate(value)]
    labels = [e.label for e in entries]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(
                f"strategies: label {label!r} is used twice; give each entry its own `label`"
            )
    return entries


def _baseline(value: Any, entries: list[StrategyEntry]) -> str:
    labels = [e.label for e in entries]
    if value not in labels:
        raise UserError(
            f"baseline {value!r} is not one of the strategies' labels ({', '.join(labels)})"
        )
    return value


def _base_sections(raw: dict[str, Any], model: str) -> dict[str, Any]:
    """The RunConfig sections every run of the study shares, as a plain dict."""
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
    return base


def _expand_runs(study: Study, rows: Sequence[RunRow] = ()) -> list[RunSpec]:
    """Per group (model × task × size): tuning runs first (every candidate on every tuning
    seed), then the reporting runs.

    Within each part: budget-major, then seed, strategy and rate, so that a half-finished
    study already holds complete pairs. With tuning seeds, a strategy × budget's reporting
    runs appear once its choice is complete (at the chosen rate only); without them, every
    seed runs every candidate.
    """
    plan: list[tuple[Group, StrategyEntry, str, int, float, bool]] = []
    for group in study.groups:
        choices = study.lr_choices_by_group[group.key]
        counts = seed_counts(study, group, study.rows_of(group, rows)) if study.seed_plan else {}
        for budget in study.budgets:
            for seed in study.lr_tuning_seeds:
                for entry in study.strategies:
                    if budget in study.budgets_for(entry.label):
                        # The grid as tuning stands (extended past an edge: `lr_extend`).
                        lrs = tuple(choices[(entry.label, budget)].candidates)
                        plan += [(group, entry, budget, seed, lr, True) for lr in lrs]
        for budget in study.budgets:
            for position, seed in enumerate(study.seeds):
                for entry in study.strategies:
                    if position >= counts.get((budget, entry.label), len(study.seeds)):
                        continue  # sequential: this comparison has not reached that look
                    if budget in study.budgets_for(entry.label):
                        lrs = _reporting_lrs(study, entry, budget, choices)
                        plan += [(group, entry, budget, seed, lr, False) for lr in lrs]
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for group, entry, budget, seed, lr, tuning in plan:
        config = _run_config(group.sections, entry, budget, seed, lr)
        run_id = config.run_id()
        if run_id in seen:
            raise UserError(
                f"strategies {seen[run_id]!r} and {entry.label!r} describe the "
                "same runs; change a parameter or drop one"
            )
        seen[run_id] = entry.label
        runs.append(
            RunSpec(run_id, entry.label, entry.name, budget, seed, config.train.lr, config,
                    position=len(runs), tuning=tuning, group=group.key)
        )  # fmt: skip
    return runs


def _reporting_lrs(
    study: Study, entry: StrategyEntry, budget: str, choices: dict[tuple[str, str], LrChoice]
) -> tuple[float, ...]:
    if not study.lr_tuning_seeds:
        return study.lrs_for(entry.label)
    choice = choices[(entry.label, budget)]
    return (choice.chosen,) if choice.complete and choice.chosen is not None else ()


def _run_config(
    base: dict[str, Any], entry: StrategyEntry, budget: str, seed: int, lr: float
) -> RunConfig:
    resolved = copy.deepcopy(base)
    resolved["seed"] = seed
    resolved["allocation"].update(strategy=entry.name, budget=budget, params=dict(entry.params))
    resolved["train"]["lr"] = lr
    return RunConfig.from_dict(resolved)


def _spec_hash(name: str, baseline: str, runs: list[RunSpec]) -> str:
    return hashlib.sha256(
        canonical_json(
            {"name": name, "baseline": baseline, "runs": [[r.run_id, r.label] for r in runs]}
        ).encode()
    ).hexdigest()[:16]
