"""`data.n_test: all`: test loss on every item the pool leaves over (issue 38, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main
from adaptive_lora.data.builtin import builtin_examples
from adaptive_lora.errors import UserError
from adaptive_lora.study import load_study


def _study(tmp_path: Path, data: dict, **changes) -> Path:
    spec = {
        "name": "held-out",
        "model": "smollm2-135m",
        "data": {"n_val": 5, "n_test": "all", **data},
        "budgets": ["r2"],
        "strategies": ["uniform"],
        "seeds": [0],
        "out": str(tmp_path / "out"),
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _alpaca_file(tmp_path: Path, count: int) -> str:
    records = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(count)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_all_is_the_pool_less_the_largest_training_set_and_validation_for_every_size(tmp_path):
    source = _alpaca_file(tmp_path, 50)
    study = load_study(_study(tmp_path, {"source": source, "n_train": [10, 20]}))
    sizes = {(spec.config.data.n_train, spec.config.data.n_test) for spec in study.runs}
    assert sizes == {(10, 25), (20, 25)}  # 50 − 20 − 5, one test set for both sizes


def test_all_on_the_builtin_set_and_a_planted_pool(tmp_path):
    study = load_study(_study(tmp_path, {"source": "builtin", "n_train": 40}))
    assert study.runs[0].config.data.n_test == len(builtin_examples()) - 40 - 5
    planted = {
        "source": "planted",
        "n_train": 30,
        "options": {"sites": [{"kinds": ["down"], "layers": "last_third"}], "pool_size": 90},
    }
    study = load_study(_study(tmp_path, planted), check_sources=False)
    assert study.runs[0].config.data.n_test == 90 - 30 - 5


def test_a_number_stays_a_number(tmp_path):
    source = _alpaca_file(tmp_path, 50)
    study = load_study(_study(tmp_path, {"source": source, "n_train": 10, "n_test": 7}))
    assert study.runs[0].config.data.n_test == 7


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"source": "reasoning_gym:basic_arithmetic", "n_train": 10},
            "no finite pool; give the number of test items",
        ),
        ({"source": "POOL", "n_train": 45}, "has 50 items and the largest training set \\(45\\)"),
    ],
)
def test_all_without_items_to_spare_is_refused_in_one_line(tmp_path, data, message):
    if data["source"] == "POOL":
        data = {**data, "source": _alpaca_file(tmp_path, 50)}
    with pytest.raises(UserError, match=message) as caught:
        load_study(_study(tmp_path, data), check_sources=False)
    assert "\n" not in str(caught.value)


def test_the_cli_refuses_it_before_anything_loads(tmp_path, capsys):
    path = _study(tmp_path, {"source": "reasoning_gym:basic_arithmetic", "n_train": 10})
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_test: all" in err, err
    assert not (tmp_path / "out").exists()
