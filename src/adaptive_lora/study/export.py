"""What `export` and `allocate --export` write: an allocation as a PEFT or axolotl config.

`adapters/export.py` renders the files (pure functions); this module writes them with
their `.provenance.json`, and, for `export`, finds the study's run whose allocation to
write. Its ranks are read from the store (`allocation_modules`), not recomputed, and
checked against the model's modules and the parameter count the run recorded; the
provenance names the study, the run, the hash of the run's manifest and of its data.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from adaptive_lora.adapters.export import (
    calibration_record,
    check_exportable,
    check_format,
    notes,
    peft_adapter_config,
    provenance,
    render,
)
from adaptive_lora.adapters.lora import AdapterSettings
from adaptive_lora.allocation.budget import resolve_budget
from adaptive_lora.allocation.core import Allocation, get_strategy
from adaptive_lora.config import DataSettings
from adaptive_lora.data.splits import load_splits
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import GenericKindsWarning, build_inventory
from adaptive_lora.model.loading import load_skeleton
from adaptive_lora.model.peft_targets import model_type_of
from adaptive_lora.records import ALLOCATION_KEY, canonical_json
from adaptive_lora.study.plan import current_rows, open_store_if_any, stored_rows
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import RunRow

PROVENANCE_SUFFIX = ".provenance.json"


# ---------------------------------------------------------------------- writing


def check_out_path(path: str) -> Path:
    """Fail before any work if `path` cannot be written (a missing or read-only folder)."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a folder; give a file name")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UserError(f"cannot write {out}: {out.parent} is not a writable folder")
    return out


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def conv1d_targets(model: Any, names: list[str]) -> bool:
    """Are the adapted projections GPT-2 `Conv1D`s (weights stored (in, out))?"""
    modules = dict(model.named_modules())
    return any(type(modules[name]).__name__ == "Conv1D" for name in names)


def write_export(
    fmt: str,
    path: str,
    allocation: Allocation,
    settings: AdapterSettings,
    *,
    model: Any,
    model_spec: str,
    source: dict[str, Any],
    calibration: dict[str, Any] | None,
) -> list[str]:
    """Write the config and its `.provenance.json`; return the lines to tell the user."""
    out = check_out_path(path)
    names = [name for name, _ in model.named_modules()]
    conv1d = conv1d_targets(model, list(allocation.ranks))
    peft = peft_adapter_config(allocation, settings, names, fan_in_fan_out=conv1d)
    record = provenance(
        allocation, settings, model=model_spec, source=source, calibration=calibration
    )
    record["format"] = fmt
    record["written_by"] = f"adaptive-lora {version('adaptive-lora')}"
    sidecar = out.with_name(out.name + PROVENANCE_SUFFIX)
    _write(out, render(fmt, peft, record, sidecar.name))
    _write(sidecar, json.dumps(record, indent=2, default=str) + "\n")
    lines = [
        f"exported ({fmt}): {out}  ({allocation.total_params:,} trainable parameters)",
        f"provenance: {sidecar}",
    ]
    return lines + [f"note: {line}" for line in notes(record)]


def data_calibration(source: str) -> dict[str, Any]:
    """The data a data-driven `allocate` calibrates on, described as a run would record it.

    `allocate` calibrates on the training split a run with default `DataSettings` draws
    from `source` (`allocation.for_model.allocation_for`); this is its hash.
    """
    settings = DataSettings(source=source)
    splits = load_splits(settings)
    return {
        "source": source,
        "data_hash": splits.data_hash,
        "data_source_hash": splits.source_hash,
        "data_seed": settings.data_seed,
        "n_train": settings.n_train,
    }


def check_export(fmt: str, path: str, strategy: str | None = None) -> None:
    """Every reason an export would fail that is known before allocating: one line each."""
    check_format(fmt)
    if strategy is not None:
        check_exportable(strategy)
    check_out_path(path)


