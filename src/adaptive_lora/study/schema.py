"""The study file's keys, read and checked: one line naming the key for every problem.

Each function takes the raw YAML value of one key (or section) and returns it typed
(`StrategyEntry`, seeds, budget labels, resources, the RunConfig sections every run
shares), or raises a one-line `UserError`. `spec.load_study` strings them together;
`design` reads tasks and sizes, `hypotheses` the declared hypotheses and seed plans,
`protocol` tuning seeds and the cross-budget question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from adaptive_lora.allocation.budget import parse_budget
from adaptive_lora.allocation.core import STRATEGIES

# The machinery that validates run configs (`RunConfig.from_dict`) checks the study file's
# top level too. Imported by its private names so that config.py, which every run's
# `source_hash` covers, did not change while a study was running on it.
from adaptive_lora.config import RunConfig, _help
from adaptive_lora.config import _build as build_typed
from adaptive_lora.errors import UserError
from adaptive_lora.study.hypotheses import reject_unknown_keys
from adaptive_lora.study.protocol import parse_entry_budgets


@dataclass
class StudyFile:
    """The top level of a study file, typed and checked by config.py's `_build`.

    Unknown keys and wrong types are one-line errors naming the key; each structured
    section is then read by its own parser (`design`, `hypotheses`, `protocol`, below).
    """

    name: str = _help("letters, digits, `-`, `_`, `.`: names the study and its folder", "")
    description: str | None = _help("free text shown in the report", None)
    model: str | None = _help("a preset, hub id, model folder or .gguf (or `models`)", None)
    models: list[Any] | None = _help("several models: runs pair within a model", None)
    data: dict[str, Any] | None = _help(
        "DataSettings shared by every task (n_train may be a list)", None
    )
    tasks: list[Any] | None = _help("several tasks: {name, data, eval} each (design.py)", None)
    budgets: Any = _help("a list of rN or parameter counts (r8, 50k, 1.2M)", None)
    strategies: list[Any] | None = _help(
        "names, or {name, params, label, lr, budgets, where}", None
    )
    seeds: Any = _help("a list, a range '0..7', or {min, max, step} (sequential)", None)
    train: dict[str, Any] | None = _help("TrainSettings for every run", None)
    eval: dict[str, Any] | None = _help("EvalSettings for every run (a task may override)", None)
    adapter: dict[str, Any] | None = _help("AdapterConfig for every run", None)
    allocation: dict[str, Any] | None = _help("min_rank, max_rank, target", None)
    lr_candidates: Any = _help("learning rates tried on the tuning seeds", None)
    lr_tuning_seeds: Any = _help("seeds the candidates are tried on (never reported)", None)
    lr_extend: int | None = _help("steps a tuning grid may grow past an edge", None)
    cross_budget: dict[str, Any] | None = _help("{small, large, margin} (protocol.py)", None)
    baseline: str = _help("the strategy label every comparison is against", "uniform")
    out: str | None = _help("the study's folder (default studies/<name>)", None)
    resources: dict[str, Any] | None = _help("threads_per_run, gpus_per_run, memory_gb", None)
    hypotheses: dict[str, Any] | None = _help("declared before the runs (hypotheses.py)", None)


TOP_KEYS = tuple(f.name for f in fields(StudyFile))


REQUIRED_KEYS = ("name", "budgets", "strategies", "seeds")


STRATEGY_KEYS = ("name", "params", "label", "lr", "budgets", "where")


# What a strategy's `where` may restrict: the factors of a group (`design.Group`).
WHERE_KEYS = ("model", "task", "n_train")


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
    # The groups it runs in: factor → the levels allowed (None: every group).
    where: dict[str, tuple[Any, ...]] | None = None

    def runs_in(self, group: Any) -> bool:
        """Whether this strategy runs in a model × task × size group."""
        return self.where is None or all(
            getattr(group, factor) in levels for factor, levels in self.where.items()
        )


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

    return sorted(STRATEGIES)


def lr_list(value: Any, where: str) -> tuple[float, ...]:
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
    reject_unknown_keys(raw, STRATEGY_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}.name is missing: give a strategy name")
    if name not in STRATEGIES:
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
    lr = lr_list(raw["lr"], f"{where}.lr") if raw.get("lr") is not None else None
    own = parse_entry_budgets(raw.get("budgets"), budgets, where)
    groups = _where(raw.get("where"), f"{where}.where")
    return StrategyEntry(
        name=name, label=label, params=dict(params), lr=lr, budgets=own, where=groups
    )


def _where(value: Any, at: str) -> dict[str, tuple[Any, ...]] | None:
    """`where: {task: arith, n_train: [2000]}` → factor → allowed levels (checked against
    the study's groups once they are built: `check_where`)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise UserError(
            f"{at} must be a mapping like {{task: arith, n_train: [2000]}}, got {value!r}"
        )
    reject_unknown_keys(value, WHERE_KEYS, at)
    out = {}
    for factor, levels in value.items():
        levels = levels if isinstance(levels, list) else [levels]
        if not levels or any(isinstance(v, (bool, dict, list)) or v is None for v in levels):
            raise UserError(
                f"{at}.{factor} must be a value or a non-empty list, got {value[factor]!r}"
            )
        out[factor] = tuple(levels)
    return out


