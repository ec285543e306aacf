"""The placements practitioners use: `attention_only`, `mlp_only`, `peft_default`.

Each is checked on every tiny architecture against what it must be, read independently of
the strategy: the attention or MLP rows of `tiny_arch`'s families, and for `peft_default`
the modules PEFT itself adapts under `LoraConfig()`.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from test_allocation import problems
from tiny_arch import FAMILIES

from adaptive_lora.adapters.lora import AdapterSettings, apply_lora, lora_modules
from adaptive_lora.allocation.budget import resolve_budget, tolerance, total_params
from adaptive_lora.allocation.core import AllocationContext, allocate
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.peft_targets import model_type_of
from adaptive_lora.run import execute_run
from tiny import save_tiny, tiny_gpt2, tiny_llama

PLACEMENTS = ("attention_only", "mlp_only", "peft_default")
ATTENTION_ROW_KINDS = {"q", "k", "v", "o", "qkv"}
# Phi-3 is the one tiny family PEFT has no default targets for.
WITH_PEFT_DEFAULT = [f for f in FAMILIES if f.name != "phi3"]


def _context(model, budget: str, **kw) -> AllocationContext:
    inventory = build_inventory(model)
    model_type = model_type_of(model)
    resolved = resolve_budget(budget, inventory, model_type)
    return AllocationContext(inventory, resolved, model_type=model_type, **kw)


def peft_adapts(model) -> list[str]:
    """The modules `get_peft_model(model, LoraConfig())` adapts: PEFT's own choice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(lora_modules(get_peft_model(model, LoraConfig())))


def expected_modules(family, strategy: str) -> set[str]:
    """What the placement must adapt, from the family's rows or from PEFT itself."""
    if strategy == "peft_default":
        return set(peft_adapts(family.build()))
    attention = strategy == "attention_only"
    return {
        name
        for name, _, kind, _, _ in family.expected()
        if (kind in ATTENTION_ROW_KINDS) == attention
    }


def _cases():
    for family in FAMILIES:
        for strategy in PLACEMENTS:
            if strategy == "peft_default" and family.name == "phi3":
                continue
            budgets = ["r1", "r4", "r8", "r16"]
            if family.name != "phi3":
                budgets += ["qv:r4", "qv:r8"]
            for budget in budgets:
                yield pytest.param(
                    family, strategy, budget, id=f"{family.name}-{strategy}-{budget}"
                )


@pytest.mark.parametrize(("family", "strategy", "budget"), list(_cases()))
def test_a_placement_adapts_only_its_modules_at_one_rank_within_the_budget(
    family, strategy, budget
):
    model = family.build()
    ctx = _context(model, budget)
    allocation = allocate(strategy, ctx)
    adapted = {name for name, rank in allocation.ranks.items() if rank > 0}
    assert adapted == expected_modules(family, strategy)
    ranks = [allocation.ranks[name] for name in adapted]
    assert max(ranks) - min(ranks) <= 1  # one rank, rounded to integers like `uniform`'s
    # The tolerance every strategy meets: the whole inventory's, not the placement's own.
    gap = abs(allocation.total_params - ctx.budget.params)
    assert gap <= tolerance(ctx.inventory, ctx.budget.params)


@pytest.mark.parametrize("family", WITH_PEFT_DEFAULT, ids=lambda f: f.name)
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_peft_default_at_qv_rN_is_rank_N_on_peft_s_targets(family, rank):
    allocation = allocate("peft_default", _context(family.build(), f"qv:r{rank}"))
    assert {r for r in allocation.ranks.values() if r > 0} == {rank}
    assert allocation.total_params == allocation.budget.params
    assert allocation.report["peft_default_targets"]


@pytest.mark.parametrize(
    ("family", "strategy"),
    [
        pytest.param(family, strategy, id=f"{family.name}-{strategy}")
        for family in FAMILIES
        for strategy in PLACEMENTS
        if family in WITH_PEFT_DEFAULT or strategy != "peft_default"
    ],
)
def test_a_budget_below_rank_1_on_each_of_its_modules_is_refused_naming_the_smallest(
    family, strategy
):
    model = family.build()
    inventory = build_inventory(model)
    smallest = sum(
        m.cost_per_rank for m in inventory if m.name in expected_modules(family, strategy)
    )
    ok = allocate(strategy, _context(model, str(smallest)))
    assert {r for r in ok.ranks.values() if r > 0} == {1}
    with pytest.raises(UserError) as refused:
        allocate(strategy, _context(model, str(smallest - 1)))
    message = str(refused.value)
    assert "\n" not in message
    assert f"budget {smallest - 1}" in message and f"at least {smallest} parameters" in message