def export_allocation(
    allocation: Allocation, fmt: str, path: str, *, model_spec: str, data: str, seed: int
) -> list[str]:
    """`allocate --export`: a fresh allocation with the default adapter settings of a run."""
    needs_data = get_strategy(allocation.strategy).needs_data
    calibration = calibration_record(
        allocation, data=data_calibration(data) if needs_data else None
    )
    return write_export(
        fmt,
        path,
        allocation,
        AdapterSettings(),  # α = 2r, as a run's default `adapter` section
        model=load_skeleton(model_spec),
        model_spec=model_spec,
        source={"command": "adaptive-lora allocate", "seed": seed},
        calibration=calibration,
    )


# ---------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Wanted:
    """The run `export` asks for: strategy (label or name) and budget as the study names
    them; the model and the seed when the study ran several."""

    strategy: str
    budget: str
    model: str | None = None
    seed: int | None = None


@dataclass
class StoredStudy:
    """What `export` needs of a study: its identity and its stored runs, in run order."""

    name: str
    path: str
    store_path: str
    rows: list[RunRow]  # the study's current runs
    manifest: dict[str, Any]  # the store's own record (name, spec hash, ...)
    tuning_ids: set[str]  # learning-rate tuning runs: exported only if nothing else ran
    orphans: int  # stored runs no longer in the study file (never exported)


def open_study(path: str) -> StoredStudy:
    """A study file's stored runs, read as `status` reads them (the spec is read without
    checking its data sources, the store only opened if it exists)."""
    study = load_study(path, check_sources=False)
    store = open_store_if_any(study)
    if store is None:
        raise UserError(f"{path}: no study store at {study.store_path}; nothing has run yet")
    try:
        rows = stored_rows(current_rows(study, store))
        manifest, orphans = store.manifest(), len(store.rows()) - len(rows)
    finally:
        store.close()
    tuning = {spec.run_id for spec in study.runs if spec.tuning}
    return StoredStudy(
        study.name, str(study.path), str(study.store_path), rows, manifest, tuning, orphans
    )


def _matching(study: StoredStudy, wanted: Wanted) -> list[RunRow]:
    """Done runs of the asked strategy (label or name), budget, model and seed."""
    chosen = [
        row for row in study.rows
        if wanted.strategy in (row.label, row.strategy) and row.budget == wanted.budget
        and (wanted.model is None or row.config.get("model") == wanted.model)
        and (wanted.seed is None or row.seed == wanted.seed)
    ]  # fmt: skip
    for field, flag in (("label", "--strategy"), ("model", "--model")):
        values = sorted({_field(row, field) for row in chosen})
        if len(values) > 1:
            raise UserError(f"{len(values)} {field}s ran this: {', '.join(values)}; pass {flag}")
    done = [row for row in chosen if row.status == "done"]
    if not done:
        what = f"{wanted.strategy} at {wanted.budget}" + (
            f" seed {wanted.seed}" if wanted.seed is not None else ""
        )
        orphans = f", {study.orphans} stored runs are no longer in it" if study.orphans else ""
        raise UserError(
            f"no finished run of {what} in this study ({len(chosen)} stored, none done"
            f"{orphans}); `adaptive-lora status` lists the runs"
        )
    return done


def _field(row: RunRow, field: str) -> str:
    return str(row.label if field == "label" else row.config.get("model"))


def _ranks(row: RunRow) -> dict[str, int]:
    stored = row.metrics.get(ALLOCATION_KEY)
    if not stored:
        raise UserError(f"run {row.id} has no stored allocation ({ALLOCATION_KEY})")
    return {m["name"]: int(m["rank"]) for m in stored}


