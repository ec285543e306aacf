"""Budgets named as people think of them: `qv:rN`, the parameters of PEFT's default targets
at rank N, beside `rN` and counts; and below r1, a baseline that exists there."""

from __future__ import annotations

import shutil
import warnings

import pytest
import yaml
from peft import LoraConfig, get_peft_model
from test_committed_report import FIXTURE
from tiny_arch import FAMILIES

from adaptive_lora.adapters.lora import trainable_parameters
from adaptive_lora.allocation.budget import resolve_budget, uniform_cost
from adaptive_lora.allocation.core import AllocationContext, allocate
from adaptive_lora.cli import main
from adaptive_lora.config import Budget, RunConfig, parse_budget
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.peft_targets import model_type_of
from adaptive_lora.study.protocol import parse_cross_budget
from adaptive_lora.study.schema import parse_budget_list
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore
from tiny import save_tiny, tiny_llama, write_tiny_study

WITH_PEFT_DEFAULT = [f for f in FAMILIES if f.name != "phi3"]


def test_qv_rN_is_read_with_its_label_kept():
    assert parse_budget("qv:r8") == Budget("qv:r8", 0, 8, "qv")
    assert parse_budget(" qv:r16 ").label == "qv:r16"
    # The older forms read as they always did, with nothing new in their records.
    assert parse_budget("r8") == Budget("r8", 0, 8)
    assert parse_budget("250k") == Budget("250k", 250_000)
    assert "placement" not in parse_budget("r8").to_dict()
    assert parse_budget("qv:r8").to_dict()["placement"] == "qv"


@pytest.mark.parametrize("bad", ["qv:r0", "qv:8", "qv:", "kv:r8", "qv:r8:x", "QV:r8"])
def test_a_bad_placed_budget_is_one_line(bad):
    with pytest.raises(UserError) as refused:
        parse_budget(bad)
    assert "\n" not in str(refused.value)


def test_config_and_study_files_read_qv_budgets():
    config = RunConfig.from_dict({"allocation": {"budget": "qv:r4"}})
    assert config.allocation.parsed_budget == Budget("qv:r4", 0, 4, "qv")
    assert [b.label for b in parse_budget_list(["qv:r1", "r1", "50k"])] == ["qv:r1", "r1", "50k"]
    with pytest.raises(UserError, match=r"allocation.budget: budget 'qv:r0'"):
        RunConfig.from_dict({"allocation": {"budget": "qv:r0"}})


