"""The untrained model's losses are measured once per model, data and evaluation settings,
and read back from disk by later processes to the last digit."""

from __future__ import annotations

import pytest
from golden import differences, numbers, run_config

from adaptive_lora import run as run_module
from adaptive_lora.run import execute_run
from tiny import save_tiny, tiny_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache folder of this test's own: other tests' runs of the same tiny model (the
    golden re-runs) must not have filled it already."""
    monkeypatch.setenv("ADAPTIVE_LORA_CACHE", str(tmp_path / "cache"))


def _counting(monkeypatch):
    """How many loss passes over the untrained model are computed (not read back): a
    run's `_loss` is only its untrained losses' (the trained ones come per item)."""
    measured = []
    real = run_module.RunSteps._loss

    def counted(self, split):
        measured.append(split)
        return real(self, split)

    monkeypatch.setattr(run_module.RunSteps, "_loss", counted)
    return measured


def test_a_new_process_reads_the_untrained_losses_back_exactly(folder, tmp_path, monkeypatch):
    measured = _counting(monkeypatch)
    first = execute_run(run_config(folder, "uniform", "fp32"), tmp_path / "a", quiet=True)
    assert len(measured) == 2  # validation and test, before training
    monkeypatch.setattr(run_module, "_LOSS_BEFORE", {})  # as a new process starts
    second = execute_run(run_config(folder, "uniform", "fp32"), tmp_path / "b", quiet=True)
    assert len(measured) == 2  # both read from the cache file
    assert not differences(
        numbers(first.metrics, first.run_dir), numbers(second.metrics, second.run_dir)
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda c: setattr(c.eval, "batch_size", 2),
        lambda c: setattr(c.data, "max_length", 512),
        lambda c: setattr(c.data, "n_test", 6),  # another data subset: another data hash
        lambda c: setattr(c.train, "precision", "bf16"),
    ],
    ids=["eval-batch", "max-length", "data", "precision"],
)
def test_nothing_is_shared_across_settings_or_data(folder, tmp_path, monkeypatch, change):
    execute_run(run_config(folder, "uniform", "fp32"), tmp_path / "a", quiet=True)
    monkeypatch.setattr(run_module, "_LOSS_BEFORE", {})
    measured = _counting(monkeypatch)
    config = run_config(folder, "uniform", "fp32")
    change(config)
    execute_run(config, tmp_path / "b", quiet=True)
    assert len(measured) == 2  # measured again, not read
