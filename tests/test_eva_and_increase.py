"""The two reviewer baselines: `linear_increase` (PRILoRA's direction) and `eva` (PEFT's EVA)."""

from __future__ import annotations

import pytest
import torch

from adaptive_lora.adapters.lora import AdapterSettings, apply_lora, lora_modules
from adaptive_lora.allocation.budget import resolve_budget, tolerance
from adaptive_lora.allocation.core import AllocationContext, allocate
from adaptive_lora.config import RunConfig
from adaptive_lora.data.builtin import builtin_examples
from adaptive_lora.data.calibration import make_calibration
from adaptive_lora.data.splits import make_splits
from adaptive_lora.errors import UserError
from adaptive_lora.methods.eva.adapter import eva_init_components, load_eva_init
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.run import execute_run
from tiny import byte_tokenizer, save_tiny, tiny_gpt2, tiny_llama

EVA_FAST = {"n_batches": 4, "batch_size": 4, "tau": 0.9}


@pytest.fixture(scope="module")
def calibration():
    splits = make_splits(
        builtin_examples(120), n_train=48, n_val=16, n_test=16, seed=0, test_first=False
    )  # the calibration these tests were written on (see the closing note of 2026-12-07)
    return make_calibration(
        splits.train, byte_tokenizer(), max_length=192, template="chat", data_hash=splits.data_hash
    )


def context(model, budget="r8", **extra):
    inventory = build_inventory(model)
    return AllocationContext(
        inventory=inventory, budget=resolve_budget(budget, inventory), model=model, **extra
    )


def layer_sums(allocation):
    return [v["rank"] for v in allocation.sums_by("layer").values()]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_linear_increase_grows_with_depth_within_budget(factory):
    model = factory()
    ctx = context(model)
    allocation = allocate("linear_increase", ctx, {"ratio": 3})
    sums = layer_sums(allocation)
    assert sums[-1] > sums[0]
    assert abs(allocation.total_params - ctx.budget.params) <= tolerance(
        ctx.inventory, ctx.budget.params
    )
    decay = allocate("linear_decay", context(model), {"ratio": 3})
    assert layer_sums(decay)[0] > layer_sums(decay)[-1]


def test_linear_increase_rejects_a_ratio_below_one():
    with pytest.raises(UserError, match="ratio must be >= 1"):
        allocate("linear_increase", context(tiny_llama()), {"ratio": 0.5})


def test_eva_takes_peft_ranks_as_shape_and_meets_the_parameter_budget(calibration, tmp_path):
    model = tiny_llama()
    ctx = context(model, calibration=calibration, cache_dir=str(tmp_path))
    allocation = allocate("eva", ctx, EVA_FAST)
    assert abs(allocation.total_params - ctx.budget.params) <= tolerance(
        ctx.inventory, ctx.budget.params
    )
    report = allocation.report["eva"]
    assert report["peft_rank_budget"] == 8 * len(ctx.inventory)
    assert sum(report["peft_ranks"].values()) == report["peft_rank_budget"]
    assert report["cache"] == "miss" and report["init_from_svd"] is False
    # the second call is answered from the cache with the same ranks
    again = allocate(
        "eva", context(model, calibration=calibration, cache_dir=str(tmp_path)), EVA_FAST
    )
    assert again.report["eva"]["cache"] == "hit" and again.ranks == allocation.ranks


def test_eva_without_data_is_a_user_error():
    with pytest.raises(UserError, match="eva needs the model weights and training data"):
        allocate("eva", context(tiny_llama()), EVA_FAST)


def test_eva_init_puts_singular_vectors_into_a(calibration, tmp_path):
    model = tiny_llama()
    params = {**EVA_FAST, "init_from_svd": True}
    allocation = allocate(
        "eva", context(model, calibration=calibration, cache_dir=str(tmp_path)), params
    )
    components = eva_init_components(model, allocation, calibration)
    peft_model = apply_lora(model, allocation, AdapterSettings(), run_seed=0)
    assert load_eva_init(peft_model, components) == len(components)
    for name, module in lora_modules(peft_model).items():
        a = module.lora_A["default"].weight
        rows = components[name].shape[0]
        torch.testing.assert_close(a[:rows], components[name].to(a.dtype))
        assert torch.count_nonzero(module.lora_B["default"].weight) == 0


def test_eva_init_gives_each_module_exactly_its_rank_also_where_modules_share_an_input(
    calibration,
):
    """q, k and v read one input, so PEFT computes one SVD for them with the largest cap
    of the three; asked for their own ranks it redistributed within the group (a module
    got 9 rows for rank 8). Each now gets its own rank's top components of that SVD."""
    model = tiny_llama()
    inventory = build_inventory(model)
    ranks = {m.name: 2 for m in inventory}
    for m in inventory:  # one module of each shared-input group above the others
        if m.kind in ("q", "gate"):
            ranks[m.name] = 5
        elif m.kind == "v":
            ranks[m.name] = 1
    allocation = allocate("uniform", context(model), {})
    allocation.ranks = ranks
    allocation.params = {**EVA_FAST, "calibration_seed": 0}
    components = eva_init_components(model, allocation, calibration)
    assert {name: rows.shape[0] for name, rows in components.items()} == ranks
    # Modules that share an input share its components: the smaller rank is a prefix.
    layer0 = {m.kind: m.name for m in inventory if m.layer == 0}
    torch.testing.assert_close(components[layer0["k"]], components[layer0["q"]][:2])
    torch.testing.assert_close(components[layer0["v"]], components[layer0["q"]][:1])


def test_a_run_with_eva_init_sets_every_a_and_records_it(tmp_path):

    folder = save_tiny(tiny_llama(), tmp_path / "llama")
    config = RunConfig.from_dict(
        {
            "model": folder,
            "data": {
                "source": "builtin",
                "n_train": 24,
                "n_val": 8,
                "n_test": 8,
                "max_length": 256,
                # Pinned: on the test_first split of this tiny model PEFT's EVA SVD does
                # not converge at tau 0.9 and cycles the calibration batches for many
                # minutes (its loop has no bound; the `eva` strategy, not the init).
                "split": "train_first",
            },
            "allocation": {"strategy": "eva", "params": {**EVA_FAST, "init_from_svd": True}},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-3},
            "eval": {"n_generate": 1, "max_new_tokens": 2, "batch_size": 8},
        }
    )
    result = execute_run(config, tmp_path / "runs", quiet=True)
    assert result.status == "done", result.error
    n_modules = len(result.metrics["strategy_report"]["eva"]["peft_ranks"])
    assert result.metrics["eva_init_modules"] == n_modules
