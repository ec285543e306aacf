"""Exporting allocations for other trainers: PEFT, axolotl, a study's stored runs, TRL."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from peft.utils.other import get_pattern_key
from tiny_arch import MadeUpModel

from adaptive_lora.adapters.export import axolotl_fragment, peft_adapter_config, render
from adaptive_lora.adapters.lora import AdapterSettings, check_ranks, trainable_parameters
from adaptive_lora.cli import main
from adaptive_lora.data.sources import load_examples
from adaptive_lora.data.splits import make_splits
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import GenericKindsWarning
from adaptive_lora.records import canonical_json
from adaptive_lora.study.export import write_export
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import DONE, StudyStore
from tiny import (
    allocation_for,
    byte_tokenizer,
    save_tiny,
    tiny_gpt2,
    tiny_llama,
    write_tiny_study,
)


@pytest.fixture
def one_thread():
    # Tiny models train fastest on one thread; several fight over a shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def names_of(model) -> list[str]:
    return [name for name, _ in model.named_modules()]


def export_with_cli(tmp_path, model, *extra: str, fmt: str = "peft", strategy="linear_decay"):
    """`allocate --export` on a saved tiny model; the written file's path."""
    folder = save_tiny(model, tmp_path / "model")
    out = tmp_path / ("adapter_config.json" if fmt == "peft" else "lora.yml")
    argv = ["allocate", "--model", folder, "--strategy", strategy, "--budget", "r4"]
    assert main([*argv, *extra, "--export", fmt, str(out)]) == 0
    return out


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_peft_export_loads_in_peft_and_trains_exactly_the_allocation(tmp_path, build):
    out = export_with_cli(tmp_path, build())
    config = LoraConfig(**json.loads(out.read_text()))  # PEFT takes the file unchanged
    allocation = allocation_for(build(), "linear_decay", "r4")
    peft_model = get_peft_model(build(), config)
    assert trainable_parameters(peft_model) == allocation.total_params
    check_ranks(peft_model, allocation.ranks)
    assert config.fan_in_fan_out == (build is tiny_gpt2)  # GPT-2's Conv1D stores (in, out)
    record = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    assert record["trainable_params"] == allocation.total_params
    assert {m["name"]: m["rank"] for m in record["modules"]} == allocation.ranks


def test_every_key_matches_exactly_its_own_module_by_peft_rules(llama):
    allocation = allocation_for(llama, "linear_decay", "r4")
    peft = peft_adapter_config(allocation, AdapterSettings(), names_of(llama))
    for pattern in (peft["rank_pattern"], peft["alpha_pattern"]):
        keys = list(pattern)
        for name in names_of(llama):  # PEFT's own lookup: first matching key wins
            key = get_pattern_key(keys, name)
            assert (key in pattern) == (name in allocation.ranks)
            assert key not in pattern or key == "^" + name.replace(".", r"\.")
    missing = [n for n in names_of(llama) if n != next(iter(allocation.ranks))]
    with pytest.raises(RuntimeError, match="matches \\[\\]"):  # the training path's check
        peft_adapter_config(allocation, AdapterSettings(), missing)


def test_axolotl_fragment_has_the_keys_and_types_of_its_schema(tmp_path, llama):
    out = export_with_cli(tmp_path, llama, fmt="axolotl")
    text = out.read_text()
    fragment = yaml.safe_load(text)
    allocation = allocation_for(tiny_llama(), "linear_decay", "r4")
    peft = peft_adapter_config(allocation, AdapterSettings(), names_of(llama))
    assert text.startswith("# linear_decay at r4")
    assert fragment["adapter"] == "lora"
    assert fragment["lora_target_modules"] == sorted(allocation.ranks)
    assert fragment["lora_rank_pattern"] == peft["rank_pattern"]
    # axolotl's schema: lora_r and lora_alpha int, pattern values PositiveInt.
    assert type(fragment["lora_r"]) is int and type(fragment["lora_alpha"]) is int
    alphas = fragment["lora_alpha_pattern"]
    assert all(type(a) is int and a > 0 for a in alphas.values())
    assert alphas == {key: 2 * rank for key, rank in peft["rank_pattern"].items()}
    # What axolotl hands PEFT builds the allocation.
    config = LoraConfig(
        r=fragment["lora_r"],
        lora_alpha=fragment["lora_alpha"],
        target_modules=fragment["lora_target_modules"],
        rank_pattern=fragment["lora_rank_pattern"],
        alpha_pattern=fragment["lora_alpha_pattern"],
    )
    assert trainable_parameters(get_peft_model(tiny_llama(), config)) == allocation.total_params


