import pytest

from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import build_inventory, resolve_targets, weight_matrix


def test_gpt2_inventory_every_field(gpt2):
    rows = [
        (m.name, m.layer, m.kind, m.group, m.d_in, m.d_out, m.cost_per_rank)
        for m in build_inventory(gpt2)
    ]
    expected = []
    for layer in (0, 1):
        p = f"transformer.h.{layer}"
        expected += [
            (f"{p}.attn.c_attn", layer, "qkv", "attention", 32, 96, 128),
            (f"{p}.attn.c_proj", layer, "o", "attention", 32, 32, 64),
            (f"{p}.mlp.c_fc", layer, "fc", "mlp", 32, 128, 160),
            (f"{p}.mlp.c_proj", layer, "proj", "mlp", 128, 32, 160),
        ]
    assert rows == expected


def test_llama_inventory_every_field(llama):
    rows = [
        (m.name, m.layer, m.kind, m.group, m.d_in, m.d_out, m.cost_per_rank)
        for m in build_inventory(llama)
    ]
    expected = []
    for layer in (0, 1):
        a, f = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        expected += [
            (f"{a}.q_proj", layer, "q", "attention", 32, 32, 64),
            (f"{a}.k_proj", layer, "k", "attention", 32, 16, 48),  # 2 kv heads of 8
            (f"{a}.v_proj", layer, "v", "attention", 32, 16, 48),
            (f"{a}.o_proj", layer, "o", "attention", 32, 32, 64),
            (f"{f}.gate_proj", layer, "gate", "mlp", 32, 64, 96),
            (f"{f}.up_proj", layer, "up", "mlp", 32, 64, 96),
            (f"{f}.down_proj", layer, "down", "mlp", 64, 32, 96),
        ]
    assert rows == expected


def test_conv1d_weight_is_transposed_to_out_in(gpt2):
    c_fc = gpt2.transformer.h[0].mlp.c_fc
    assert tuple(weight_matrix(c_fc).shape) == (128, 32)


def test_target_selection(gpt2, llama):
    assert {m.kind for m in build_inventory(gpt2, "attention")} == {"qkv", "o"}
    assert {m.kind for m in build_inventory(llama, "mlp")} == {"gate", "up", "down"}
    assert {m.kind for m in build_inventory(llama, "q,v")} == {"q", "v"}
    assert resolve_targets(["q", "v"]) == ("q", "v")


def test_unknown_target_is_a_user_error(llama):
    with pytest.raises(UserError, match="unknown target"):
        build_inventory(llama, "q,bogus")


def test_meta_skeleton_gives_the_same_inventory(llama):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(llama.config)
    assert build_inventory(skeleton) == build_inventory(llama)
