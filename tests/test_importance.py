import argparse
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

import adaptive_lora.allocation.importance as importance
import adaptive_lora.cli.importance as importance_cli
from adaptive_lora.allocation.budget import resolve_budget, tolerance
from adaptive_lora.allocation.core import AllocationContext, allocate
from adaptive_lora.allocation.importance import (
    ImportanceResult,
    cached_importance,
    importance_cache_key,
    probe_importance,
    spearman,
)
from adaptive_lora.allocation.probe_settings import ProbeSettings
from adaptive_lora.data.builtin import builtin_examples
from adaptive_lora.data.calibration import calibration_from_source, make_calibration
from adaptive_lora.data.prompts import tokenize_examples
from adaptive_lora.data.sources import load_examples
from adaptive_lora.data.splits import hash_examples, make_splits
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.loading import LoadedModel
from tiny import byte_tokenizer, save_tiny, tiny_gpt2

MAX_LENGTH = 128  # every built-in chat prompt fits in 128 byte tokens
TEMPLATE = "chat"


@pytest.fixture(scope="module")
def splits():
    return make_splits(builtin_examples(120), n_train=48, n_val=16, n_test=16, seed=0)


@pytest.fixture(scope="module")
def calibration(splits):
    return make_calibration(
        splits.train,
        byte_tokenizer(),
        max_length=MAX_LENGTH,
        template=TEMPLATE,
        data_hash=splits.data_hash,
    )


def direct_scores(model, inventory, calibration, metric, n_batches, batch_size, seed):
    """The reference: a plain loss.backward() per batch, all target grads at once."""
    modules = dict(model.named_modules())
    weights = {m.name: modules[m.name].weight for m in inventory}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    model.eval()
    totals = dict.fromkeys(weights, 0.0)
    for batch in calibration.batches(n_batches, batch_size, seed):
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for name, w in weights.items():
            if metric == "taylor":
                totals[name] += (w.detach() * w.grad).abs().mean().item()
            else:
                totals[name] += (w.grad.norm() / math.sqrt(w.grad.numel())).item()
    return {name: total / n_batches for name, total in totals.items()}


# ---- calibration -------------------------------------------------------------------------


def test_calibration_batches_are_seeded_and_cycle(calibration):
    def ids(seed, n=20, size=5):
        return [b["input_ids"].tolist() for b in calibration.batches(n, size, seed)]

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert ids(0, n=3) == ids(0)[:3]  # a shorter request is a prefix of a longer one
    # 20 batches of 5 = 100 draws from 48 features: every feature at least twice.
    seen = [
        tuple(row[: int(mask.sum())])
        for batch in calibration.batches(20, 5, 0)
        for row, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"])
    ]
    assert len(seen) == 100
    assert {tuple(f["input_ids"]) for f in calibration.features} == set(seen)


def test_probe_sees_only_training_features(tiny_model, splits, calibration):
    tokenizer = byte_tokenizer()

    def id_set(examples):
        features = tokenize_examples(examples, tokenizer, MAX_LENGTH, TEMPLATE).features
        return {tuple(f["input_ids"]) for f in features}

    train, held_out = id_set(splits.train), id_set(splits.val) | id_set(splits.test)
    assert train and held_out and not train & held_out
    seen = []

    def spy(module, args, kwargs):
        for row, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"]):
            seen.append(tuple(row[: int(mask.sum())]))

    # The probe runs the backbone (the head only sees response positions).
    from adaptive_lora.compute.loss import causal_parts

    causal_parts(tiny_model)[0].register_forward_pre_hook(spy, with_kwargs=True)
    probe_importance(
        tiny_model,
        build_inventory(tiny_model),
        calibration,
        ProbeSettings(n_batches=8, batch_size=8),
    )
    assert len(seen) == 64
    assert all(s in train for s in seen)
    assert not any(s in held_out for s in seen)


def test_calibration_from_source_uses_the_train_split(tmp_path, splits):
    from adaptive_lora.config import DataSettings

    path = tmp_path / "data.json"
    path.write_text(json.dumps(builtin_examples(120)))
    settings = DataSettings(n_train=48, n_val=16, n_test=16, max_length=MAX_LENGTH, template="chat")
    loaded = LoadedModel(model=None, tokenizer=byte_tokenizer())
    calibration = calibration_from_source(str(path), loaded.tokenizer, settings=settings)
    expected = make_splits(load_examples(str(path)), 48, 16, 16, 0)
    assert calibration.data_hash == expected.data_hash
    train = tokenize_examples(expected.train, byte_tokenizer(), MAX_LENGTH, "chat").features
    assert calibration.features == train


