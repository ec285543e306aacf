"""One environment per comparison: do the compared runs share what their numbers depend on?

Checked from each run's manifest: the numerics version (`environment.NUMERICS_VERSION`,
bumped by a commit that means to change a run's numbers; for runs recorded before versions
were, their `source_hash`, the hash of the sources a run computes with, stands in), the
model fingerprint, the data hash, the precision, the torch version and the device type;
and for bf16 runs the
matrix-instruction family of the CPU (AMX-bf16, AVX512-bf16, ...) or the GPU model, which
changes the last bits of every bf16 sum (by about the size of the effects studied). Runs
that differ in any of these are not pooled unless the user says so (`--allow-mixed`).
A run recorded before families were (no `matrix_family` in its manifest) is of an
unknown family and never a reason to refuse. A different CPU model within one family, or a
different package source within one numerics version, is a warning only: the machine may
change between sessions of one study, and so may code that changes no number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from adaptive_lora.errors import UserError
from adaptive_lora.study.machine_check import bf16_families
from adaptive_lora.study.store import RunRow

UNKNOWN = "unrecorded"


def _device_type(manifest: dict[str, Any]) -> str | None:
    device = manifest.get("device")
    return str(device).split(":")[0] if device else None


def _model(manifest: dict[str, Any]) -> str | None:
    fingerprint = manifest.get("model_fingerprint") or {}
    if isinstance(fingerprint, dict):
        return fingerprint.get("sha256") or fingerprint.get("hub_id") or fingerprint.get("commit")
    return str(fingerprint)


def _numerics(manifest: dict[str, Any]) -> str | None:
    """The numerics version; a run from before versions were is known by its source hash."""
    version = manifest.get("numerics_version")
    if version is not None:
        return str(version)
    source = manifest.get("source_hash")
    return f"unversioned (source {source})" if source else None


def _data(manifest: dict[str, Any]) -> str | None:
    """The data a run saw: its split's hash — or, where each seed draws its own split
    (`per_seed`), the pool and the rule, which every run of the study shares."""
    if manifest.get("data_split") == "per_seed":
        return f"per-seed splits of {manifest.get('data_source_hash')}"
    return manifest.get("data_hash")


# What must agree, and how to read it from a manifest.
MUST_AGREE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "numerics version": _numerics,
    "model fingerprint": _model,
    "data hash": _data,
    "precision": lambda m: m.get("precision"),
    "torch version": lambda m: (m.get("versions") or {}).get("torch"),
    "device type": _device_type,
}
# Only among bf16 runs that recorded one (see `study.machine_check.bf16_families`).
FAMILY_KEY = "matrix-instruction family (bf16)"
MAY_DIFFER: dict[str, Callable[[dict[str, Any]], Any]] = {
    "package source": lambda m: m.get("source_hash"),
    "CPU model": lambda m: m.get("cpu"),
    "GPU": lambda m: m.get("gpu"),
}


def _groups(rows: Sequence[RunRow], read: Callable[[dict[str, Any]], Any]) -> dict[str, list]:
    groups: dict[str, list[str]] = {}
    for row in rows:
        value = read(row.manifest or {})
        groups.setdefault(UNKNOWN if value is None else str(value), []).append(row.id)
    return groups


def check_environment(rows: Sequence[RunRow]) -> dict[str, Any]:
    """{"differ": key → value → run ids, "warnings": the same for CPU/GPU, "mixed": bool}.

    A key whose only value is `unrecorded` (runs from before it was recorded) is not a
    difference; `unrecorded` beside a recorded value is, except for the bf16 family: a run
    without one (recorded before families were) is left out of that comparison.
    """
    differ = {}
    for key, read in MUST_AGREE.items():
        groups = _groups(rows, read)
        if len(groups) > 1:
            differ[key] = groups
    families = bf16_families(rows)
    if len(families) > 1:
        differ[FAMILY_KEY] = families
    warnings = {}
    for key, read in MAY_DIFFER.items():
        groups = {v: ids for v, ids in _groups(rows, read).items() if v != UNKNOWN}
        if len(groups) > 1:
            warnings[key] = groups
    return {"differ": differ, "warnings": warnings, "mixed": bool(differ), "n_runs": len(rows)}


def _shown(groups: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{value} ({len(ids)} run(s), e.g. {ids[0]})" for value, ids in sorted(groups.items())
    )


def refuse_mixed(check: dict[str, Any]) -> None:
    """The one-line error for compared runs from different environments."""
    if not check["mixed"]:
        return
    key, groups = next(iter(check["differ"].items()))
    more = len(check["differ"]) - 1
    raise UserError(
        f"the compared runs differ in {key}: {_shown(groups)}"
        + (f" (and {more} more difference(s))" if more else "")
        + "; re-run them in one environment, or pass --allow-mixed to pool them anyway"
    )


def describe(check: dict[str, Any]) -> list[str]:
    """Lines for the report: what differs (pooled anyway) and what merely warns."""
    lines = [f"- **{key} differs** (pooled with --allow-mixed): {_shown(groups)}"
             for key, groups in check["differ"].items()]  # fmt: skip
    lines += [f"- {key} differs between runs (a warning, not a refusal): {_shown(groups)}"
              for key, groups in check["warnings"].items()]  # fmt: skip
    return lines
