from dataclasses import replace

import pytest
import torch

from adaptive_lora.adapters.export import calibration_record, check_exportable
from adaptive_lora.adapters.lora import (
    AdapterSettings,
    apply_lora,
    build_lora_config,
    lora_modules,
    pattern_key,
    trainable_parameters,
)
from adaptive_lora.adapters.methods import METHODS, MethodHooks, build_adapter, method_hooks
from adaptive_lora.errors import UserError
from adaptive_lora.methods import STRATEGIES as REGISTRY
from tiny import allocation_for, tiny_gpt2, tiny_llama

STRATEGIES = ["uniform", "linear_decay", "attention_heavy", "random"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("budget", ["r8", "r16"])
def test_trainable_count_equals_allocation(strategy, build, budget):
    model = build()
    allocation = allocation_for(model, strategy, budget)
    peft_model = apply_lora(model, allocation, AdapterSettings(), run_seed=0)
    assert trainable_parameters(peft_model) == allocation.total_params
    built = {name: m.r["default"] for name, m in lora_modules(peft_model).items()}
    assert built == allocation.ranks


def test_alpha_pattern_keeps_one_scale(llama):
    allocation = allocation_for(llama, "linear_decay", "r8")
    peft_model = apply_lora(llama, allocation, AdapterSettings(alpha_ratio=2.0), 0)
    scales = {m.scaling["default"] for m in lora_modules(peft_model).values()}
    assert scales == {2.0}


def test_rslora_scale_follows_inverse_sqrt_rank(llama):
    allocation = allocation_for(llama, "linear_decay", "r8")
    peft_model = apply_lora(llama, allocation, AdapterSettings(alpha_ratio=2.0, rslora=True), 0)
    for name, module in lora_modules(peft_model).items():
        r = allocation.ranks[name]
        assert module.scaling["default"] == pytest.approx(2.0 * (8 / r) ** 0.5)


def test_pattern_keys_are_anchored(gpt2):
    # `attn.c_proj` is a suffix of nothing else, but `h.1.mlp.c_proj` and
    # `h.11.mlp.c_proj`-style collisions are what the anchor prevents.
    names = [n for n, _ in gpt2.named_modules()]
    allocation = allocation_for(gpt2, "linear_decay")
    config = build_lora_config(allocation, AdapterSettings(), names)
    assert all(key.startswith("^") for key in config.rank_pattern)
    assert pattern_key("transformer.h.1.mlp.c_proj") == r"^transformer\.h\.1\.mlp\.c_proj"


def test_a_key_matching_two_modules_is_caught(gpt2):
    from adaptive_lora.adapters.lora import check_pattern_keys

    with pytest.raises(RuntimeError, match="matches"):
        check_pattern_keys(["c_proj"], [n for n, _ in gpt2.named_modules()], {"c_proj": "x"})


def test_same_seed_same_init_where_ranks_agree():
    from dataclasses import replace

    uniform = allocation_for(tiny_llama(), "uniform", "r8")
    changed = "model.layers.1.mlp.up_proj"
    other = replace(uniform, strategy="hand", ranks={**uniform.ranks, changed: 4})
    a = apply_lora(tiny_llama(), uniform, AdapterSettings(), 7)
    b = apply_lora(tiny_llama(), other, AdapterSettings(), 7)
    c = apply_lora(tiny_llama(), uniform, AdapterSettings(), 8)
    la, lb, lc = lora_modules(a), lora_modules(b), lora_modules(c)
    for name in la:
        wa, wb = la[name].lora_A["default"].weight, lb[name].lora_A["default"].weight
        if name == changed:
            assert wb.shape[0] == 4 and wa.shape[0] == 8
        else:
            torch.testing.assert_close(wa, wb)
        assert not torch.equal(wa, lc[name].lora_A["default"].weight)
        assert torch.count_nonzero(la[name].lora_B["default"].weight) == 0


def test_init_ignores_global_rng():
    torch.manual_seed(1)
    a = apply_lora(tiny_llama(), allocation_for(tiny_llama(), "uniform"), AdapterSettings(), 3)
    torch.manual_seed(2)
    b = apply_lora(tiny_llama(), allocation_for(tiny_llama(), "uniform"), AdapterSettings(), 3)
    for name, module in lora_modules(a).items():
        torch.testing.assert_close(
            module.lora_A["default"].weight, lora_modules(b)[name].lora_A["default"].weight
        )


def test_only_the_methods_bring_hooks():
    with_hooks = {name for name in REGISTRY if method_hooks(name) != MethodHooks()}
    assert with_hooks == {"adalora", "eva"}
    with pytest.raises(UserError, match="adalora learns its ranks during training"):
        check_exportable("adalora")
    check_exportable("eva")


def test_a_run_dispatches_on_the_hooks_a_method_has_not_its_name(monkeypatch, llama):
    allocation = allocation_for(llama, "uniform", "r8")
    read = []

    def init(base_model, alloc, calibration):
        read.append(calibration())  # read before PEFT wraps the model
        assert not lora_modules(base_model)
        return lambda peft_model: {"set": len(lora_modules(peft_model))}

    monkeypatch.setitem(METHODS, "uniform", MethodHooks(init=init, export_refusal="no"))
    settings = AdapterSettings()
    built = build_adapter(llama, allocation, settings, 0, total_steps=4, calibration=lambda: "b")
    assert read == ["b"] and built.records == {"set": len(allocation.ranks)}
    with pytest.raises(UserError, match="^no$"):
        check_exportable("uniform")
    caveat = MethodHooks(export_caveat=lambda params: " (not carried)")
    monkeypatch.setitem(METHODS, "empirical", caveat)
    data_driven = replace(allocation, strategy="empirical")  # only the name is read here
    assert calibration_record(data_driven)["note"].endswith(" (not carried)")


def test_wrapping_prints_no_deprecation_the_user_cannot_act_on():
    """PEFT reads `is_gradient_checkpointing`, deprecated by transformers 5: every run
    printed a FutureWarning about it. The wrap keeps other warnings."""
    import warnings

    model = tiny_llama()
    assert hasattr(type(model), "is_gradient_checkpointing")  # the deprecated alias exists
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_lora(model, allocation_for(model, "uniform", "r4"), AdapterSettings(), run_seed=0)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