def test_calibration_from_a_too_small_source_is_a_user_error(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(builtin_examples(20)))
    loaded = LoadedModel(model=None, tokenizer=byte_tokenizer())
    with pytest.raises(UserError, match="has 20 examples but the splits ask for 240"):
        calibration_from_source(str(path), loaded.tokenizer)


# ---- the probe against a direct computation --------------------------------------------


@pytest.mark.parametrize("metric", ["taylor", "grad_norm"])
def test_probe_equals_direct_computation(tiny_model, calibration, metric):
    inventory = build_inventory(tiny_model)
    result = probe_importance(
        tiny_model,
        inventory,
        calibration,
        ProbeSettings(
            metric=metric,
            n_batches=3,
            batch_size=4,
            seed=7,
            precision="fp32",  # compared exactly with an fp32 backward
        ),
    )
    expected = direct_scores(tiny_model, inventory, calibration, metric, 3, 4, 7)
    assert result.n_batches == 3 and len(result.spearman_trace) == 2
    assert sorted(result.scores) == sorted(expected)
    torch.testing.assert_close(
        torch.tensor([result.scores[n] for n in expected], dtype=torch.float64),
        torch.tensor(list(expected.values()), dtype=torch.float64),
        rtol=1e-5,
        atol=0.0,
    )


def test_grad_nuclear_is_the_nuclear_norm_of_the_mean_gradient(gpt2, calibration):
    inventory = build_inventory(gpt2)
    modules = dict(gpt2.named_modules())
    for p in gpt2.parameters():
        p.requires_grad_(False)
    for m in inventory:
        modules[m.name].weight.requires_grad_(True)
    for batch in calibration.batches(2, 4, 0):
        gpt2(**batch).loss.backward()
    singular = {m.name: torch.linalg.svdvals(modules[m.name].weight.grad / 2) for m in inventory}
    size = {m.name: math.sqrt(m.d_in * m.d_out) for m in inventory}
    gpt2.zero_grad(set_to_none=True)

    def probe(rank):
        return probe_importance(
            gpt2,
            inventory,
            calibration,
            ProbeSettings(
                metric="grad_nuclear",
                precision="fp32",
                n_batches=2,
                batch_size=4,
                nuclear_rank=rank,
            ),
        ).scores

    # A rank covering the whole spectrum gives the exact nuclear norm of the mean gradient.
    exact = probe(10_000)
    for name, s in singular.items():
        assert exact[name] == pytest.approx(s.sum().item() / size[name], rel=1e-4)
    # The randomized top-4 sum never exceeds the true one and comes close to it.
    randomized = probe(4)
    for name, s in singular.items():
        top = s[:4].sum().item() / size[name]
        assert top * 0.8 <= randomized[name] <= top * (1 + 1e-5)


def test_probe_restores_the_model(llama, calibration):
    params = list(llama.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 == 0)  # a mixed pattern, not all-or-nothing
    flags = [p.requires_grad for p in params]
    llama.train()
    state = torch.random.get_rng_state()
    probe_importance(
        llama,
        build_inventory(llama),
        calibration,
        ProbeSettings(metric="grad_nuclear", n_batches=2, batch_size=2),
    )
    assert [p.requires_grad for p in params] == flags
    assert all(p.grad is None for p in params)
    assert llama.training
    assert torch.equal(torch.random.get_rng_state(), state)  # the randomized SVD forks the RNG


def test_early_stop(gpt2, calibration):
    inventory = build_inventory(gpt2)
    stopped = probe_importance(
        gpt2, inventory, calibration, ProbeSettings(n_batches=6, batch_size=2, early_stop=-1.0)
    )
    assert stopped.n_batches == 2 and len(stopped.spearman_trace) == 1
    full = probe_importance(gpt2, inventory, calibration, ProbeSettings(n_batches=6, batch_size=2))
    assert full.n_batches == 6 and len(full.spearman_trace) == 5
    assert all(-1.0 <= rho <= 1.0 for rho in full.spearman_trace)