@pytest.mark.parametrize("family", WITH_PEFT_DEFAULT, ids=lambda f: f.name)
@pytest.mark.parametrize("rank", [1, 8])
def test_qv_rN_is_the_trainable_count_of_peft_s_default_lora_config(family, rank):
    """The independent check: what `get_peft_model(model, LoraConfig(r=N))` trains."""
    model = family.build()
    inventory = build_inventory(model)
    budget = resolve_budget(f"qv:r{rank}", inventory, model_type_of(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(family.build(), LoraConfig(r=rank))
    assert budget.params == trainable_parameters(peft_model)
    assert (budget.label, budget.rank, budget.placement) == (f"qv:r{rank}", rank, "qv")


def test_qv_r1_on_a_llama_is_below_r1_and_only_a_placement_spends_it(llama):
    inventory = build_inventory(llama)
    qv_r1 = resolve_budget("qv:r1", inventory, "llama")
    assert qv_r1.params == 2 * (64 + 48) < uniform_cost(inventory, 1) == 2 * 512

    def run(strategy: str, budget: str, min_rank: int = 1):
        resolved = resolve_budget(budget, inventory, "llama")
        ctx = AllocationContext(inventory, resolved, min_rank=min_rank, model_type="llama")
        return allocate(strategy, ctx)

    for min_rank in (0, 1):
        with pytest.raises(UserError, match="below r1 make a placement the baseline") as e:
            run("uniform", "qv:r1", min_rank)
        assert "peft_default" in str(e.value) and "\n" not in str(e.value)
    assert run("peft_default", "qv:r1").total_params == qv_r1.params
    # Rank 1 on all four attention projections costs twice q and v: qv:r1 is too small
    # for attention_only, and qv:r2 (still below r1) is exactly its rank 1.
    with pytest.raises(UserError, match="at least 448 parameters"):
        run("attention_only", "qv:r1")
    spent = run("attention_only", "qv:r2")
    assert spent.total_params == resolve_budget("qv:r2", inventory, "llama").params == 448
    assert spent.total_params < uniform_cost(inventory, 1)


def test_a_qv_budget_needs_the_model_type(llama):
    inventory = build_inventory(llama)
    with pytest.raises(UserError, match="budget qv:r8: .*config.model_type"):
        resolve_budget("qv:r8", inventory)  # no type given


def test_cross_budget_compares_qv_budgets_only_with_qv_budgets():
    parsed = parse_budget_list(["qv:r1", "qv:r2", "r4"])
    labels = tuple(b.label for b in parsed)
    pair = parse_cross_budget({"small": "qv:r1", "large": "qv:r2"}, parsed, labels)
    assert (pair.small, pair.large) == ("qv:r1", "qv:r2")
    with pytest.raises(UserError, match="larger budget of the same kind"):
        parse_cross_budget({"small": "qv:r1", "large": "r4"}, parsed, labels)


def test_existing_budgets_keep_their_run_ids():
    """Ids computed before `qv:rN` existed (base 83a7942) are unchanged; a qv budget's id
    carries its label as written."""
    pinned = {
        "uniform-r8-s0-ea9e75338d": {},
        "uniform-250k-s0-0326031cb0": {"allocation": {"budget": "250k"}},
        "linear_decay-r16-s3-e4d6325449": {
            "allocation": {"strategy": "linear_decay", "budget": "r16"},
            "seed": 3,
        },
        "uniform-1.5M-s0-dbd3481ace": {"allocation": {"budget": "1.5M", "min_rank": 0}},
        "uniform-50000-s0-2f3368b02d": {"allocation": {"budget": 50000}},
    }
    for run_id, raw in pinned.items():
        assert RunConfig.from_dict(raw).run_id() == run_id
    qv = RunConfig.from_dict({"allocation": {"strategy": "peft_default", "budget": "qv:r8"}})
    assert qv.run_id().startswith("peft_default-qv:r8-s0-")


def test_a_committed_study_expands_to_its_stored_run_ids(tmp_path, monkeypatch):
    work = tmp_path / "quickstart"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)
    study = load_study("study.yaml", check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        stored = [row.id for row in store.rows()]
    assert sorted(study.run_ids) == sorted(stored)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("budget", ["qv:r1", "500"])
def test_a_study_whose_uniform_baseline_is_below_r1_is_refused_before_any_run(
    budget, llama_folder, tmp_path, capsys
):
    path = write_tiny_study(tmp_path, llama_folder, budgets=["r1", budget])
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "uniform (the baseline)" in err and f"budget {budget}" in err
    assert "peft_default" in err
    assert not (tmp_path / "out").exists()


def test_below_r1_a_placement_is_the_baseline_and_uniform_runs_at_r1(
    llama_folder, tmp_path, capsys
):
    spec = {
        "budgets": ["qv:r1", "r1"],
        "strategies": [
            "peft_default",
            {"name": "uniform", "budgets": ["r1"]},
            {"name": "attention_only", "budgets": ["r1"]},
        ],
        "baseline": "peft_default",
    }
    path = write_tiny_study(tmp_path, llama_folder, **spec)
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "qv:r1" in capsys.readouterr().out
    study = load_study(path)
    assert {(s.label, s.budget) for s in study.runs} == {
        ("peft_default", "qv:r1"),
        ("peft_default", "r1"),
        ("uniform", "r1"),
        ("attention_only", "r1"),
    }
    assert any(s.run_id.startswith("peft_default-qv:r1-s0-") for s in study.runs)
    text = yaml.safe_load(path.read_text())
    assert text["budgets"] == ["qv:r1", "r1"]  # labels as written


def test_a_qv_budget_on_a_model_peft_has_no_default_for_is_refused_before_any_run(tmp_path, capsys):
    phi3 = next(f for f in FAMILIES if f.name == "phi3").build()
    folder = save_tiny(phi3, tmp_path / "phi3")
    path = write_tiny_study(tmp_path, folder, budgets=["r1", "qv:r1"])
    capsys.readouterr()  # the save's progress bar
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no default target modules for model type 'phi3'" in err
