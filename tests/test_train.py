import json
import math

import pytest
import torch
import yaml

from adaptive_lora.allocation.budget import tolerance
from adaptive_lora.compute.loss import response_loss_sum
from adaptive_lora.config import RunConfig
from adaptive_lora.data.prompts import collate, tokenize_examples
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.loading import load_model
from adaptive_lora.records import STATUS_DONE, STATUS_FAILED
from adaptive_lora.run import execute_run
from tiny import save_tiny, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return save_tiny(tiny_gpt2(), tmp_path_factory.mktemp("gpt2"))


def tiny_config(model, **overrides):
    raw = {
        "model": model,
        "data": {"source": "builtin", "n_train": 24, "n_val": 8, "n_test": 8, "max_length": 256},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 5e-3},
        "eval": {"n_generate": 2, "max_new_tokens": 4, "batch_size": 8},
    }
    for key, value in overrides.items():
        section, name = key.split("__") if "__" in key else (None, key)
        (raw.setdefault(section, {}) if section else raw)[name] = value
    return RunConfig.from_dict(raw)


@pytest.mark.parametrize("frozen", [False, True], ids=["plain-head", "blockwise-head"])
@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_response_loss_equals_model_loss(model, frozen, tokenizer):
    net = tiny_llama() if model == "llama" else tiny_gpt2()
    net.requires_grad_(not frozen)  # a frozen head takes head_loss's blockwise route
    from adaptive_lora.data.builtin import builtin_examples

    split = tokenize_examples(builtin_examples(8), tokenizer, 256)
    batch = collate(split.features, tokenizer.pad_token_id)
    total, n = response_loss_sum(net, batch)
    expected = net(**batch).loss
    torch.testing.assert_close(total / n, expected, rtol=1e-5, atol=1e-6)


def read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def test_run_folder_is_complete_and_self_describing(llama_folder, tmp_path):
    result = execute_run(
        tiny_config(llama_folder, allocation__strategy="linear_decay"), tmp_path, quiet=True
    )
    assert result.status == STATUS_DONE
    d = result.run_dir
    for name in (
        "config.yaml",
        "allocation.json",
        "allocation.png",
        "metrics.json",
        "manifest.json",
        "generations.jsonl",
        "adapter/adapter_config.json",
    ):
        assert (d / name).exists(), name
    metrics, manifest = read(d, "metrics.json"), read(d, "manifest.json")
    allocation = read(d, "allocation.json")
    assert metrics["trainable_params"] == allocation["total_params"]
    # The ranks travel with the metrics into a study's store (its figures need no run folder).
    assert metrics["allocation_modules"] == [
        {k: m[k] for k in ("name", "layer", "kind", "rank")} for m in allocation["modules"]
    ]
    assert metrics["steps"] == 4 and len(metrics["train_loss_curve"]) == 4
    for key in ("test_loss", "test_loss_before", "val_loss", "val_loss_before", "test_ppl"):
        assert math.isfinite(metrics[key])
    assert metrics["exact_match"] is not None  # the built-in data is exactly checkable
    for key in (
        "versions",
        "git_commit",
        "cpu",
        "data_hash",
        "model_fingerprint",
        "seed",
        "started",
        "ended",
    ):
        assert key in manifest, key
    assert manifest["status"] == "done"
    assert (
        yaml.safe_load((d / "config.yaml").read_text())["allocation"]["strategy"] == "linear_decay"
    )