def pick_run(study: StoredStudy, wanted: Wanted) -> tuple[RunRow, list[str]]:
    """The run whose allocation to export, and the ids of the runs that share it.

    Reporting runs come before tuning runs. Without --seed, runs whose allocations
    differ (the random control) are ambiguous: the user must pick a seed.
    """
    tuning = study.tuning_ids
    done = sorted(_matching(study, wanted), key=lambda r: (r.id in tuning, r.seed, r.position))
    first = _ranks(done[0])
    if any(_ranks(row) != first for row in done):
        seeds = sorted({row.seed for row in done})
        raise UserError(
            f"{wanted.strategy} at {wanted.budget} ran different allocations on different seeds "
            f"({', '.join(map(str, seeds))}); pass --seed"
        )
    return done[0], [row.id for row in done]


def stored_allocation(row: RunRow, model: Any) -> Allocation:
    """The run's allocation rebuilt from its stored ranks over the model's inventory."""
    config = row.config
    with warnings.catch_warnings():  # generic kinds are reported in the provenance instead
        warnings.simplefilter("ignore", GenericKindsWarning)
        inventory = build_inventory(model, config["allocation"]["target"])
    ranks = _ranks(row)
    if sorted(ranks) != sorted(m.name for m in inventory):
        raise UserError(
            f"the modules of {config['model']} now differ from those run {row.id} allocated "
            "over; the store's ranks do not fit this model"
        )
    strategy = get_strategy(row.strategy)
    allocation = Allocation(
        strategy=row.strategy,
        params=strategy.check_params(config["allocation"].get("params") or {}),
        budget=resolve_budget(row.budget, inventory, model_type_of(model)),
        inventory=inventory,
        ranks=ranks,
        report=row.metrics.get("strategy_report") or {},
    )
    recorded = row.metrics.get("allocation_params")
    if recorded is not None and recorded != allocation.total_params:
        raise UserError(
            f"run {row.id} recorded {recorded:,} allocated parameters, its ranks on "
            f"{config['model']} now give {allocation.total_params:,}"
        )
    return allocation


def run_source(study: StoredStudy, row: RunRow, shared: list[str]) -> dict[str, Any]:
    """Which study and run the ranks come from, with the hashes that pin them."""
    return {
        "study": {
            "id": study.manifest.get("name", study.name),
            "spec_hash": study.manifest.get("spec_hash"),
            "file": study.path,
            "store": study.store_path,
        },
        "run_id": row.id,
        "seed": row.seed,
        "lr": row.lr,
        "manifest_sha256": hashlib.sha256(canonical_json(row.manifest).encode()).hexdigest(),
        "data_hash": row.manifest.get("data_hash"),
        "data_source_hash": row.manifest.get("data_source_hash"),
        "code_source_hash": row.manifest.get("source_hash"),  # the run's `source_hash`
        "git_commit": row.manifest.get("git_commit"),
        "runs_with_this_allocation": shared,
    }


def run_calibration(allocation: Allocation, row: RunRow) -> dict[str, Any] | None:
    """`calibration_record` of a stored run: its data source and the hash it recorded."""
    data = {
        "source": row.config.get("data", {}).get("source"),
        "data_hash": row.manifest.get("data_hash"),
        "data_seed": row.config.get("data", {}).get("data_seed"),
        "n_train": row.config.get("data", {}).get("n_train"),
    }
    return calibration_record(allocation, data=data)


def adapter_settings(row: RunRow) -> AdapterSettings:
    """The run's `adapter` section (α ratio, rsLoRA, dropout), the defaults where absent."""
    adapter = row.config.get("adapter") or {}
    return AdapterSettings(
        alpha_ratio=adapter.get("alpha_ratio", 2.0),
        rslora=adapter.get("rslora", False),
        dropout=adapter.get("dropout", 0.0),
    )


def export_run(
    study: StoredStudy, row: RunRow, shared: list[str], fmt: str, path: str
) -> list[str]:
    """Write the allocation `row` ran, with its provenance; the lines to tell the user."""
    model = load_skeleton(row.config["model"])
    allocation = stored_allocation(row, model)
    return write_export(
        fmt,
        path,
        allocation,
        adapter_settings(row),
        model=model,
        model_spec=row.config["model"],
        source=run_source(study, row, shared),
        calibration=run_calibration(allocation, row),
    )