def test_bf16_autocast_probe_ranks_like_fp32(llama, calibration):
    inventory = build_inventory(llama)
    exact = probe_importance(
        llama, inventory, calibration, ProbeSettings(n_batches=2, batch_size=4, precision="fp32")
    )
    fast = probe_importance(
        llama, inventory, calibration, ProbeSettings(n_batches=2, batch_size=4, precision="bf16")
    )
    assert fast.settings["precision"] == "bf16"
    names = list(exact.scores)
    rho = spearman([exact.scores[n] for n in names], [fast.scores[n] for n in names])
    assert rho > 0.9


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_bad_probe_settings_are_user_errors(gpt2, calibration):
    inventory = build_inventory(gpt2)
    with pytest.raises(UserError, match="unknown importance metric"):
        probe_importance(gpt2, inventory, calibration, ProbeSettings(metric="fisher"))
    with pytest.raises(UserError, match="n_batches"):
        probe_importance(gpt2, inventory, calibration, ProbeSettings(n_batches=0))
    with pytest.raises(UserError, match="precision"):
        probe_importance(gpt2, inventory, calibration, ProbeSettings(precision="fp8"))


# ---- cache -------------------------------------------------------------------------------


def test_cache_is_hit_on_the_second_call(gpt2, calibration, tmp_path, monkeypatch):
    inventory = build_inventory(gpt2)
    probe = ProbeSettings(n_batches=2, batch_size=2)
    settings = dict(settings=probe, model_fingerprint="m", cache_dir=tmp_path)
    first = cached_importance(gpt2, inventory, calibration, **settings)
    assert first.cache == "miss"
    assert Path(first.cache_path).parent == tmp_path  # cache_dir is the folder of score files

    def fail(*args, **kwargs):
        raise AssertionError("the probe ran although the cache holds the answer")

    monkeypatch.setattr(importance, "probe_importance", fail)
    second = cached_importance(gpt2, inventory, calibration, **settings)
    assert second.cache == "hit" and second.cache_path == first.cache_path
    assert second.scores == first.scores and second.n_batches == first.n_batches
    with pytest.raises(AssertionError, match="the probe ran"):  # a different key misses
        cached_importance(
            gpt2, inventory, calibration, **{**settings, "settings": replace(probe, seed=1)}
        )
    with pytest.raises(AssertionError, match="the probe ran"):
        cached_importance(gpt2, inventory, calibration, **{**settings, "model_fingerprint": "x"})


# ---- the empirical strategy -------------------------------------------------------------


def empirical_ctx(model, calibration, budget, tmp_path):
    inventory = build_inventory(model)
    return AllocationContext(
        inventory=inventory,
        budget=resolve_budget(budget, inventory),
        model=model,
        calibration=calibration,
        cache_dir=str(tmp_path),
        fingerprints={"model": "tiny", "data": calibration.data_hash},
    )


@pytest.mark.parametrize("budget", ["r8", "r16"])
def test_empirical_meets_the_budget_and_records_the_probe(
    tiny_model, calibration, budget, tmp_path
):
    params = {"n_batches": 2, "batch_size": 4}
    ctx = empirical_ctx(tiny_model, calibration, budget, tmp_path)
    allocation = allocate("empirical", ctx, params)
    assert abs(allocation.total_params - ctx.budget.params) <= tolerance(
        ctx.inventory, ctx.budget.params
    )
    assert len(set(allocation.ranks.values())) > 1
    report = allocation.report
    assert report["importance"]["cache"] == "miss" and report["importance"]["n_batches"] == 2
    assert report["importance"]["seconds"] > 0 and report["importance"]["peak_rss_mb"] > 0
    assert sorted(report["importance_scores"]) == sorted(allocation.ranks)
    # The most important module never gets less rank than the least important one.
    scores = report["importance_scores"]
    assert (
        allocation.ranks[max(scores, key=scores.get)]
        >= allocation.ranks[min(scores, key=scores.get)]
    )
    again = allocate("empirical", empirical_ctx(tiny_model, calibration, budget, tmp_path), params)
    assert again.report["importance"]["cache"] == "hit" and again.ranks == allocation.ranks


def test_empirical_temperature_zero_is_uniform(tiny_model, calibration, tmp_path):
    ctx = empirical_ctx(tiny_model, calibration, "r8", tmp_path)
    params = {"n_batches": 2, "batch_size": 2, "temperature": 0}
    ranks = allocate("empirical", ctx, params).ranks
    assert set(ranks.values()) == {8}


def test_empirical_needs_model_and_data(llama, calibration):
    inventory = build_inventory(llama)
    ctx = AllocationContext(inventory=inventory, budget=resolve_budget("r8", inventory))
    with pytest.raises(UserError, match="empirical needs the model weights and training data"):
        allocate("empirical", ctx)
    ctx.model, ctx.calibration = llama, calibration
    with pytest.raises(UserError, match="temperature"):
        allocate("empirical", ctx, {"temperature": -1, "n_batches": 1, "batch_size": 1})