@pytest.mark.parametrize("min_rank", [0, 1, 2])
@pytest.mark.parametrize("strategy", PLACEMENTS)
def test_modules_outside_a_placement_get_rank_0_whatever_min_rank(strategy, min_rank, llama):
    allocation = allocate(strategy, _context(llama, "r8", min_rank=min_rank))
    outside = [m.name for m in allocation.inventory if m.name not in _placed(llama, strategy)]
    assert outside and all(allocation.ranks[name] == 0 for name in outside)
    inside = [allocation.ranks[name] for name in _placed(llama, strategy)]
    assert min(inside) >= max(1, min_rank)


def _placed(model, strategy: str) -> set[str]:
    inventory = build_inventory(model)
    if strategy == "peft_default":
        return set(peft_adapts(tiny_llama()))
    group = "attention" if strategy == "attention_only" else "mlp"
    return {m.name for m in inventory if m.group == group}


def test_peft_default_on_a_model_type_peft_has_no_default_for_is_one_line():
    phi3 = next(f for f in FAMILIES if f.name == "phi3").build()
    with pytest.raises(UserError, match="no default target modules for model type 'phi3'") as e:
        allocate("peft_default", _context(phi3, "r8"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="budget qv:r8: PEFT has no default"):
        _context(phi3, "qv:r8")


def test_peft_default_needs_its_targets_among_the_target_modules(llama):
    inventory = build_inventory(llama, "mlp")
    ctx = AllocationContext(inventory, resolve_budget("r4", inventory), model_type="llama")
    with pytest.raises(UserError, match="peft_default: none of PEFT's default target modules"):
        allocate("peft_default", ctx)


def test_a_budget_no_allocation_of_the_placement_reaches_is_refused_in_one_line(gpt2):
    """GPT-2's MLP projections cost 160 parameters a rank, the cheapest module 64: a total
    of MLP ranks is a multiple of 160, and 1,040 is 80 from the nearest (960, 1,120)."""
    with pytest.raises(UserError, match="costs 160 parameters") as refused:
        allocate("mlp_only", _context(gpt2, "1040"))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("strategy", PLACEMENTS)
def test_peft_builds_adapters_on_the_placement_only(strategy, build):
    """Rank 0 means no adapter: PEFT wraps exactly the placement, with the count allocated
    (GPT-2's fused Conv1D `c_attn` included)."""
    allocation = allocate(strategy, _context(build(), "r4"))
    peft_model = apply_lora(build(), allocation, AdapterSettings(), run_seed=0)
    adapted = {name for name, rank in allocation.ranks.items() if rank > 0}
    assert set(lora_modules(peft_model)) == adapted


def test_a_run_trains_peft_default_at_a_qv_budget(tmp_path):
    from adaptive_lora.config import RunConfig

    folder = save_tiny(tiny_llama(), tmp_path / "llama")
    config = RunConfig.from_dict(
        {
            "model": folder,
            "data": {
                "source": "builtin",
                "n_train": 8,
                "n_val": 4,
                "n_test": 4,
                "max_length": 128,
                "template": "chat",
            },
            "allocation": {"strategy": "peft_default", "budget": "qv:r2"},
            "train": {"max_steps": 1, "batch_size": 4, "threads": 1},
            "eval": {"n_generate": 1, "max_new_tokens": 2},
        }
    )
    result = execute_run(config, tmp_path / "runs", quiet=True)
    assert result.status == "done", result.error
    assert result.metrics["trainable_params"] == 2 * 2 * (64 + 48)  # q (32→32), v (32→16)


@settings(max_examples=200, deadline=None)
@given(problems(transformer_like=True), st.sampled_from(["attention_only", "mlp_only"]))
def test_property_a_placement_spends_the_budget_on_its_modules_only(problem, strategy):
    """On random decoder-like inventories: rank 0 outside the placement, the rank bounds
    inside, the whole inventory's tolerance; or a one-line refusal that says why."""
    inv, budget, min_rank, max_rank = problem
    group = "attention" if strategy == "attention_only" else "mlp"
    placed = [m for m in inv if m.group == group]
    ctx = AllocationContext(inv, resolve_budget(budget, inv), min_rank, max_rank)
    try:
        ranks = allocate(strategy, ctx).ranks
    except UserError as error:
        message = str(error)
        smallest = max(1, min_rank) * sum(m.cost_per_rank for m in placed)
        assert "\n" not in message
        assert (
            not placed
            or (budget < smallest and f"at least {smallest} parameters" in message)
            # Integer ranks of the placement's modules cannot come within the tolerance
            # (their costs are coarser than the inventory's cheapest), or max_rank binds.
            or "cannot be met" in message
            or (max_rank is not None and "impossible budget" in message)
        ), message
        return
    assert all(ranks[m.name] == 0 for m in inv if m.group != group)
    assert all(max(1, min_rank) <= ranks[m.name] <= (max_rank or 10**9) for m in placed)
    assert abs(total_params(inv, ranks) - budget) <= tolerance(inv, budget)
