"""A worker keeps its loaded model between runs (both executors pass one `loaded` model to
every run of it); no state of one run may reach the next: two runs in one worker, in
either order, give every number a fresh process gives them."""

from __future__ import annotations

import pytest
from golden import differences, numbers, run_config

from adaptive_lora.model.loading import load_model
from adaptive_lora.run import execute_run
from tiny import save_tiny, tiny_llama

# Strategies whose adapters touch the model differently: plain LoRA, and AdaLoRA (its own
# PEFT tuner, masks and a rank allocator patched in for the run).
PAIR = (("uniform", 0), ("adalora", 1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("warm"))


def _run(folder, strategy, seed, precision, out, loaded=None):
    config = run_config(folder, strategy, precision)
    config.seed = seed
    result = execute_run(config, out, loaded=loaded, quiet=True)
    assert result.status == "done", result.error
    return numbers(result.metrics, result.run_dir)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_runs_in_one_worker_in_both_orders_equal_fresh_ones(folder, tmp_path, precision):
    fresh = {s: _run(folder, s, seed, precision, tmp_path / f"fresh-{s}") for s, seed in PAIR}
    for order in (PAIR, PAIR[::-1]):
        loaded = load_model(folder)  # one worker: one model for both runs
        for strategy, seed in order:
            out = tmp_path / f"warm-{order[0][0]}-{strategy}"
            warm = _run(folder, strategy, seed, precision, out, loaded=loaded)
            assert not differences(fresh[strategy], warm), (order, strategy)
