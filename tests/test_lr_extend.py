"""Learning rates beyond the grid's edge: tuning grows the grid while the best rate sits there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_runs import FakeRuns

from adaptive_lora.errors import UserError
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study


class ValleyAt(FakeRuns):
    """Fake runs whose validation loss is lowest at one rate (|log2(lr / best)|)."""

    def __init__(self, best: float):
        super().__init__()
        self.best = best
        self.lrs: list[float] = []

    def metrics(self, config):
        import math

        lr = config.train.lr
        self.lrs.append(lr)
        return {"test_loss": 2.0, "val_loss": 2.0 + abs(math.log2(lr / self.best))}


def _study(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "lrx", "model": "fake/model",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
        "budgets": ["r4"], "strategies": ["uniform"], "seeds": [1],
        "lr_candidates": [1e-3, 2e-3, 4e-3], "lr_tuning_seeds": [0], "lr_extend": 2,
        "train": {"max_steps": 1}, "out": str(tmp_path / "out"), **changes,
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "best, chosen, tried",
    [
        (16e-3, 16e-3, {1e-3, 2e-3, 4e-3, 8e-3, 16e-3}),  # two steps up reach the valley
        (2e-3, 2e-3, {1e-3, 2e-3, 4e-3}),  # interior: nothing added
        (1e-5, 2.5e-4, {2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3}),  # the limit: still at the edge
    ],
)
def test_the_grid_grows_past_an_edge_until_the_best_rate_is_interior(tmp_path, best, chosen, tried):
    path = _study(tmp_path)
    fake = ValleyAt(best)
    run_study(load_study(path, check_sources=False),
              executor=LocalExecutor(fake, load_model=lambda s: None), log=lambda x: None)  # fmt: skip
    study = load_study(path, check_sources=False)
    choice = study.lr_choices[("uniform", "r4")]
    assert choice.chosen == pytest.approx(chosen) and choice.complete
    assert {round(lr, 8) for lr in fake.lrs if lr != chosen} | {round(chosen, 8)} >= {
        round(x, 8) for x in tried
    }
    assert set(round(c, 8) for c in choice.candidates) == {round(x, 8) for x in tried}
    reporting = [s for s in study.runs if not s.tuning]
    assert [s.lr for s in reporting] == [pytest.approx(chosen)]
    if best == 1e-5:
        assert "still the smallest rate after 2 step(s)" in choice.note


def test_lr_extend_needs_tuning_seeds(tmp_path):
    with pytest.raises(UserError, match="lr_extend needs lr_tuning_seeds"):
        load_study(_study(tmp_path, lr_tuning_seeds=None), check_sources=False)
