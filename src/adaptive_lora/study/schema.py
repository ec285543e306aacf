"""The study file's keys, read and checked: one line naming the key for every problem.

`read_study` reads a study file's YAML mapping ONCE into the typed model
(`model.StudyDesign`): the top level is checked as `StudyFile` (unknown keys, each key's
YAML shape) by the machinery that checks run configs, then each key goes through its own
reader here (`StrategyEntry`, seeds, budgets, resources, the RunConfig sections every run
shares), in `design` (tasks and sizes), `hypotheses` (declared hypotheses, seed plans) or
`protocol` (tuning seeds, the cross-budget question), or raises a one-line `UserError`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from adaptive_lora.config import Budget, RunConfig, parse_budget
from adaptive_lora.config_fields import build_typed, help_field
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import check_metric_names
from adaptive_lora.methods import STRATEGIES  # every strategy, methods included
from adaptive_lora.study.design import Group, build_groups, parse_tasks
from adaptive_lora.study.hypotheses import (
    SeedPlan,
    parse_hypotheses,
    parse_seed_plan,
    reject_unknown_keys,
)
from adaptive_lora.study.model import WHERE_KEYS, LrRule, StrategyEntry, StudyDesign
from adaptive_lora.study.protocol import (
    parse_cross_budget,
    parse_entry_budgets,
    parse_tuning_seeds,
)

# A section of the file as YAML gives it, before its own reader types it.
Section = dict[str, object]


@dataclass
class StudyFile:
    """The top level of a study file as written: each key in the YAML shape it takes.

    Built by `config_fields.build_typed` with `exact` (a number is no name, a string no
    list): unknown keys and wrong shapes are one-line errors naming the key. A key that
    takes several shapes (`object`) is checked by its own reader. `read_study` reads each
    key from here into the typed model.
    """

    name: str | None = help_field(
        "letters, digits, `-`, `_`, `.`: names the study and its folder", None
    )
    description: str | None = help_field("free text shown in the report", None)
    model: str | None = help_field("a preset, hub id, model folder or .gguf (or `models`)", None)
    models: list[object] | None = help_field("several models: runs pair within a model", None)
    data: Section | None = help_field(
        "DataSettings shared by every task (n_train may be a list)", None
    )
    tasks: list[object] | None = help_field(
        "several tasks: {name, data, eval} each (design.py)", None
    )
    budgets: object | None = help_field(
        "a list of rN, qv:rN or parameter counts (r8, qv:r8, 50k, 1.2M)", None
    )
    strategies: list[object] | None = help_field(
        "names, or {name, params, label, lr, budgets, where}", None
    )
    seeds: object | None = help_field(
        "a list, a range '0..7', or {min, max, step} (sequential)", None
    )
    train: Section | None = help_field("TrainSettings for every run", None)
    eval: Section | None = help_field("EvalSettings for every run (a task may override)", None)
    adapter: Section | None = help_field("AdapterConfig for every run", None)
    allocation: Section | None = help_field("min_rank, max_rank, target", None)
    lr_candidates: object | None = help_field("learning rates tried on the tuning seeds", None)
    lr_tuning_seeds: object | None = help_field(
        "seeds the candidates are tried on (never reported)", None
    )
    lr_extend: int | None = help_field(
        "steps a tuning grid may grow past an edge (default 1 with lr_tuning_seeds)", None
    )
    cross_budget: Section | None = help_field("{small, large, margin} (protocol.py)", None)
    baseline: Any = help_field(
        "the strategy label every comparison is against, or {default: LABEL, BUDGET: LABEL}",
        "uniform",
    )
    out: str | None = help_field("the study's folder (default studies/<name>)", None)
    resources: Section | None = help_field("threads_per_run, gpus_per_run, memory_gb", None)
    hypotheses: Section | None = help_field("declared before the runs (hypotheses.py)", None)


TOP_KEYS = tuple(f.name for f in fields(StudyFile))


REQUIRED_KEYS = ("name", "budgets", "strategies", "seeds")


STRATEGY_KEYS = ("name", "params", "label", "lr", "budgets", "where")


ALLOCATION_KEYS = ("min_rank", "max_rank", "target")


# What one run may take from a Ray worker (`study/ray_executor.py`); flags override them.
RESOURCE_KEYS = ("threads_per_run", "gpus_per_run", "memory_gb")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


def parse_seeds(value: object, where: str = "seeds") -> list[int]:
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


def lr_list(value: object, where: str) -> tuple[float, ...]:
    """One rate or a list of distinct rates > 0 (YAML's `1e-3` string read as a number)."""
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


def _strategy_entry(raw: object, index: int, budgets: list[str]) -> StrategyEntry:
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


def _where(value: object, at: str) -> dict[str, tuple[object, ...]] | None:
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


def check_where(entries: list[StrategyEntry], groups: list[Group], baseline: str) -> None:
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


def parse_budget_list(value: object) -> tuple[Budget, ...]:
    """`budgets`: a list of distinct budgets, each read (`config.parse_budget`). A single
    value is refused: `budgets: 8` is more often a rank meant (r8) than 8 parameters."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        write = f"[r{value}] for rank {value}" if isinstance(value, int) else f"[{value}]"
        raise UserError(
            f"budgets must be a list, like [r8, r16], got the single value {value!r}: write {write}"
        )
    if not isinstance(value, list) or not value:
        raise UserError(f"budgets must be a non-empty list like [r8, r16], got {value!r}")
    out = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise UserError(f"budgets[{index}]: {item!r} is not a budget (e.g. r8 or 1.2M)")
        try:
            out.append(parse_budget(str(item)))
        except UserError as error:
            raise UserError(f"budgets[{index}]: {error}") from None
    labels = [b.label for b in out]
    if len(set(labels)) != len(labels):
        raise UserError(f"budgets: a budget appears twice in {labels}")
    return tuple(out)


def lr_extend_setting(value: int | None, tuning_seeds: list[int]) -> int:
    """`lr_extend: N`: how many rates a tuning grid may grow past each edge.

    Default 1 with tuning seeds (0 without: nothing to grow on): a rate chosen at the
    grid's edge may be an edge of the grid, not the best rate (the regime map's r1 and
    r2 stopped at 8e-3, the top). A study file written before this default states its
    value, so its runs do not change."""
    if value is None:
        return 1 if tuning_seeds else 0
    if value < 0:
        raise UserError(f"lr_extend must be a whole number >= 0 (steps per edge), got {value!r}")
    if value and not tuning_seeds:
        raise UserError("lr_extend needs lr_tuning_seeds: the grid grows on the tuning seeds")
    return value


def parse_resources(raw: Section | None) -> dict[str, float]:
    """The `resources` section: known keys, non-negative numbers, whole threads >= 1."""
    if raw is None:
        return {}
    reject_unknown_keys(raw, RESOURCE_KEYS, "resources")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"resources.{key} must be a number >= 0, got {value!r}")
        out[key] = value
    threads = out.get("threads_per_run")
    if threads is not None and (threads != int(threads) or threads < 1):
        raise UserError(f"resources.threads_per_run must be a whole number >= 1, got {threads!r}")
    return out


def _top_level(raw: dict[str, Any]) -> StudyFile:
    """Known keys in their YAML shapes, required keys present. A key given as null is absent."""
    top = build_typed(StudyFile, {k: v for k, v in raw.items() if v is not None}, "", exact=True)
    missing = [k for k in REQUIRED_KEYS if getattr(top, k) is None]
    if missing:
        raise UserError(f"missing key(s) {', '.join(missing)}")
    return top


def check_header(top: StudyFile) -> tuple[str, str, list[str]]:
    """(name, description, models)."""
    name = top.name
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"name must be letters, digits, `-`, `_` or `.`, got {name!r}")
    description = top.description or ""
    if top.models is not None:
        return name, description, _model_list(top)
    model = top.model if top.model is not None else RunConfig().model
    if not model:
        raise UserError(f"model must be a preset, hub id, folder or .gguf path, got {model!r}")
    return name, description, [model]


def _model_list(top: StudyFile) -> list[str]:
    """`models: [a, b]`: runs are paired by seed within a model, statistics are per model."""
    if top.model is not None:
        raise UserError("give `model` (one) or `models` (a list), not both")
    models = top.models
    if not models:
        raise UserError(f"models must be a non-empty list of model specs, got {models!r}")
    names = [m for m in models if isinstance(m, str) and m]
    if len(names) != len(models):
        raise UserError(
            f"models: each must be a preset, hub id, folder or .gguf path, got {models}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"models: a model appears twice in {names}")
    return names


def strategy_entries(value: list[object] | None, budgets: list[str]) -> list[StrategyEntry]:
    if not value:
        raise UserError("strategies must be a non-empty list of strategy names or mappings")
    entries = [_strategy_entry(item, i, budgets) for i, item in enumerate(value)]
    labels = [e.label for e in entries]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(
                f"strategies: label {label!r} is used twice; give each entry its own `label`"
            )
    return entries


def check_baseline(value: str, entries: list[StrategyEntry]) -> str:
    labels = [e.label for e in entries]
    if not isinstance(value, str) or value not in labels:
        raise UserError(
            f"baseline {value!r} is not one of the strategies' labels ({', '.join(labels)})"
        )
    return value


def parse_baselines(
    value: Any, entries: list[StrategyEntry], budgets: list[str]
) -> tuple[str, dict[str, str]]:
    """`baseline`: one label, or {default: LABEL, BUDGET: LABEL, ...} where a budget needs
    its own (below r1 `uniform` cannot spend; `peft_default` can). Each label must run at
    the budgets it is the baseline of."""
    if not isinstance(value, dict):
        return check_baseline(value, entries), {}
    if "default" not in value:
        raise UserError(
            "baseline: a mapping needs `default` (the baseline at every budget not named), "
            'e.g. {default: uniform, "qv:r1": peft_default}'
        )
    default = check_baseline(value["default"], entries)
    own = {str(k): v for k, v in value.items() if k != "default"}
    unknown = sorted(set(own) - set(budgets))
    if unknown:
        raise UserError(
            f"baseline: {', '.join(unknown)} not among the study's budgets ({', '.join(budgets)})"
        )
    by_label = {e.label: e for e in entries}
    for budget, label in own.items():
        check_baseline(label, entries)
        runs_at = by_label[label].budgets
        if runs_at is not None and budget not in runs_at:
            raise UserError(
                f"baseline: {label!r} is the baseline at {budget} but does not run there"
            )
    for budget in budgets:
        if budget in own:
            continue
        runs_at = by_label[default].budgets
        if runs_at is not None and budget not in runs_at:
            raise UserError(
                f"baseline: {default!r} (the default) does not run at {budget}; name that "
                f"budget's own baseline, e.g. {{default: {default}, {budget!r}: peft_default}}"
            )
    return default, {b: label for b, label in own.items() if label != default}


def base_sections(top: StudyFile, model: str) -> dict[str, Any]:
    """The RunConfig sections every run of the study shares, as a plain dict."""
    allocation = top.allocation or {}
    bad = sorted(set(allocation) - set(ALLOCATION_KEYS))
    if bad:
        raise UserError(
            f"allocation: unknown or per-run key(s) {', '.join(bad)}; a study sets only "
            f"{', '.join(ALLOCATION_KEYS)} here (strategy and budget come from "
            "`strategies` and `budgets`)"
        )
    base: dict[str, Any] = {"model": model, "allocation": dict(allocation)}
    for section in ("data", "train", "eval", "adapter"):
        base[section] = dict(getattr(top, section) or {})
    return base


def _seeds(
    top: StudyFile, entries: list[StrategyEntry], candidates: tuple[float, ...] | None
) -> tuple[list[int], SeedPlan | None, list[int]]:
    """(reporting seeds, the sequential plan or None, tuning seeds), checked together."""
    tuning = (
        parse_seeds(top.lr_tuning_seeds, "lr_tuning_seeds")
        if top.lr_tuning_seeds is not None
        else []
    )
    seed_plan = parse_seed_plan(top.seeds, tuning) if isinstance(top.seeds, dict) else None
    seeds = seed_plan.seeds if seed_plan else parse_seeds(top.seeds)
    if top.lr_tuning_seeds is None:
        return seeds, seed_plan, []
    tunes = (candidates and len(candidates) > 1) or any(e.lr and len(e.lr) > 1 for e in entries)
    return seeds, seed_plan, parse_tuning_seeds(seeds, tuning, bool(tunes))


def check_splits(groups: list[Group], *, tuned: bool) -> None:
    """Every section error, once per task and size, before any run."""
    for group in groups:
        config = RunConfig.from_dict(copy.deepcopy(group.sections))
        check_metric_names(config.eval.metrics)  # the registry is a floor above the config
        if tuned and config.data.n_val < 1:
            raise UserError(
                "data.n_val must be >= 1: learning-rate candidates are chosen on validation loss"
            )
        if config.data.n_test < 1:
            raise UserError("data.n_test must be >= 1: the study reports test loss")


def read_study(raw: dict[str, Any]) -> StudyDesign:
    """A study file's YAML mapping, every key checked and typed, in one pass (no rates
    chosen yet: `spec` adds them from the stored runs). Writes and loads nothing."""
    top = _top_level(raw)
    name, description, models = check_header(top)
    budgets = parse_budget_list(top.budgets)
    labels = [b.label for b in budgets]
    entries = strategy_entries(top.strategies, labels)
    baseline, baseline_by_budget = parse_baselines(top.baseline, entries, labels)
    hypotheses = parse_hypotheses(top.hypotheses, [e.label for e in entries], baseline)
    candidates = (
        lr_list(top.lr_candidates, "lr_candidates") if top.lr_candidates is not None else None
    )
    seeds, seed_plan, tuning_seeds = _seeds(top, entries, candidates)
    baseline_budgets = next(e for e in entries if e.label == baseline).budgets
    cross_budget = parse_cross_budget(top.cross_budget, budgets, baseline_budgets or tuple(labels))
    tasks = parse_tasks(top.tasks, top.data, top.eval)
    groups = build_groups(models, tasks, base_sections(top, models[0]))
    for label in {baseline, *baseline_by_budget.values()}:
        check_where(entries, groups, label)
    check_splits(groups, tuned=candidates is not None or any(e.lr for e in entries))
    if top.out is not None and not top.out:
        raise UserError(f"out must be a folder path, got {top.out!r}")
    base_lr = RunConfig.from_dict(copy.deepcopy(groups[0].sections)).train.lr
    resources = parse_resources(top.resources)
    extend = lr_extend_setting(top.lr_extend, tuning_seeds)
    return StudyDesign(
        name=name, description=description.strip(), models=models, tasks=tasks,
        budget_values=budgets, strategies=entries, baseline=baseline, seeds=seeds,
        lr=LrRule(candidates, tuple(tuning_seeds), extend, base_lr),
        out=Path(top.out or f"studies/{name}").expanduser(), groups=groups,
        hypotheses=hypotheses, seed_plan=seed_plan, cross_budget=cross_budget,
        resources=resources, baseline_by_budget=baseline_by_budget,
    )  # fmt: skip