def test_axolotl_refuses_an_alpha_it_cannot_hold(llama):
    allocation = allocation_for(llama, "linear_decay", "r4")
    rslora = peft_adapter_config(allocation, AdapterSettings(rslora=True), names_of(llama))
    with pytest.raises(UserError, match="whole-number alphas"):  # 2·√4 = 4 is fine, r5 is not
        axolotl_fragment({**rslora, "lora_alpha": 2.0 * 5**0.5})
    assert axolotl_fragment(rslora)["peft_use_rslora"] is True


@pytest.mark.parametrize(
    ("export", "message"),
    [
        (["llamafactory", "x.json"], "LLaMA-Factory cannot take per-module ranks"),
        (["onnx", "x.json"], "unknown export format 'onnx'"),
        (["peft", "no/such/folder/x.json"], "is not a writable folder"),
        (["peft", "."], "it is a folder"),
    ],
)
def test_a_bad_export_is_one_line_and_exit_2_before_any_work(
    tmp_path, monkeypatch, capsys, export, message
):
    monkeypatch.chdir(tmp_path)
    # The model does not exist: the export is refused before the model is looked at.
    assert main(["allocate", "--model", "no-such-model", "--export", *export]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x.json").exists()


def test_unclassified_modules_are_exported_with_generic_kinds_and_say_so(tmp_path):
    model = MadeUpModel()
    with pytest.warns(GenericKindsWarning):
        allocation = allocation_for(model, "uniform", "r2")
    out = tmp_path / "adapter_config.json"
    lines = write_export(
        "peft", str(out), allocation, AdapterSettings(),
        model=model, model_spec="made-up", source={}, calibration=None,
    )  # fmt: skip
    record = json.loads((tmp_path / "adapter_config.json.provenance.json").read_text())
    assert {m["kind"] for m in record["modules"]} == {"attn_generic", "mlp_generic"}
    assert "generic kinds" in record["inventory_note"]
    assert any(line.startswith("note: ") and "generic kinds" in line for line in lines)
    # A plain nn.Module cannot be a PEFT causal LM (it has no generation hooks): no task type.
    config = LoraConfig(**{**json.loads(out.read_text()), "task_type": None})
    assert trainable_parameters(get_peft_model(MadeUpModel(), config)) == allocation.total_params


def test_a_data_driven_export_says_what_it_was_calibrated_on(tmp_path, one_thread):
    out = export_with_cli(tmp_path, tiny_llama(), "--param", "n_batches=2", strategy="empirical")
    calibration = json.loads(out.with_name(out.name + ".provenance.json").read_text())[
        "calibration"
    ]
    builtin = make_splits(load_examples("builtin"), 160, 32, 48, 0)  # allocate's split
    assert calibration["source"] == "builtin"
    assert calibration["data_hash"] == builtin.data_hash
    assert (calibration["calibration_seed"], calibration["n_batches"]) == (0, 2)
    assert "--data YOUR_FILE" in calibration["note"]


# ---------------------------------------------------------------------- from a study


def fake_finished_study(tmp_path):
    """A tiny study whose store holds finished runs with stored allocations.

    linear_decay's runs store linear_increase's ranks: an export that recomputed the
    allocation instead of reading the store would give different ranks.
    """
    folder = save_tiny(tiny_llama(), tmp_path / "model")
    path = write_tiny_study(tmp_path, folder, strategies=["uniform", "linear_decay", "random"])
    study = load_study(path, check_sources=False)
    with StudyStore.open(study.store_path) as store:
        store.sync_runs(study.runs)
        for spec in study.runs:
            stored = "linear_increase" if spec.strategy == "linear_decay" else spec.strategy
            allocation = allocation_for(tiny_llama(), stored, spec.budget, seed=spec.seed)
            modules = [{k: r[k] for k in ("name", "layer", "kind", "rank")}
                       for r in allocation.rows()]  # fmt: skip
            store.mark_running(spec.run_id)
            store.mark_finished(
                spec.run_id,
                status=DONE,
                metrics={"allocation_modules": modules, "strategy_report": {},
                         "allocation_params": allocation.total_params},
                manifest={"run_id": spec.run_id, "data_hash": "d" * 64, "seed": spec.seed},
            )  # fmt: skip
    return path


def test_export_writes_the_ranks_a_study_stored_with_its_hashes(tmp_path):
    study = fake_finished_study(tmp_path)
    out = tmp_path / "ld.json"
    argv = ["export", str(study), "--strategy", "linear_decay", "--budget", "r4"]
    assert main([*argv, "--format", "peft", "--out", str(out)]) == 0
    stored = allocation_for(tiny_llama(), "linear_increase", "r4")
    peft = json.loads(out.read_text())
    assert peft["rank_pattern"] == {
        "^" + name.replace(".", r"\."): rank for name, rank in stored.ranks.items()
    }
    source = json.loads((tmp_path / "ld.json.provenance.json").read_text())["source"]
    with StudyStore.open(tmp_path / "out" / "study.db", create=False) as store:
        row = store.get(source["run_id"])
    assert (row.strategy, row.seed) == ("linear_decay", 0)
    assert source["study"]["id"] == "t"
    assert source["data_hash"] == "d" * 64
    digest = hashlib.sha256(canonical_json(row.manifest).encode()).hexdigest()
    assert source["manifest_sha256"] == digest
    assert len(source["runs_with_this_allocation"]) == 2  # seeds 0 and 1 agree


def test_export_needs_a_seed_when_seeds_ran_different_ranks(tmp_path, capsys):
    study = fake_finished_study(tmp_path)
    argv = ["export", str(study), "--strategy", "random", "--budget", "r4", "--format", "peft"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    assert "pass --seed" in capsys.readouterr().err
    assert main([*argv, "--seed", "1", "--out", str(tmp_path / "r.json")]) == 0
    source = json.loads((tmp_path / "r.json.provenance.json").read_text())["source"]
    assert source["seed"] == 1
    assert main([*argv[:3], "eva", *argv[4:], "--out", str(tmp_path / "e.json")]) == 2
    assert "no finished run of eva" in capsys.readouterr().err


# ---------------------------------------------------------------------- a trainer we do not own


def test_trl_trains_exactly_the_exported_allocation_and_its_loss_falls(tmp_path, one_thread):
    import datasets  # the dev extra installs both (pinned in constraints.txt)
    import trl

    model, allocation = tiny_llama(), allocation_for(tiny_llama(), "linear_decay", "r4")
    peft = peft_adapter_config(allocation, AdapterSettings(), names_of(model))
    (tmp_path / "adapter_config.json").write_text(render("peft", peft, {}, ""))
    # The TRL user's recipe: load the exported file, hand it to SFTTrainer.
    config = LoraConfig(**json.loads((tmp_path / "adapter_config.json").read_text()))
    texts = ["the cat sat on the mat. " * 2, "a dog ran in the park. " * 2] * 8
    with warnings.catch_warnings():  # TRL and transformers deprecation notices
        warnings.simplefilter("ignore")
        args = trl.SFTConfig(
            output_dir=str(tmp_path / "trl"), max_steps=16, per_device_train_batch_size=4,
            learning_rate=3e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
            max_length=32, seed=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = trl.SFTTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_dict({"text": texts}),
            processing_class=byte_tokenizer(),
            peft_config=config,
        )
        assert trainable_parameters(trainer.model) == allocation.total_params
        check_ranks(trainer.model, allocation.ranks)
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1


def test_the_calibration_note_asks_for_the_users_data_only_when_it_was_not_given():
    from adaptive_lora.adapters.export import _calibration_note

    assert "--data YOUR_FILE" in _calibration_note("builtin", "empirical")
    note = _calibration_note("my_data.json", "empirical")
    assert note == "ranks calibrated on the training split of my_data.json"
