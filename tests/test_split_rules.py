"""How a pool is split: one test set for every training size, per-seed draws, and the
published studies' training-first order kept exactly (their runs resume and re-run)."""

from __future__ import annotations

import json
import random

import pytest

from adaptive_lora.config import DataSettings, RunConfig
from adaptive_lora.data.splits import hash_examples, load_splits, make_splits
from adaptive_lora.errors import UserError
from adaptive_lora.report.environment_check import check_environment
from adaptive_lora.study.design import group_signature
from adaptive_lora.study.store import RunRow


def _alpaca_file(tmp_path, n=120):
    records = [
        {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(n)
    ]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(records))
    return str(path)


def _ids(split):
    return [example["instruction"] for example in split]


def test_a_data_file_keeps_its_test_set_across_training_sizes(tmp_path):
    source = _alpaca_file(tmp_path)
    small = load_splits(DataSettings(source=source, n_train=16, n_val=8, n_test=32))
    large = load_splits(DataSettings(source=source, n_train=64, n_val=8, n_test=32))
    assert _ids(small.test) == _ids(large.test)
    assert small.test_hash == large.test_hash == hash_examples(small.test)
    assert _ids(small.val) == _ids(large.val)
    assert _ids(large.train)[:16] == _ids(small.train)  # training sets nested
    assert not set(_ids(large.train)) & set(_ids(small.test))


def test_train_first_is_the_published_order(tmp_path):
    """The order studies before 2026-12-07 used, computed here independently."""
    source = _alpaca_file(tmp_path)
    settings = DataSettings(source=source, n_train=40, n_val=10, n_test=20, split="train_first")
    splits = load_splits(settings)
    order = list(range(120))
    random.Random(0).shuffle(order)
    assert _ids(splits.train) == [f"Question {i}?" for i in order[:40]]
    assert _ids(splits.val) == [f"Question {i}?" for i in order[40:50]]
    assert _ids(splits.test) == [f"Question {i}?" for i in order[50:70]]
    bigger = load_splits(DataSettings(source=source, n_train=80, n_val=10, n_test=20,
                                      split="train_first"))  # fmt: skip
    assert bigger.test_hash != splits.test_hash  # what test_first mends


def test_per_seed_splits_differ_by_seed_and_repeat_within_one(tmp_path):
    source = _alpaca_file(tmp_path)
    settings = DataSettings(source=source, n_train=40, n_val=10, n_test=20, split="per_seed")
    one, again, two = load_splits(settings, 1), load_splits(settings, 1), load_splits(settings, 2)
    assert one == again  # both strategies of seed 1's pair train and test on this split
    assert one.test_hash != two.test_hash
    assert one.source_hash == two.source_hash  # the pool they are drawn from
    assert not set(_ids(one.train)) & set(_ids(one.test))


def test_per_seed_generated_task_draws_per_seed():
    settings = DataSettings(
        source="reasoning_gym:basic_arithmetic", n_train=8, n_val=4, n_test=4, split="per_seed"
    )
    one, two = load_splits(settings, 1), load_splits(settings, 2)
    assert one.test_hash != two.test_hash and one.source_hash == two.source_hash
    fixed = DataSettings(source="reasoning_gym:basic_arithmetic", n_train=8, n_val=4, n_test=4)
    assert load_splits(fixed, 1) == load_splits(fixed, 2)


def test_an_unknown_split_rule_is_one_line():
    with pytest.raises(UserError, match="data.split must be one of test_first, train_first"):
        RunConfig.from_dict({"data": {"split": "random"}})


def test_ids_keep_published_runs_and_name_the_new_default():
    legacy = RunConfig().to_dict()
    del legacy["data"]["split"]  # a config stored before the field existed
    stored = RunConfig.from_stored(legacy)
    assert stored.data.split == "train_first"
    explicit = RunConfig.from_dict({"data": {"split": "train_first"}})
    assert stored.run_id() == explicit.run_id()
    assert RunConfig().run_id() != explicit.run_id()  # test_first runs are new runs
    per_seed = RunConfig.from_dict({"data": {"split": "per_seed"}})
    assert len({RunConfig().run_id(), per_seed.run_id(), explicit.run_id()}) == 3


def test_stored_rows_without_the_field_stay_in_their_group():
    legacy = RunConfig().to_dict()
    del legacy["data"]["split"]
    study_group = RunConfig.from_dict({"data": {"split": "train_first"}}).to_dict()
    assert group_signature(legacy) == group_signature(study_group)
    assert group_signature(legacy) != group_signature(RunConfig().to_dict())


def _row(run_id, manifest):
    return RunRow(
        id=run_id, position=0, label="uniform", strategy="uniform", budget="r4", seed=1,
        lr=1e-3, status="done", reason=None, config={}, metrics={}, manifest=manifest,
        seconds=1.0, run_dir=None, started_at=None, ended_at=None, attempts=1,
    )  # fmt: skip


def test_per_seed_runs_pool_by_their_pool_not_their_split():
    base = {"data_source_hash": "pool", "data_split": "per_seed"}
    rows = [_row("a", {**base, "data_hash": "s1"}), _row("b", {**base, "data_hash": "s2"})]
    assert not check_environment(rows)["mixed"]
    fixed = [_row("a", {"data_hash": "s1"}), _row("b", {"data_hash": "s2"})]
    assert "data hash" in check_environment(fixed)["differ"]


def test_make_splits_test_first_slices_the_order():
    examples = [{"instruction": str(i), "input": "", "output": ""} for i in range(10)]
    splits = make_splits(examples, 5, 2, 3, seed=3)
    order = list(range(10))
    random.Random(3).shuffle(order)
    assert _ids(splits.test) == [str(i) for i in order[:3]]
    assert _ids(splits.val) == [str(i) for i in order[3:5]]
    assert _ids(splits.train) == [str(i) for i in order[5:10]]
