"""The planted task (`data.source: planted`): its teacher's KL, its cache, its splits.

On `tiny.planted_llama` (a tiny Llama whose logits are not flat), one thread: the
module's planted sets are sampled once into a shared cache.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from adaptive_lora.config import DataSettings
from adaptive_lora.data import planted, teacher
from adaptive_lora.data.prompts import IGNORE_INDEX, tokenize_examples
from adaptive_lora.data.splits import load_splits
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.loading import LoadedModel
from tiny import VOCAB, byte_tokenizer, planted_llama

SITE = {"kinds": ["down"], "layers": "last_half", "rank": 4, "seed": 0}
OPTIONS = {
    "sites": [SITE],
    "target_kl": 0.3,
    "pool_size": 12,
    "n_calibration": 4,
    "max_new_tokens": 12,
    "batch_size": 8,
}


def loaded_llama(seed: int = 0, layers: int = 2) -> LoadedModel:
    return LoadedModel(planted_llama(seed, layers), byte_tokenizer(), {})


def settings(**options) -> DataSettings:
    return DataSettings(
        source="planted", n_train=6, n_val=2, n_test=4, template="chat",
        options={**OPTIONS, **options},
    )  # fmt: skip


@pytest.fixture(scope="module")
def loaded():
    return loaded_llama()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    # Tiny matrices: a second thread only waits (on a busy machine, for long).
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("planted-cache")


@pytest.fixture(autouse=True)
def _module_cache(cache_dir, monkeypatch):
    """The module's tests share one cache: each planted set is sampled once."""
    monkeypatch.setenv("ADAPTIVE_LORA_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def built(loaded, cache_dir):
    """One planted set (module-wide), with the cache file it was written to."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTIVE_LORA_CACHE", str(cache_dir))
        splits = load_splits(settings(), model=loaded)
        path = planted.cache_path(splits.source_hash)
        return splits, path, path.read_bytes()


# -- the teacher's KL ---------------------------------------------------------------------


def _explicit_teacher(model, deltas, scale):
    """The teacher with its delta written into a copy's weights (no hooks)."""
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    with torch.no_grad():
        for delta in deltas:
            modules[delta.name].weight += scale * (delta.b @ delta.a)
    return copied


def test_response_kl_equals_an_independent_computation(loaded):
    """ResponseKL (hooks, cached base log-probs) against torch.distributions on a teacher
    whose delta is in its weights, over hand-made sequences of unequal lengths."""
    model, eos = loaded.model, loaded.tokenizer.eos_token_id
    inventory = build_inventory(model, "all")
    deltas = teacher.make_deltas(model, [([m for m in inventory if m.kind == "down"], 3, 7)])
    gen = torch.Generator().manual_seed(0)
    draw = lambda n: torch.randint(0, 256, (n,), generator=gen).tolist()  # noqa: E731
    seqs = [teacher.Sampled(draw(5), draw(4), True), teacher.Sampled(draw(9), draw(2), False),
            teacher.Sampled(draw(3), draw(6), True)]  # fmt: skip
    measured = teacher.ResponseKL(model, deltas, seqs, eos_id=eos, pad_id=256, batch_size=2)
    explicit = _explicit_teacher(model, deltas, 0.7)
    kls = []
    for seq in seqs:
        ids = torch.tensor([seq.prompt + seq.response + ([eos] if seq.complete else [])])
        start, end = len(seq.prompt) - 1, ids.shape[1] - 1  # positions predicting labels
        with torch.no_grad():
            p = torch.distributions.Categorical(logits=explicit(ids).logits[0, start:end])
            q = torch.distributions.Categorical(logits=model(ids).logits[0, start:end])
        kls.append(torch.distributions.kl_divergence(p, q))
    expected = float(torch.cat(kls).mean())
    assert measured.n_tokens == 4 + 1 + 2 + 6 + 1
    assert measured(0.7) == pytest.approx(expected, rel=1e-5)
    assert measured(0.0) == 0.0


def test_the_calibration_hits_its_target_within_the_tolerance(built):
    """The achieved KL is within kl_tolerance (2% relative) of target_kl, and it is the
    KL of the fitted scale (the search's last try)."""
    info = built[0].info["planted"]
    assert abs(info["achieved_kl"] - 0.3) <= 0.02 * 0.3
    assert info["scale_search"][-1] == [info["scale"], info["achieved_kl"]]
    assert info["planted_modules"] == ["model.layers.1.mlp.down_proj"]
    # The KL on the teacher's own samples is the same order: what a student can recover.
    assert 0.1 < info["kl_on_samples"] < 1.0


def test_fit_scale_brackets_and_bisects_and_says_when_it_cannot():
    fit = teacher.fit_scale(lambda s: 0.05 * s**2, target=2.0, tolerance=0.01)
    assert abs(fit.kl - 2.0) <= 0.02 and fit.evaluations[0][0] == 1.0
    down = teacher.fit_scale(lambda s: 10 * s, target=0.3, tolerance=0.01)
    assert abs(down.kl - 0.3) <= 0.003
    with pytest.raises(UserError, match="reaches only"):
        teacher.fit_scale(lambda s: min(s, 0.1), target=0.3, tolerance=0.01)


def test_the_base_model_is_left_as_it_was(loaded, built):
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    before = loaded_llama().model(ids).logits  # a fresh copy of the same seeded model
    assert all(not m._forward_hooks for m in loaded.model.modules())
    torch.testing.assert_close(loaded.model(ids).logits, before, rtol=0, atol=0)


# -- the data set: records, cache, splits ---------------------------------------------------


def test_records_carry_the_sampled_tokens_and_train_on_exactly_them(built, loaded):
    splits = built[0]
    records = splits.train + splits.val + splits.test
    assert all(set(r) == {"instruction", "input", "output", "output_ids", "output_complete"}
               for r in records)  # fmt: skip
    tokenized = tokenize_examples(records, loaded.tokenizer, 256, "chat")
    eos = loaded.tokenizer.eos_token_id
    for record, feature in zip(records, tokenized.features):
        labels = [x for x in feature["labels"] if x != IGNORE_INDEX]
        assert labels == record["output_ids"] + ([eos] if record["output_complete"] else [])
        assert len(record["output_ids"]) <= OPTIONS["max_new_tokens"]


def test_the_set_is_byte_identical_when_rebuilt_without_the_cache(built, loaded):
    splits, path, first = built
    path.unlink()
    again = load_splits(settings(), model=loaded)
    assert path.read_bytes() == first
    assert (again.data_hash, again.source_hash) == (splits.data_hash, splits.source_hash)


@pytest.mark.parametrize(
    "change",
    [
        {"target_kl": 0.31}, {"kl_tolerance": 0.03}, {"pool_size": 13}, {"n_calibration": 5},
        {"max_new_tokens": 13}, {"sample_seed": 1}, {"batch_size": 4},
        {"prompts": "reasoning_gym:basic_arithmetic"},
        {"sites": [{**SITE, "rank": 3}]}, {"sites": [{**SITE, "seed": 1}]},
        {"sites": [{**SITE, "layers": [0, 0]}]}, {"sites": [{**SITE, "kinds": ["up"]}]},
        {"sites": [SITE, {**SITE, "kinds": ["q"]}]},
    ],
)  # fmt: skip
def test_every_option_changes_the_cache_key(change, loaded):
    def key(options, template="chat", model=loaded):
        chosen = planted.planted_settings({**OPTIONS, **options})
        prompts = planted.prompt_pool(chosen.options)
        return planted.made_from(chosen, template, model, prompts)

    base = key({})
    assert key(change) != base
    assert key({}, template="alpaca") != base
    assert key({}, model=loaded_llama(seed=1)) != base
    assert key({}) == base


def test_a_changed_option_makes_other_data(built, loaded):
    other = load_splits(settings(sample_seed=1), model=loaded)
    assert other.source_hash != built[0].source_hash
    outputs = lambda s: [r["output_ids"] for r in s.train + s.val + s.test]  # noqa: E731
    assert outputs(other) != outputs(built[0])


def test_the_splits_are_nested_and_disjoint(built, loaded):
    splits = load_splits(dataclasses.replace(settings(), n_train=4), model=loaded)
    bigger = built[0]  # n_train 6
    assert bigger.test == splits.test and bigger.val == splits.val
    assert bigger.train[: len(splits.train)] == splits.train
    keys = [(r["instruction"], r["input"]) for r in bigger.train + bigger.val + bigger.test]
    assert len(set(keys)) == len(keys)
    with pytest.raises(UserError, match="pool_size"):
        load_splits(dataclasses.replace(settings(), n_train=20), model=loaded)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sites": []}, "at least one site"),
        ({"sites": [{"layers": "all"}]}, "kinds"),
        ({"sites": [{**SITE, "layers": "top"}]}, "layers must be one of"),
        ({"sites": [{**SITE, "kinds": ["fins"]}]}, "unknown target module kind"),
        ({"sites": [{**SITE, "rank": 0}]}, "rank must be >= 1"),
        ({"sites": [{**SITE, "colour": 1}]}, "unknown config key"),
        ({"target_kl": 0}, "target_kl"),
        ({"pool_size": 0}, "pool_size"),
        ({"temperature": 2}, "unknown config key"),
        ({"prompts": "planted"}, "from itself"),
        ({"prompt_options": {"x": 1}}, "prompt_options"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        planted.planted_settings({**OPTIONS, **options})


def test_a_planted_source_needs_the_run_model_and_a_site_that_selects_something(loaded):
    with pytest.raises(UserError, match="sampled from the run's own model"):
        load_splits(settings())
    with pytest.raises(UserError, match="selects no module"):
        load_splits(settings(sites=[{**SITE, "kinds": ["qkv"]}]), model=loaded)
    with pytest.raises(UserError, match="not a range"):
        load_splits(settings(sites=[{**SITE, "layers": [0, 5]}]), model=loaded)


def test_layer_ranges():
    names = ("first_third", "middle_third", "last_third", "first_half", "last_half", "all")
    got = {n: list(planted.site_layers(n, 30)) for n in names}
    assert got["first_third"] == list(range(10)) and got["last_third"] == list(range(20, 30))
    assert got["middle_third"] == list(range(10, 20)) and got["last_half"] == list(range(15, 30))
    assert list(planted.site_layers("last_third", 2)) == [1]
    assert list(planted.site_layers((-3, -1), 30)) == [27, 28, 29]


def test_a_gpt2_teacher_plants_its_fused_kinds():
    """GPT-2's Conv1D projections (weights stored (in, out)) take a delta like nn.Linear."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=258, eos_token_id=257, pad_token_id=256,
                        initializer_range=0.2)  # fmt: skip
    model = LoadedModel(GPT2LMHeadModel(config).eval(), byte_tokenizer(), {})
    site = {"kinds": ["proj", "qkv"], "layers": [-1, -1], "rank": 2}
    data = DataSettings(
        source="planted", n_train=4, n_val=0, n_test=2, template="alpaca",
        options={**OPTIONS, "sites": [site], "pool_size": 6},
    )  # fmt: skip
    info = load_splits(data, model=model).info["planted"]
    assert info["planted_modules"] == ["transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    assert abs(info["achieved_kl"] - 0.3) <= 0.02 * 0.3


def test_progress_is_printed_only_past_its_interval(capsys):
    quiet = teacher.BuildProgress("planted: sampling", 3)
    quiet(1), quiet(3)
    assert capsys.readouterr().err == ""
    loud = teacher.BuildProgress("planted: fitting, try", 0, every=0)
    loud(2, ": scale 0.5, KL 0.31")
    assert capsys.readouterr().err == "planted: fitting, try: 2: scale 0.5, KL 0.31 (0 s)\n"


def test_a_long_build_and_a_wait_for_it_tell_the_study_they_are_alive(tmp_path):
    """A study replaces a run silent past its stall bound; building a large planted set
    takes minutes, so the build's progress lines and the wait on another run's build
    reach the run's progress sink too."""
    import fcntl
    import threading

    from adaptive_lora import progress

    heard: list[progress.Progress] = []
    with progress.reporting_to(heard.append):
        teacher.BuildProgress("planted: sampling items", 4, every=0)(2)
        path = tmp_path / "set.lock"
        with open(path, "w") as holder, open(path, "w") as waiter:
            fcntl.flock(holder, fcntl.LOCK_EX)  # another run is building the set
            done = threading.Event()
            thread = threading.Thread(
                target=lambda: (planted.wait_for_lock(waiter, every=0.05), done.set())
            )
            thread.start()
            assert not done.wait(0.3)  # it waits while the lock is held ...
            fcntl.flock(holder, fcntl.LOCK_UN)
            assert done.wait(5)  # ... and takes it once released
            thread.join(5)
    assert (heard[0].phase, heard[0].step, heard[0].total) == ("planted: sampling items", 2, 4)
    waits = [p for p in heard if p.phase.startswith("waiting for the planted set")]
    assert len(waits) >= 2