# ---- one ProbeSettings for the strategy, the cache key and the CLI ------------------------


def test_probe_settings_feed_the_strategy_the_cache_key_and_the_cli(
    gpt2, calibration, tmp_path, monkeypatch
):
    # A bad setting is a one-line UserError, raised by ProbeSettings itself.
    with pytest.raises(UserError, match=r"^importance batch_size must be an integer >= 1, got 0$"):
        ProbeSettings(batch_size=0)
    assert all(f.metadata["help"] for f in fields(ProbeSettings))

    # The empirical strategy's params become one ProbeSettings, handed to the probe.
    seen = []

    def fake_probe(model, inventory, calibration, settings):
        seen.append(settings)
        scores = {m.name: 1.0 for m in inventory}
        return ImportanceResult(settings.metric, scores, settings.n_batches, 0.0, 0.0, [])

    monkeypatch.setattr(importance, "probe_importance", fake_probe)
    ctx = empirical_ctx(gpt2, calibration, "r8", tmp_path)
    params = {"n_batches": 3, "calibration_seed": 5, "precision": "fp32"}
    allocation = allocate("empirical", ctx, params)
    assert seen == [ProbeSettings(n_batches=3, seed=5, precision="fp32")]
    with pytest.raises(UserError, match="unknown importance metric 'fisher'"):
        allocate(
            "empirical", empirical_ctx(gpt2, calibration, "r8", tmp_path), {"metric": "fisher"}
        )

    # The cache key is derived from that one ProbeSettings, and holds the same fields
    # (cache version 2) as when they were spelled out one by one.
    key, key_fields = importance_cache_key(
        gpt2, ctx.inventory, calibration, seen[0], model_fingerprint="tiny"
    )
    assert key_fields == {
        "version": 2,
        "model": "tiny",
        "data": calibration.data_hash,
        "calibration": calibration.fingerprint,
        "seed": 5,
        "metric": "taylor",
        "n_batches": 3,
        "batch_size": 1,
        "early_stop": None,
        "nuclear_rank": None,  # only grad_nuclear keys on it
        "precision": "fp32",
        "targets": hash_examples([m.name for m in ctx.inventory]),
    }
    assert key == hash_examples(key_fields)
    stored = json.loads(Path(allocation.report["importance"]["cache_path"]).read_text())
    assert stored["key"] == key
    same = replace(seen[0], nuclear_rank=4)
    assert (
        importance_cache_key(gpt2, ctx.inventory, calibration, same, model_fingerprint="tiny")[0]
        == key
    )

    # The CLI builds one per distinct seed from its flags, and checks them before loading.
    parser = argparse.ArgumentParser()
    importance_cli.register(parser.add_subparsers(dest="command"))
    common = ["importance", "--model", str(tmp_path / "no-such-model")]
    args = parser.parse_args([*common, "--batches", "2", "--seeds", "3", "1", "3"])
    assert importance_cli.probe_settings_per_seed(args) == {
        3: ProbeSettings(n_batches=2, seed=3),
        1: ProbeSettings(n_batches=2, seed=1),
    }
    args = parser.parse_args([*common, "--batches", "0"])
    with pytest.raises(UserError, match="importance n_batches must be an integer >= 1, got 0"):
        args.func(args)


# ---- CLI ---------------------------------------------------------------------------------


def test_importance_cli(tmp_path, capsys):
    folder = save_tiny(tiny_gpt2(), tmp_path / "tiny-gpt2")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(builtin_examples(300)))
    parser = argparse.ArgumentParser()
    importance_cli.register(parser.add_subparsers(dest="command"))
    common = ["importance", "--model", folder, "--data", str(data), "--batches", "2"]
    args = parser.parse_args(
        [
            *common,
            "--batch-size",
            "2",
            "--seeds",
            "0",
            "1",
            "2",
            "--plot",
            str(tmp_path / "imp.png"),
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Spearman between seeds:  0-1:" in out and "1-2:" in out
    assert "per layer:  L0:" in out and "per kind:" in out
    assert (tmp_path / "imp.png").is_file()
    args = parser.parse_args([*common, "--batch-size", "2", "--seeds", "0", "1", "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["spearman_between_seeds"]) == {"0-1"}
    assert summary["seeds"]["0"]["cache"] == "hit"  # the first command stored it
