"""A study as a factorial design: models × tasks × data sizes × budgets.

    models: [smollm2-135m]
    data: {n_train: [100, 400], n_val: 50, data_seed: 0, max_length: 128}   # shared
    tasks:
      - {name: alpaca, data: {source: ../shared/data/alpaca_en_demo.json, n_test: 100}}
      - name: arith
        data: {source: "reasoning_gym:basic_arithmetic", options: {max_terms: 3}, n_test: 200}
        eval: {max_new_tokens: 16}          # n_generate: all test items by default

A *group* is one model × task × data size; a *cell* is a group × budget. Runs pair by
seed within a group; every comparison, Holm family, learning-rate choice and
cross-budget question lives inside one group. A task's `data` and `eval` sections
override the study's; `n_train` may be a list (the data sizes) in either. Without
`tasks`, the study's own `data` is its one task. `n_test: all` tests on every item the
pool leaves over beside the largest training set and validation (`splits.held_out_count`;
not for a generated task, whose pool has no end), resolved here so each run records its
number.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from adaptive_lora.config import LEGACY_DATA, DataSettings, RunConfig
from adaptive_lora.data.reasoning_gym import is_reasoning_gym
from adaptive_lora.data.splits import ALL_HELD_OUT, held_out_count
from adaptive_lora.errors import UserError
from adaptive_lora.records import canonical_json
from adaptive_lora.study.hypotheses import reject_unknown_keys

TASK_KEYS = ("name", "data", "eval")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Task:
    """One data source of a study with its own data and evaluation settings."""

    name: str
    data: dict[str, Any]  # DataSettings fields except n_train
    eval: dict[str, Any]  # EvalSettings fields
    sizes: tuple[int, ...]  # the training sizes it runs at


@dataclass(frozen=True)
class Group:
    """One model × task × data size: the runs that pair by seed with each other."""

    model: str
    task: str
    n_train: int
    sections: dict[str, Any]  # the RunConfig sections every run of the group shares
    signature: str = ""  # `group_signature` of its resolved config: how stored runs find it

    @property
    def key(self) -> str:
        return f"{self.model}|{self.task}|{self.n_train}"

    def title(self, varies: tuple[bool, bool, bool]) -> str:
        """The group's name in a report: only the factors that vary in the study."""
        parts = []
        if varies[0]:
            parts.append(f"model `{self.model}`")
        if varies[1]:
            parts.append(f"task `{self.task}`")
        if varies[2]:
            parts.append(f"n_train = {self.n_train}")
        return ", ".join(parts) or f"model `{self.model}`"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.model}-{self.task}-n{self.n_train}").strip("-")


def group_signature(config: dict[str, Any]) -> str:
    """What places a stored run in its group: its model and its data settings.

    Stores written before `data.options` existed lack the key; it means no options.
    Those written before `data.split` lack it too; it means `train_first`.
    """
    data = {"options": {}, **LEGACY_DATA, **config.get("data", {})}
    return canonical_json([config.get("model"), data])


def parse_sizes(value: Any, where: str) -> tuple[int, ...]:
    """`n_train: 200` or `n_train: [100, 400]` → distinct sizes >= 1, in the order given."""
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise UserError(f"{where} must be a whole number >= 1 or a list of them, got {value!r}")
    if len(set(values)) != len(values):
        raise UserError(f"{where}: a size appears twice in {values}")
    return tuple(values)


def parse_tasks(
    listed: list[object] | None,
    data: dict[str, object] | None,
    evaluation: dict[str, object] | None,
) -> list[Task]:
    """The study's tasks (its `data` alone when it lists none), each with its sizes; `data`
    and `evaluation` are the study's own sections, which a task's override."""
    data = copy.deepcopy(data or {})
    evaluation = copy.deepcopy(evaluation or {})
    if listed is None:
        return [_task("data", data, evaluation, "data")]
    if not listed:
        raise UserError("tasks must be a non-empty list of {name, data, eval} mappings")
    tasks = []
    for index, entry in enumerate(listed):
        where = f"tasks[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping with name, data and eval, got {entry!r}")
        reject_unknown_keys(entry, TASK_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"{where}.name must be letters, digits, `-`, `_` or `.`, got {name!r}")
        own_data, own_eval = _section(entry, "data", where), _section(entry, "eval", where)
        tasks.append(_task(name, {**data, **own_data}, {**evaluation, **own_eval}, where))
    _check_distinct(tasks)
    return tasks


def _section(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """A task's own `data` or `eval` mapping (empty when it gives none)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}.{key} must be a mapping, got {value!r}")
    return copy.deepcopy(value)


def _task(name: str, data: dict[str, Any], evaluation: dict[str, Any], where: str) -> Task:
    sizes = parse_sizes(
        data.pop("n_train", 160), f"{where}.n_train" if where != "data" else "data.n_train"
    )
    source = data.get("source", "builtin")
    if data.get("n_test") == ALL_HELD_OUT and isinstance(source, str):
        # Test loss is cheap beside generation: every item the pool leaves over.
        n_val = data.get("n_val", DataSettings().n_val)
        if isinstance(n_val, int) and not isinstance(n_val, bool):  # else: its own error later
            data["n_test"] = held_out_count(source, data.get("options") or {}, n_val, max(sizes))
    if isinstance(source, str) and is_reasoning_gym(source) and "n_generate" not in evaluation:
        # Accuracy is the point of a generated task: answer every test item by default.
        evaluation["n_generate"] = data.get("n_test", 48)
    return Task(name, data, evaluation, sizes)


def _check_distinct(tasks: list[Task]) -> None:
    names = [t.name for t in tasks]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"tasks: the name {name!r} is used twice")
    seen: dict[str, str] = {}
    for task in tasks:
        data = canonical_json({k: v for k, v in task.data.items()})
        if data in seen:
            raise UserError(
                f"tasks {seen[data]!r} and {task.name!r} have the same data settings; "
                "runs could not be told apart (change the source, options or data_seed)"
            )
        seen[data] = task.name


def build_groups(models: list[str], tasks: list[Task], base: dict[str, Any]) -> list[Group]:
    """Every model × task × size, in that order, with its RunConfig sections."""
    groups = []
    for model in models:
        for task in tasks:
            for size in task.sizes:
                sections = copy.deepcopy(base)
                sections["model"] = model
                sections["data"] = {**task.data, "n_train": size}
                sections["eval"] = dict(task.eval)
                resolved = RunConfig.from_dict(copy.deepcopy(sections)).to_dict()
                groups.append(Group(model, task.name, size, sections, group_signature(resolved)))
    return groups
