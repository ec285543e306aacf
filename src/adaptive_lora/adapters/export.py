"""Allocation → the files other trainers read: PEFT's `adapter_config.json`, axolotl's YAML.

Pure functions: an allocation, its adapter settings and the model's module names in,
a dict or the text of a file out. Writing files is the CLI's job (`cli/export.py`).

* PEFT: the keys `LoraConfig(**json.load(f))` accepts (it rejects unknown keys, so the
  provenance goes to a sibling `FILE.provenance.json`). Built by `build_lora_config`,
  so its `^`-anchored keys are checked to match exactly one module each, as in training.
* axolotl: the keys of `LoraConfig` in `src/axolotl/utils/schemas/peft.py`, which
  `_build_lora_config_kwargs` in `src/axolotl/loaders/adapter.py` forwards to PEFT
  unchanged (axolotl-ai-cloud/axolotl at commit 067b021c8b87a9e5e380b9173c704cf7340e30f5;
  the pattern keys came in with PR #3673, 629bafbb). Its schema types `lora_alpha` as
  `int` and pattern values as `PositiveInt`, so every α must be a whole number.
* LLaMA-Factory: no per-module ranks. `_setup_lora_tuning` in
  `src/llamafactory/model/adapter.py` builds `LoraConfig(r=finetuning_args.lora_rank,
  ...)` with no `rank_pattern`, and `LoraArguments` in
  `src/llamafactory/hparams/finetuning_args.py` has no pattern field
  (hiyouga/LLaMA-Factory at commit ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30).
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from adaptive_lora.adapters.lora import AdapterSettings, build_lora_config
from adaptive_lora.adapters.methods import method_hooks
from adaptive_lora.allocation.core import Allocation, get_strategy
from adaptive_lora.errors import UserError

FORMATS = ("peft", "axolotl")
AXOLOTL_COMMIT = "067b021c8b87a9e5e380b9173c704cf7340e30f5"
LLAMAFACTORY_COMMIT = "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30"
LLAMAFACTORY_REASON = (
    "LLaMA-Factory cannot take per-module ranks (its LoraConfig gets one lora_rank, no "
    f"rank_pattern: src/llamafactory/model/adapter.py at {LLAMAFACTORY_COMMIT[:8]}); "
    "use --export peft and pass a PEFT adapter saved from it as adapter_name_or_path "
    "(README: Use the ranks in another trainer)"
)
# The settings of data-driven strategies that fix which calibration batches they saw.
CALIBRATION_PARAMS = ("calibration_seed", "n_batches", "batch_size")


def check_format(fmt: str) -> str:
    """`fmt` if this tool can write it; otherwise the one-line reason as a UserError."""
    if fmt == "llamafactory":
        raise UserError(LLAMAFACTORY_REASON)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def check_exportable(strategy: str) -> None:
    """A method whose adapters no fixed-rank LoRA config describes (its `export_refusal`
    hook, e.g. AdaLoRA's pruned ranks) cannot be exported: the one-line reason."""
    refusal = method_hooks(strategy).export_refusal
    if refusal is not None:
        raise UserError(refusal)


def peft_adapter_config(
    allocation: Allocation,
    settings: AdapterSettings,
    module_names: list[str],
    *,
    fan_in_fan_out: bool = False,
) -> dict[str, Any]:
    """The `adapter_config.json` keys that carry the allocation; `LoraConfig(**it)` loads it.

    Only the fields this tool sets are written, so older and newer PEFT versions read
    the file alike (a full `LoraConfig.to_dict()` names fields older versions reject).
    """
    check_exportable(allocation.strategy)
    config = build_lora_config(allocation, settings, module_names, fan_in_fan_out=fan_in_fan_out)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "use_rslora": config.use_rslora,
        "fan_in_fan_out": config.fan_in_fan_out,
        "bias": config.bias,
        "target_modules": sorted(config.target_modules),
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
    }


def _whole(value: float, what: str) -> int:
    if not math.isclose(value, round(value)):
        raise UserError(
            f"axolotl takes whole-number alphas (lora_alpha: int in its schema), but {what} "
            f"is {value:g}; choose an alpha_ratio that makes α whole, or --export peft"
        )
    return int(round(value))


def axolotl_fragment(peft: dict[str, Any]) -> dict[str, Any]:
    """The axolotl config keys for a PEFT adapter config from `peft_adapter_config`."""
    fragment: dict[str, Any] = {
        "adapter": "lora",
        "lora_r": peft["r"],
        "lora_alpha": _whole(peft["lora_alpha"], "lora_alpha"),
        "lora_dropout": peft["lora_dropout"],
        "lora_target_modules": peft["target_modules"],
        "lora_rank_pattern": peft["rank_pattern"],
    }
    if peft["alpha_pattern"]:  # empty under rsLoRA: one α for every module
        fragment["lora_alpha_pattern"] = {
            key: _whole(alpha, f"the alpha of {key}")
            for key, alpha in peft["alpha_pattern"].items()
        }
    if peft["use_rslora"]:
        fragment["peft_use_rslora"] = True
    if peft["fan_in_fan_out"]:
        fragment["lora_fan_in_fan_out"] = True
    return fragment


