"""Run ids: stable when a defaulted field is added, different whenever a run changes."""

from __future__ import annotations

import copy

import pytest

from adaptive_lora.config import RunConfig
from adaptive_lora.records import ID_SCHEMA_1, NOT_IDENTITY, run_id_for


def leaf_paths(value, prefix=""):
    for key, item in value.items():
        path = prefix + key
        if isinstance(item, dict) and path not in ID_SCHEMA_1:
            yield from leaf_paths(item, path + ".")
        else:
            yield path


def set_path(value: dict, path: str, new) -> None:
    *parents, last = path.split(".")
    for key in parents:
        value = value[key]
    value[last] = new


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {**value, "extra": 1}
    if isinstance(value, list):
        return [*value, "mlflow"]
    return 3  # None -> a value


def test_the_schema_names_every_field_of_the_config_today():
    paths = set(leaf_paths(RunConfig().to_dict())) - NOT_IDENTITY
    assert ID_SCHEMA_1 <= paths  # every schema-1 field still exists


def test_adding_a_defaulted_field_keeps_every_id():
    configs = [RunConfig(), RunConfig(seed=3), RunConfig.from_dict({"train": {"lr": 5e-4}})]
    defaults = RunConfig().to_dict()
    for config in configs:
        before = run_id_for(config.to_dict(), defaults)
        grown, grown_defaults = config.to_dict(), copy.deepcopy(defaults)
        for section, field, default in [("eval", "new_metric", "rouge_l"), ("train", "new", None)]:
            grown[section][field] = default
            grown_defaults[section][field] = default
        assert run_id_for(grown, grown_defaults) == before
        grown["eval"]["new_metric"] = "exact"  # the new field set to something else
        assert run_id_for(grown, grown_defaults) != before


@pytest.mark.parametrize("path", sorted(ID_SCHEMA_1))
def test_changing_any_field_that_alters_a_run_changes_its_id(path):
    base = RunConfig().to_dict()
    other = copy.deepcopy(base)
    value = base
    for key in path.split("."):
        value = value[key]
    set_path(other, path, changed(value))
    defaults = RunConfig().to_dict()
    assert run_id_for(other, defaults) != run_id_for(base, defaults)


def test_threads_are_not_part_of_a_runs_identity():
    one = RunConfig.from_dict({"train": {"threads": 1}})
    assert one.run_id() == RunConfig().run_id()
