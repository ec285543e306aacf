"""The golden re-runs (`tests/golden.py`): the same numbers to the last digit, or a
`NUMERICS_VERSION` bump that says the change means to move them."""

from __future__ import annotations

import json

import pytest
import torch
from golden import RUNS, differences, family, golden_path, golden_runs

from adaptive_lora.environment import NUMERICS_VERSION

RECORD = "record them with `.venv/bin/python tests/golden.py --record`"


def _stored() -> dict:
    path = golden_path()
    if not path.exists():
        pytest.skip(f"no golden numbers for this CPU family ({family()}): {RECORD}")
    stored = json.loads(path.read_text())
    if stored["numerics_version"] != NUMERICS_VERSION:
        # A deliberate bump: these numbers belong to the code before it; the family's
        # file must be recorded again on a machine of that family.
        pytest.skip(
            f"{path.name} holds numerics version {stored['numerics_version']}, the code is "
            f"{NUMERICS_VERSION}: {RECORD} on a {family()} machine"
        )
    if stored["torch"] != torch.__version__:
        pytest.skip(f"{path.name} was recorded with torch {stored['torch']}: {RECORD}")
    return stored


def test_golden_runs_give_the_stored_numbers(tmp_path):
    stored = _stored()
    assert sorted(stored["runs"]) == sorted(RUNS), f"the golden runs changed: {RECORD}"
    found = golden_runs(tmp_path)
    moved = differences(stored["runs"], found)
    assert not moved, (
        f"{len(moved)} number(s) moved without a NUMERICS_VERSION bump (environment.py); "
        "if the change means to change results, bump it and re-record. First: "
        + "; ".join(moved[:5])
    )


def test_the_comparison_sees_a_last_digit():
    a = {"run": {"numbers": {"test_loss": 0.3, "curve": [[1, 2.5]]}}}
    b = {"run": {"numbers": {"test_loss": 0.1 + 0.2, "curve": [[1, 2.5]]}}}  # one ulp apart
    assert differences(a, a) == []
    assert differences(a, b) == ["run.numbers.test_loss: 0.3 → 0.30000000000000004"]
    assert differences(a, {"run": {"numbers": {"curve": [[1, 2.5]]}}})  # a number gone
    # A key recorded since the numbers were stored (a new field of every generation
    # record, say) moves none of them.
    newer = {"run": {"numbers": {"test_loss": 0.3, "curve": [[1, 2.5]], "hit_token_limit": True}}}
    assert differences(a, newer) == []
    assert differences(newer, a) == ["run.numbers.hit_token_limit: True → (missing)"]