def calibration_record(
    allocation: Allocation, *, data: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """What a data- or weight-driven allocation was computed from; None for shape-only ones.

    `data` describes the calibration data (source, data hash, ...) where known. Ranks
    measured on one data set (Alpaca, say) may not fit another: the note says how to
    calibrate on one's own.
    """
    strategy = get_strategy(allocation.strategy)
    if not strategy.needs_weights:
        return None
    if not strategy.needs_data:
        return {
            "reads": "the model's weights only, no data",
            "note": f"{allocation.strategy} ranks depend on the base model only",
        }
    settings = {k: allocation.params[k] for k in CALIBRATION_PARAMS if k in allocation.params}
    used = allocation.report.get("importance", {}).get("n_batches")
    source = (data or {}).get("source", "unknown data")
    # What the method does beyond ranks that a LoRA config cannot hold (EVA's SVD init).
    caveat = method_hooks(allocation.strategy).export_caveat
    init = caveat(allocation.params) if caveat is not None else ""
    return {
        "reads": "training-split calibration batches",
        **(data or {}),
        **settings,
        **({"n_batches_used": used} if used is not None else {}),
        "note": _calibration_note(source, allocation.strategy) + init,
    }


def _calibration_note(source: str, strategy: str) -> str:
    """Where the ranks came from, and — only if that was not the user's own data — how to
    calibrate on theirs (a user who passed `--data FILE` has already done so)."""
    if source in ("builtin", "unknown data"):
        return (
            f"ranks calibrated on {source}; they may not fit your data: calibrate on it with "
            f"`adaptive-lora allocate --strategy {strategy} --data YOUR_FILE`"
        )
    return f"ranks calibrated on the training split of {source}"


def provenance(
    allocation: Allocation,
    settings: AdapterSettings,
    *,
    model: str,
    source: dict[str, Any],
    calibration: dict[str, Any] | None,
) -> dict[str, Any]:
    """The metadata an exported file carries: where its ranks came from and what they cost.

    `trainable_params` is what the trainer's PEFT model must report; `modules` lists each
    module's kind, generic kinds included (with `inventory_note` saying so).
    """
    note = {k: allocation.report[k] for k in ("inventory_note", "generic_modules")
            if k in allocation.report}  # fmt: skip
    return {
        "model": model,
        "strategy": allocation.strategy,
        "strategy_params": allocation.params,
        "budget": allocation.budget.label,
        "budget_params": allocation.budget.params,
        "trainable_params": allocation.total_params,
        "adapter": {
            "alpha_ratio": settings.alpha_ratio,
            "rslora": settings.rslora,
            "dropout": settings.dropout,
        },
        "source": source,
        "calibration": calibration,
        **note,
        "modules": [
            {k: row[k] for k in ("name", "layer", "kind", "rank", "params")}
            for row in allocation.rows()
        ],
    }


def notes(record: dict[str, Any]) -> list[str]:
    """The lines a user must read about an export: unclassified modules, calibration data."""
    lines = [record["inventory_note"]] if "inventory_note" in record else []
    if record.get("calibration"):
        lines.append(record["calibration"]["note"])
    return lines


def _yaml_header(record: dict[str, Any], provenance_name: str) -> str:
    source = record["source"]
    origin = (
        f"study {source['study']['id']}, run {source['run_id']}"
        if "run_id" in source
        else "adaptive-lora allocate"
    )
    lines = [
        f"{record['strategy']} at {record['budget']} for {record['model']} ({origin}):",
        f"{record['trainable_params']:,} trainable parameters.",
        f"Provenance (hashes of the run, data and calibration): {provenance_name}",
        "Add these keys to an axolotl config that sets no adapter or lora_* keys itself.",
        *notes(record),
    ]
    return "".join(f"# {line}\n" for line in lines)


def render(fmt: str, peft: dict[str, Any], record: dict[str, Any], provenance_name: str) -> str:
    """The text of the exported file in format `fmt` (see `FORMATS`)."""
    if check_format(fmt) == "peft":
        return json.dumps(peft, indent=2) + "\n"
    body = yaml.safe_dump(axolotl_fragment(peft), sort_keys=False, default_flow_style=False)
    return _yaml_header(record, provenance_name) + body
