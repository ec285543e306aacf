"""A planted task with a known answer: `data.source: planted`, a positive control.

The teacher is the run's own base model plus a seeded random low-rank delta ΔW = B·A
(rank k) on some modules, the *planted sites*; the data are prompts from a pool with
completions *sampled* from the teacher. A student starts from the base model, so its
test loss on teacher samples differs between strategies only by how well each recovers
the teacher: an allocation that puts its rank on the planted modules (`oracle`,
`allocation/oracle.py`) should win, and a study can show whether a strategy finds them.

A study names it with its settings in `data.options`:

    data:
      source: planted
      options:
        sites:                    # at least one; the planted set is their union
          - {kinds: [down], layers: last_third, rank: 4, seed: 0}
        target_kl: 0.3            # nats per response token, teacher from base
        prompts: builtin          # builtin, an Alpaca file, or reasoning_gym:<task>
        pool_size: 240            # items made (the splits draw from them)

A site's `kinds` are inventory kinds (`down`, `[q, v]`, or `mlp`, `attention`, `all`);
its `layers` are `all`, `first_third`, `middle_third`, `last_third` (a third is
⌈L/3⌉ layers at that end, the middle the rest), `first_half` (layers below L/2),
`last_half` (the rest), or `[first, last]` (inclusive, 0-based; negative counts from
the end). Each planted module gets its own B·A from the site's seed, normalised to its
weight's Frobenius norm, and one scale s for all of them is found by bracketed
bisection on a log scale so that the teacher's mean per-token KL from the base model
equals `target_kl` within `kl_tolerance` (relative, default 2%). The KL is measured on
`n_calibration` held-out prompts (drawn from the pool, never items of the data set)
followed by a base-model sample, at the response positions: where the response-only
loss trains. The achieved KL is recorded, with the KL on the teacher's own samples of
the first `n_calibration` items (the base model's excess test loss over the teacher's,
what there is to learn).

Completions are sampled at temperature 1 from the teacher, up to `max_new_tokens`,
seeded by `sample_seed` (one generator per item), in batches of `batch_size`. Each
item is an Alpaca record (`instruction`, `input`, `output`: the decoded sample) that
also carries the sampled tokens (`output_ids`) and whether the sample ended
(`output_complete`): training labels exactly those tokens (`prompts._response_ids`),
with EOS only where the teacher ended, so no re-tokenization bends the teacher's
distribution. The prompt is formatted with the run's `data.template`.

The set is cached under `cache_root()/planted/<hash>.json`, the hash over everything
that made it: the model's fingerprint and tokenizer, every option (defaults filled),
the template, the prompts themselves, the device type, and the versions that decide
its numbers (torch, transformers, `NUMERICS_VERSION`, `PLANTED_VERSION`). It is
rebuilt exactly from its settings when the cache is gone. The splits are nested like a
generated task's: the items in an order shuffled by `data.data_seed`, the first
`n_test` the test set, then validation, then training (a larger training set contains
the smaller one).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_lora import progress as run_progress
from adaptive_lora.config_fields import build_typed, help_field
from adaptive_lora.data import reasoning_gym, teacher
from adaptive_lora.data.prompts import prompt_token_ids
from adaptive_lora.data.sources import load_examples
from adaptive_lora.environment import NUMERICS_VERSION
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo, build_inventory, layer_count, resolve_targets
from adaptive_lora.model.loading import cache_root
from adaptive_lora.records import canonical_json, read_json, write_json

PLANTED = "planted"
# Bumped by a change here that would make different data from the same settings.
PLANTED_VERSION = 1
LAYER_RANGES = ("all", "first_third", "middle_third", "last_third", "first_half", "last_half")


def is_planted(source: str) -> bool:
    return source == PLANTED


@dataclass
class SiteSettings:
    kinds: Any = help_field("module kinds: `down`, a list like [q, v], or mlp/attention/all", None)
    layers: Any = help_field("a named range (last_third, ...) or [first, last]", "all")
    rank: int = help_field("rank k of the planted delta B·A", 4)
    seed: int = help_field("seed of the delta's random A and B", 0)


@dataclass(frozen=True)
class Site:
    kinds: tuple[str, ...]
    layers: str | tuple[int, int]
    rank: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        layers = self.layers if isinstance(self.layers, str) else list(self.layers)
        return {"kinds": list(self.kinds), "layers": layers, "rank": self.rank, "seed": self.seed}


@dataclass
class PlantedOptions:
    sites: list = help_field("planted sites: {kinds, layers, rank, seed} each", None)
    target_kl: float = help_field("mean per-token KL of the teacher from the base model", 0.3)
    kl_tolerance: float = help_field("relative tolerance of the achieved KL", 0.02)
    prompts: str = help_field(
        "prompt pool: builtin, an Alpaca file, reasoning_gym:<task>", "builtin"
    )
    prompt_options: dict = help_field(
        "generator options of a reasoning_gym pool", default_factory=dict
    )
    pool_size: int = help_field("items made (the splits draw from them)", 240)
    n_calibration: int = help_field("held-out prompts the KL is fitted on", 16)
    max_new_tokens: int = help_field("tokens sampled per completion at most", 64)
    sample_seed: int = help_field("seed of the prompt draw and the sampling", 0)
    batch_size: int = help_field("sequences per sampling and KL batch", 16)


@dataclass(frozen=True)
class PlantedSettings:
    """The checked options of a planted task: what the cache key and the records name."""

    sites: tuple[Site, ...]
    options: PlantedOptions

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self.options)
        return {**fields, "sites": [site.to_dict() for site in self.sites]}


def planted_settings(options: Mapping[str, Any]) -> PlantedSettings:
    """`data.options` of a planted source, checked: one-line `UserError`s naming the key."""
    parsed = build_typed(PlantedOptions, dict(options), "data.options.", exact=True)
    if not parsed.sites:
        raise UserError(
            "data.options.sites: a planted task needs at least one site, e.g. "
            "[{kinds: [down], layers: last_third, rank: 4, seed: 0}]"
        )
    sites = tuple(_site(raw, f"data.options.sites[{i}]") for i, raw in enumerate(parsed.sites))
    if not parsed.target_kl > 0 or not 0 < parsed.kl_tolerance < 1:
        raise UserError("data.options: target_kl must be > 0 and kl_tolerance in (0, 1)")
    for name in ("pool_size", "n_calibration", "max_new_tokens", "batch_size"):
        if getattr(parsed, name) < 1:
            raise UserError(f"data.options.{name} must be >= 1, got {getattr(parsed, name)}")
    if is_planted(parsed.prompts):
        raise UserError("data.options.prompts: a planted pool cannot draw its prompts from itself")
    if parsed.prompt_options and not reasoning_gym.is_reasoning_gym(parsed.prompts):
        raise UserError("data.options.prompt_options: only a reasoning_gym:<task> pool takes them")
    return PlantedSettings(sites, parsed)


def _site(raw: Any, where: str) -> Site:
    site = build_typed(SiteSettings, raw, where + ".", exact=True)
    if site.kinds is None:
        raise UserError(f"{where}.kinds: name the planted module kinds, e.g. [down]")
    try:
        kinds = resolve_targets(site.kinds if isinstance(site.kinds, str) else list(site.kinds))
    except (UserError, TypeError) as error:
        raise UserError(f"{where}.kinds: {error}") from None
    if site.rank < 1:
        raise UserError(f"{where}.rank must be >= 1, got {site.rank}")
    return Site(kinds, _layer_range(site.layers, where), site.rank, site.seed)


def _layer_range(layers: Any, where: str) -> str | tuple[int, int]:
    if isinstance(layers, str) and layers in LAYER_RANGES:
        return layers
    if isinstance(layers, int) and not isinstance(layers, bool):
        return (layers, layers)
    if (
        isinstance(layers, list)
        and len(layers) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
    ):
        return (layers[0], layers[1])
    raise UserError(
        f"{where}.layers must be one of {', '.join(LAYER_RANGES)} or [first, last], got {layers!r}"
    )


def site_layers(layers: str | tuple[int, int], n_layers: int, where: str = "site") -> range:
    """The layer indices a site's `layers` names in a model of `n_layers` blocks."""
    third = math.ceil(n_layers / 3)
    named = {
        "all": range(n_layers),
        "first_third": range(third),
        "middle_third": range(third, n_layers - third),
        "last_third": range(n_layers - third, n_layers),
        "first_half": range(n_layers // 2),
        "last_half": range(n_layers // 2, n_layers),
    }
    if isinstance(layers, str):
        return named[layers]
    first, last = (x + n_layers if x < 0 else x for x in layers)
    if not 0 <= first <= last < n_layers:
        raise UserError(
            f"{where}.layers {list(layers)} is not a range of the model's {n_layers} layers"
        )
    return range(first, last + 1)


def site_modules(
    settings: PlantedSettings, inventory: Sequence[ModuleInfo]
) -> list[list[ModuleInfo]]:
    """Each site's modules in inventory order; a site that selects none is a `UserError`."""
    n_layers = layer_count(inventory)
    found = []
    for i, site in enumerate(settings.sites):
        where = f"data.options.sites[{i}]"
        layers = set(site_layers(site.layers, n_layers, where))
        modules = [m for m in inventory if m.kind in site.kinds and m.layer in layers]
        if not modules:
            raise UserError(
                f"{where} selects no module: kinds {list(site.kinds)} in layers "
                f"{site.to_dict()['layers']} of {n_layers}"
            )
        found.append(modules)
    return found


def planted_names(settings: PlantedSettings, inventory: Sequence[ModuleInfo]) -> list[str]:
    """The planted set (the union of the sites' modules), in inventory order."""
    chosen = {m.name for modules in site_modules(settings, inventory) for m in modules}
    return [m.name for m in inventory if m.name in chosen]


@dataclass(frozen=True)
class PlantedData:
    records: list[dict[str, Any]]
    info: dict[str, Any]  # planted modules, scale, achieved KL, ...
    digest: str  # the cache key: the hash of everything that made the set


def planted_examples(options: Mapping[str, Any], template: str, loaded: Any) -> PlantedData:
    """The planted data set of these options on the loaded model (read from the cache,
    or built and cached). `loaded` is a `LoadedModel` (model, tokenizer, fingerprint)."""
    if loaded is None:
        raise UserError(
            "data.source planted is sampled from the run's own model: it is built where a run "
            "loads its model (a command that reads data without a model cannot use it)"
        )
    settings = planted_settings(options)
    prompts = prompt_pool(settings.options)
    made = made_from(settings, template, loaded, prompts)
    digest = _sha256(made)
    path = cache_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two workers of a study start on the same set at once: the second waits for the
    # first to build it and reads it, instead of sampling the same items again.
    with open(path.with_suffix(".lock"), "w") as lock:
        wait_for_lock(lock)
        if path.is_file():
            stored = read_json(path)
            if stored.get("key") == digest:
                return PlantedData(stored["records"], stored["info"], digest)
        records, info = build(settings, template, loaded, prompts)
        write_json(path, {"key": digest, "made_from": made, "info": info, "records": records})
    return PlantedData(records, info, digest)


# While another run builds the set, say so this often: a study notices a run that reports
# nothing for a while (`study/ray_progress`), and a large set takes minutes to sample.
WAIT_REPORT_S = 10.0


def wait_for_lock(lock: Any, every: float = WAIT_REPORT_S) -> None:
    """Take the exclusive lock on the open file `lock`, reporting the wait (`run_progress`)
    every `every` seconds while another process holds it."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            run_progress.report("waiting for the planted set another run is building")
            time.sleep(every)


def cache_path(digest: str) -> Path:
    return cache_root() / "planted" / f"{digest}.json"


def prompt_pool(options: PlantedOptions) -> list[dict[str, str]]:
    """`n_calibration + pool_size` distinct prompts (instruction, input) in a seeded order:
    the first `n_calibration` fit the KL, the rest are the items."""
    wanted = options.n_calibration + options.pool_size
    if reasoning_gym.is_reasoning_gym(options.prompts):
        found = reasoning_gym.generate_examples(
            options.prompts, options.prompt_options, wanted, options.sample_seed
        )
        return [{"instruction": r["instruction"], "input": r.get("input", "")} for r in found]
    seen, prompts = set(), []
    for example in load_examples(options.prompts):
        prompt = {"instruction": example["instruction"], "input": example.get("input") or ""}
        if (prompt["instruction"], prompt["input"]) not in seen:
            seen.add((prompt["instruction"], prompt["input"]))
            prompts.append(prompt)
    if len(prompts) < wanted:
        raise UserError(
            f"data.options.prompts: {options.prompts} has {len(prompts)} distinct prompts, fewer "
            f"than n_calibration + pool_size = {wanted}; lower pool_size or use a larger pool"
        )
    random.Random(options.sample_seed).shuffle(prompts)
    return prompts[:wanted]


def made_from(settings: PlantedSettings, template: str, loaded: Any, prompts: list) -> dict:
    """Everything that decides the planted set's bytes (its cache key)."""
    import transformers

    model = loaded.model
    return {
        "planted_version": PLANTED_VERSION,
        "numerics_version": NUMERICS_VERSION,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": next(model.parameters()).device.type,
        "model": model_identity(loaded),
        "tokenizer": _sha256(sorted(loaded.tokenizer.get_vocab().items())),
        "template": template,
        "options": settings.to_dict(),
        "prompts": _sha256(prompts),
    }


def model_identity(loaded: Any) -> dict[str, Any]:
    """The fingerprint's content hash (file or folder) or hub id and commit; a model with
    neither (built in memory) is named by the hash of its weights."""
    fingerprint = loaded.fingerprint or {}
    kept = {k: fingerprint[k] for k in ("kind", "sha256", "hub_id", "commit") if k in fingerprint}
    if "sha256" in kept or "hub_id" in kept:
        return kept
    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"kind": "weights", "sha256": digest.hexdigest()}


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def build(
    settings: PlantedSettings, template: str, loaded: Any, prompts: list
) -> tuple[list, dict]:
    """Fit the teacher's scale on the calibration prompts, then sample the items."""
    options, model, tokenizer = settings.options, loaded.model, loaded.tokenizer
    sites = site_modules(settings, build_inventory(model, "all"))
    deltas = teacher.make_deltas(
        model, [(m, s.rank, s.seed) for m, s in zip(sites, settings.sites)]
    )
    calibration, items = prompts[: options.n_calibration], prompts[options.n_calibration :]
    ids = prompt_token_ids(calibration + items, tokenizer, template)
    was_training = model.training
    model.eval()
    try:
        fit, base_samples = _fit(settings, model, tokenizer, deltas, ids[: len(calibration)])
        with teacher.teacher(model, deltas, fit.scale):
            drawn = _sample(model, tokenizer, options, ids[len(calibration) :], "items")
        on_samples = _kl(model, tokenizer, deltas, drawn[: options.n_calibration], options)
    finally:
        model.train(was_training)
    records = [_record(prompt, seq, tokenizer) for prompt, seq in zip(items, drawn)]
    info = {
        "planted_modules": planted_names(settings, build_inventory(model, "all")),
        "scale": fit.scale,
        "target_kl": options.target_kl,
        "achieved_kl": fit.kl,
        "kl_on_samples": on_samples(fit.scale),
        "kl_on_samples_items": min(options.n_calibration, len(drawn)),
        "scale_search": [list(t) for t in fit.evaluations],
        "calibration_tokens": sum(len(s.response) + s.complete for s in base_samples),
        "n_items": len(records),
        "n_incomplete": sum(not s.complete for s in drawn),
    }  # fmt: skip
    return records, info


def _fit(settings, model, tokenizer, deltas, prompt_ids):
    """The scale whose KL on the calibration prompts (with base samples) is the target."""
    options = settings.options
    base_samples = _sample(model, tokenizer, options, prompt_ids, "calibration")
    kl = _kl(model, tokenizer, deltas, base_samples, options)
    progress, tries = teacher.BuildProgress("planted: fitting the scale to the KL, try", 0), []

    def kl_at(scale: float) -> float:
        tries.append(kl(scale))
        progress(len(tries), f": scale {scale:.4g}, KL {tries[-1]:.4g}")
        return tries[-1]

    return teacher.fit_scale(kl_at, options.target_kl, options.kl_tolerance), base_samples


def _kl(model, tokenizer, deltas, seqs, options) -> teacher.ResponseKL:
    return teacher.ResponseKL(
        model, deltas, seqs, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
        batch_size=options.batch_size,
    )  # fmt: skip


def _sample(model, tokenizer, options, prompt_ids, purpose: str) -> list[teacher.Sampled]:
    seeds = [teacher.item_seed(options.sample_seed, purpose, i) for i in range(len(prompt_ids))]
    return teacher.sample(
        model, prompt_ids, seeds, max_new_tokens=options.max_new_tokens,
        batch_size=options.batch_size, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id, vocab_size=len(tokenizer),
        progress=teacher.BuildProgress(f"planted: sampling {purpose}", len(prompt_ids)),
    )  # fmt: skip


def _record(prompt: dict[str, str], seq: teacher.Sampled, tokenizer: Any) -> dict[str, Any]:
    return {
        "instruction": prompt["instruction"],
        "input": prompt["input"],
        "output": tokenizer.decode(seq.response, skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False),
        "output_ids": list(seq.response),
        "output_complete": seq.complete,
    }  # fmt: skip


def nested_splits(records: list, n_train: int, n_val: int, n_test: int, seed: int) -> tuple:
    """(train, val, test) in an order shuffled by `seed`: test first, then val, then train."""
    wanted = n_train + n_val + n_test
    if wanted > len(records):
        raise UserError(
            f"the planted data set has {len(records)} items but the splits ask for {wanted}; "
            "raise data.options.pool_size or ask for fewer"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    pick = lambda part: [records[i] for i in part]  # noqa: E731
    test = pick(order[:n_test])
    val = pick(order[n_test : n_test + n_val])
    return pick(order[n_test + n_val : wanted]), val, test