def test_seeded_runs_are_bit_for_bit_repeatable(llama_folder, tmp_path):
    a = execute_run(tiny_config(llama_folder), tmp_path / "a", quiet=True)
    b = execute_run(tiny_config(llama_folder), tmp_path / "b", quiet=True)
    c = execute_run(tiny_config(llama_folder, seed=1), tmp_path / "c", quiet=True)
    assert a.metrics["train_loss_curve"] == b.metrics["train_loss_curve"]
    assert a.metrics["test_loss"] == b.metrics["test_loss"]
    assert a.metrics["train_loss_curve"] != c.metrics["train_loss_curve"]
    from safetensors.torch import load_file

    wa = load_file(a.run_dir / "adapter" / "adapter_model.safetensors")
    wb = load_file(b.run_dir / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_adapter_reloads_with_the_same_test_loss(gpt2_folder, tmp_path):
    from peft import PeftModel

    from adaptive_lora.data.sources import load_examples
    from adaptive_lora.data.splits import make_splits
    from adaptive_lora.evaluation import mean_loss
    from adaptive_lora.model.loading import load_model

    config = tiny_config(
        gpt2_folder, allocation__strategy="attention_heavy", train__precision="fp32"
    )
    result = execute_run(config, tmp_path, quiet=True)
    loaded = load_model(gpt2_folder)
    model = PeftModel.from_pretrained(loaded.model, str(result.run_dir / "adapter"))
    splits = make_splits(load_examples("builtin"), 24, 8, 8, 0)
    test = tokenize_examples(splits.test, loaded.tokenizer, 256)
    loss = mean_loss(
        model,
        test,
        pad_token_id=loaded.tokenizer.pad_token_id,
        batch_size=8,
        device=torch.device("cpu"),
        autocast_dtype=None,
    )
    assert loss == pytest.approx(result.metrics["test_loss"], rel=1e-5)


def test_nan_loss_stops_the_run_as_failed(llama_folder, tmp_path, monkeypatch):
    from adaptive_lora.training import loop as train_module

    real = train_module.response_loss_sum
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss, n = real(model, batch)
        return (loss * float("nan"), n) if calls["n"] == 3 and model.training else (loss, n)

    monkeypatch.setattr(train_module, "response_loss_sum", poisoned)
    result = execute_run(tiny_config(llama_folder), tmp_path, quiet=True)
    assert result.status == STATUS_FAILED
    assert "nan" in result.error and "step 3" in result.error
    manifest = read(result.run_dir, "manifest.json")
    assert manifest["status"] == "failed" and manifest["failed_step"] == 3


def test_shared_model_is_clean_after_a_run(llama_folder, tmp_path):
    from adaptive_lora.model.loading import load_model

    loaded = load_model(llama_folder)
    names_before = [n for n, _ in loaded.model.named_modules()]
    first = execute_run(tiny_config(llama_folder), tmp_path / "1", loaded=loaded, quiet=True)
    assert [n for n, _ in loaded.model.named_modules()] == names_before
    second = execute_run(tiny_config(llama_folder), tmp_path / "2", loaded=loaded, quiet=True)
    assert first.metrics["test_loss"] == second.metrics["test_loss"]


def test_bad_config_is_a_user_error_and_leaves_no_folder(llama_folder, tmp_path):
    from adaptive_lora.errors import UserError

    with pytest.raises(UserError, match="unknown strategy"):
        execute_run(tiny_config(llama_folder, allocation__strategy="bogus"), tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(UserError):
        RunConfig.from_dict({"train": {"lr": "fast"}})
    with pytest.raises(UserError, match="unknown config key"):
        RunConfig.from_dict({"trian": {}})


def test_cli_train_on_a_tiny_model(llama_folder, tmp_path, capsys):
    from adaptive_lora.cli import main

    code = main(
        [
            "train",
            "--model",
            llama_folder,
            "--out",
            str(tmp_path),
            "--max-steps",
            "2",
            "--n-train",
            "16",
            "--set",
            "eval.n_generate=1",
            "--set",
            "eval.max_new_tokens=2",
            "--quiet",
            "--strategy",
            "random",
        ]
    )
    assert code == 0
    assert "done" in capsys.readouterr().out
    assert main(["train", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_adalora_ranks_change_and_both_counts_are_recorded(llama_folder, tmp_path):
    config = tiny_config(
        llama_folder, allocation__strategy="adalora", train__max_steps=24, train__lr=1e-2
    )
    result = execute_run(config, tmp_path, quiet=True)
    assert result.status == STATUS_DONE, result.error
    m = result.metrics
    initial, final = m["initial_ranks"], m["final_ranks"]
    assert set(initial) == set(final)
    assert final != initial, "AdaLoRA never reallocated: update_and_allocate not called?"
    assert len(set(final.values())) > 1
    # The budget in parameters (ParameterBudgetMask): the final effective count meets it
    # within the tolerance every strategy is held to.
    inventory = build_inventory(load_model(llama_folder).model)
    assert abs(m["effective_params"] - m["budget_params"]) <= tolerance(
        inventory, m["budget_params"]
    )
    assert m["trainable_params"] > m["budget_params"]  # trained at 1.5x the target rank
    assert m["effective_params"] != m["trainable_params"]


def test_an_adalora_module_pruned_to_rank_0_is_saved_without_empty_tensors(llama_folder, tmp_path):
    """PEFT warns about zero-sized LoRA tensors (they look like unsaved shards): a module
    AdaLoRA pruned to rank 0 is saved with one masked triplet (E = 0), and the saved
    adapter computes what was trained."""
    import warnings

    from peft import PeftModel
    from safetensors.torch import load_file

    from adaptive_lora.methods.adalora.adapter import svd_modules

    config = tiny_config(
        llama_folder, allocation__strategy="adalora", allocation__budget="r1",
        allocation__min_rank=0, train__max_steps=24, train__lr=1e-2,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = execute_run(config, tmp_path, quiet=True)
    assert result.status == STATUS_DONE, result.error
    pruned = [name for name, rank in result.metrics["final_ranks"].items() if rank == 0]
    assert pruned, "no module ended at rank 0: the test needs a scarcer budget"
    assert not [w for w in caught if "invalid shape" in str(w.message)]
    saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    assert all(t.numel() > 0 for t in saved.values())
    # Loaded back, the pruned modules add nothing: their saved singular value is 0.
    model = PeftModel.from_pretrained(load_model(llama_folder).model, result.run_dir / "adapter")
    loaded = svd_modules(model)
    assert {name: loaded[name].lora_E["default"].numel() for name in pruned} == dict.fromkeys(
        pruned, 1
    )
    assert all(loaded[name].lora_E["default"].abs().sum() == 0 for name in pruned)


def test_chunked_response_loss_matches_in_value_and_gradient(monkeypatch, tokenizer):
    import adaptive_lora.compute.loss as evaluate_module
    from adaptive_lora.data.builtin import builtin_examples

    split = tokenize_examples(builtin_examples(8), tokenizer, 256)
    batch = collate(split.features, tokenizer.pad_token_id)

    def loss_and_grads(chunk):
        monkeypatch.setattr(evaluate_module, "LOSS_CHUNK", chunk)
        net = tiny_llama()
        total, n = response_loss_sum(net, batch)
        (total / n).backward()
        return total.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]

    whole, whole_grads = loss_and_grads(10**6)
    chunked, chunked_grads = loss_and_grads(7)  # many chunks of 7 response tokens
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_loss_before_training_is_measured_once_and_is_the_same_number(llama_folder, tmp_path):
    import adaptive_lora.run as run_module

    loaded = load_model(llama_folder)
    first = execute_run(tiny_config(llama_folder), tmp_path / "a", loaded=loaded, quiet=True)
    second = execute_run(
        tiny_config(llama_folder, allocation__strategy="linear_decay"),
        tmp_path / "b",
        loaded=loaded,
        quiet=True,
    )
    run_module._LOSS_BEFORE.clear()  # measured afresh on the second strategy's adapter
    fresh = execute_run(
        tiny_config(llama_folder, allocation__strategy="linear_decay", seed=1),
        tmp_path / "c",
        loaded=loaded,
        quiet=True,
    )
    for key in ("test_loss_before", "val_loss_before"):
        assert first.metrics[key] == second.metrics[key] == fresh.metrics[key]
