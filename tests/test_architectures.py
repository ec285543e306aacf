"""Every common architecture: its inventory, every strategy's budget, PEFT's count, training.

The tiny models are built from each family's `transformers` config class (see
`tiny_arch.py`); an unknown naming falls back to generic kinds and says so.
"""

import math
import warnings

import pytest
from test_train import tiny_config
from tiny_arch import BY_NAME, FAMILIES, MadeUpModel

from adaptive_lora.adapters.lora import AdapterSettings, apply_lora, trainable_parameters
from adaptive_lora.allocation.budget import resolve_budget, tolerance
from adaptive_lora.allocation.core import STRATEGIES, AllocationContext, allocate
from adaptive_lora.allocation.for_model import allocation_on_model
from adaptive_lora.config import DataSettings
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import (
    GenericKindsWarning,
    build_inventory,
    inventory_report,
)
from adaptive_lora.records import STATUS_DONE
from adaptive_lora.run import execute_run
from tiny import byte_tokenizer, save_tiny

NAMES = [family.name for family in FAMILIES]
# Data-driven strategies calibrate on a few batches only: the tiny models are random.
QUICK_PARAMS = {"empirical": {"n_batches": 2}, "eva": {"n_batches": 2, "batch_size": 2}}


@pytest.fixture(params=NAMES)
def family(request):
    return BY_NAME[request.param]


def test_inventory_finds_every_projection(family):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenericKindsWarning)  # known families: no guessing
        inventory = build_inventory(family.build())
    assert [(m.name, m.layer, m.kind, m.d_in, m.d_out) for m in inventory] == family.expected()
    assert inventory_report(inventory) == {}


def test_fused_kinds_keep_their_group():
    phi3 = {m.kind: m.group for m in build_inventory(BY_NAME["phi3"].build())}
    assert phi3 == {"o": "attention", "qkv": "attention", "gate_up": "mlp", "down": "mlp"}
    neox = {m.kind: m.group for m in build_inventory(BY_NAME["gpt_neox"].build())}
    assert neox == {"qkv": "attention", "o": "attention", "fc": "mlp", "proj": "mlp"}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_meets_the_budget_and_peft_agrees(family, strategy, request):
    model = family.build()
    options = dict(params=QUICK_PARAMS.get(strategy), tokenizer=byte_tokenizer())
    if strategy == "oracle":  # planted data only: the budget on each family's MLP modules
        inventory = build_inventory(model)
        planted = DataSettings(source="planted", options={"sites": [{"kinds": "mlp"}]})
        ctx = AllocationContext(inventory, resolve_budget("r4", inventory), data=planted)
        allocation = allocate("oracle", ctx)
        assert {n for n, r in allocation.ranks.items() if r} == {
            m.name for m in inventory if m.group == "mlp"
        }
    elif strategy == "peft_default" and family.name == "phi3":  # PEFT has no default for it
        with pytest.raises(UserError, match="no default target modules for model type 'phi3'"):
            allocation_on_model(model, strategy, "r4", **options)
        return
    else:
        allocation = allocation_on_model(model, strategy, "r4", **options)
    gap = abs(allocation.total_params - allocation.budget.params)
    assert gap <= tolerance(allocation.inventory, allocation.budget.params)
    if strategy == "adalora":
        return  # AdaLoRA masks ranks while training; its counts are tested in test_adapters
    peft_model = apply_lora(model, allocation, AdapterSettings(), run_seed=0)
    assert trainable_parameters(peft_model) == allocation.total_params


def test_attention_heavy_favours_fused_attention(family):
    allocation = allocation_on_model(family.build(), "attention_heavy", "r8")
    per_rank = {
        group: [allocation.ranks[m.name] for m in allocation.inventory if m.group == group]
        for group in ("attention", "mlp")
    }
    assert min(per_rank["attention"]) > max(per_rank["mlp"])


def test_two_training_steps_run(family, tmp_path):
    folder = save_tiny(family.build(), tmp_path / family.name)
    config = tiny_config(
        folder,
        allocation__strategy="attention_heavy",
        train__max_steps=2,
        train__batch_size=2,
        eval__n_generate=1,
        eval__max_new_tokens=2,
    )
    result = execute_run(config, tmp_path / "runs", quiet=True)
    assert result.status == STATUS_DONE, result.error
    assert result.metrics["steps"] == 2
    assert result.metrics["trainable_params"] == result.metrics["allocation_params"]
    assert math.isfinite(result.metrics["test_loss"])


def test_an_unknown_naming_falls_back_to_generic_kinds_and_says_so():
    with pytest.warns(GenericKindsWarning, match="10 projection"):
        inventory = build_inventory(MadeUpModel())
    kinds = {m.name.split(".", 3)[-1]: (m.kind, m.group) for m in inventory if m.layer == 0}
    assert kinds == {
        "mixer.wqkv": ("mlp_generic", "mlp"),
        "mixer.wo": ("mlp_generic", "mlp"),
        "attn_gate": ("attn_generic", "attention"),
        "ffwd.w_in": ("mlp_generic", "mlp"),
        "ffwd.w_out": ("mlp_generic", "mlp"),
    }
    report = inventory_report(inventory)
    assert "\n" not in report["inventory_note"] and "generic" in report["inventory_note"]
    assert len(report["generic_modules"]) == 10


def test_generic_kinds_still_allocate_within_the_budget():
    with pytest.warns(GenericKindsWarning):
        allocation = allocation_on_model(MadeUpModel(), "attention_heavy", "r8")
    gap = abs(allocation.total_params - allocation.budget.params)
    assert gap <= tolerance(allocation.inventory, allocation.budget.params)
    # and the allocation itself says so, not only a warning on stderr
    assert (
        allocation.report["inventory_note"]
        == inventory_report(allocation.inventory)["inventory_note"]
    )
    assert allocation.to_dict()["report"]["generic_modules"]