def check_where(entries: list[StrategyEntry], groups: list[Any], baseline: str) -> None:
    """Every `where` level names a real model, task or size; the baseline runs everywhere."""
    for index, entry in enumerate(entries):
        if entry.where is None:
            continue
        if entry.label == baseline:
            raise UserError(
                f"strategies[{index}].where: the baseline {baseline!r} runs in every group "
                "(the others are compared with it there); drop its `where`"
            )
        for factor, levels in entry.where.items():
            known = list(dict.fromkeys(getattr(g, factor) for g in groups))
            unknown = [v for v in levels if v not in known]
            if unknown:
                raise UserError(
                    f"strategies[{index}].where.{factor}: {unknown} not among the study's "
                    f"levels ({', '.join(map(str, known))})"
                )
        if not any(entry.runs_in(g) for g in groups):
            raise UserError(f"strategies[{index}].where matches no group of the study")


def parse_budget_list(value: Any) -> list[str]:

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


def lr_extend_setting(value: Any, tuning_seeds: list[int]) -> int:
    """`lr_extend: N`: how many rates a tuning grid may grow past each edge (default 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"lr_extend must be a whole number >= 0 (steps per edge), got {value!r}")
    if value and not tuning_seeds:
        raise UserError("lr_extend needs lr_tuning_seeds: the grid grows on the tuning seeds")
    return value


def parse_resources(raw: Any) -> dict[str, float]:
    """The `resources` section: known keys, non-negative numbers, whole threads >= 1."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"resources must be a mapping of {', '.join(RESOURCE_KEYS)}")
    reject_unknown_keys(raw, RESOURCE_KEYS, "resources")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"resources.{key} must be a number >= 0, got {value!r}")
    threads = raw.get("threads_per_run")
    if threads is not None and (threads != int(threads) or threads < 1):
        raise UserError(f"resources.threads_per_run must be a whole number >= 1, got {threads!r}")
    return dict(raw)


def check_header(raw: dict[str, Any]) -> tuple[str, str, list[str]]:
    """Known keys, required keys present; (name, description, models)."""
    # Unknown keys, wrong types: one line naming the key. A key given as null is absent.
    build_typed(StudyFile, {key: value for key, value in raw.items() if value is not None}, "")
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


def strategy_entries(value: Any, budgets: list[str]) -> list[StrategyEntry]:
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


def check_baseline(value: Any, entries: list[StrategyEntry]) -> str:
    labels = [e.label for e in entries]
    if value not in labels:
        raise UserError(
            f"baseline {value!r} is not one of the strategies' labels ({', '.join(labels)})"
        )
    return value


def base_sections(raw: dict[str, Any], model: str) -> dict[str, Any]:
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
