"""The public Python API, for notebooks and for researchers who bring their own trainer.

    import adaptive_lora as al
    allocation = al.allocate(model, "linear_decay", "r8", ratio=4)
    config = al.lora_config(allocation, model=model)   # a peft.LoraConfig
    peft_model = peft.get_peft_model(model, config)     # any Trainer can train it

    record = al.train({"allocation": {"strategy": "uniform", "budget": "r8"}}, out="runs")
    study = al.load_study("configs/quickstart.yaml")
    al.run_study(study)
    al.write_report(study)

Each function is a thin front of the stage that does the work (see ARCHITECTURE.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from peft import LoraConfig
from torch import nn

from adaptive_lora.adapters.lora import AdapterSettings, build_lora_config
from adaptive_lora.allocation.core import Allocation
from adaptive_lora.allocation.for_model import allocation_for, allocation_on_model
from adaptive_lora.config import RunConfig, load_yaml
from adaptive_lora.errors import UserError
from adaptive_lora.records import RunResult
from adaptive_lora.report.write import ReportFiles
from adaptive_lora.report.write import write_report as write_report_files
from adaptive_lora.run import execute_run
from adaptive_lora.study.spec import Study, load_study
from adaptive_lora.study.store import StudyStore


def allocate(
    model: nn.Module | str,
    strategy: str = "uniform",
    budget: str | int = "r8",
    *,
    target: str = "all",
    min_rank: int = 1,
    max_rank: int | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    data: str = "builtin",
    **params: Any,
) -> Allocation:
    """Budget-matched ranks `{module name: rank}` for `model` (a module or a model spec).

    `budget` is `rN` (the parameters of rank N on every target module), `qv:rN` (those of
    rank N on the modules PEFT adapts by default: q and v on Llama) or a count;
    `params` are the strategy's own (e.g. `ratio=4` for `linear_decay`). Data-driven
    strategies (`empirical`) calibrate on the training split of `data` and need the
    model's `tokenizer` when `model` is a module.
    """
    options = dict(target=target, min_rank=min_rank, max_rank=max_rank, seed=seed)
    if isinstance(model, str):
        return allocation_for(
            model_spec=model, strategy=strategy, budget=str(budget), params=params, data=data,
            **options,
        )  # fmt: skip
    return allocation_on_model(
        model, strategy, budget, params=params, tokenizer=tokenizer, data=data, **options
    )


def lora_config(
    allocation: Allocation,
    *,
    model: nn.Module | None = None,
    alpha_ratio: float = 2.0,
    rslora: bool = False,
    dropout: float = 0.0,
) -> LoraConfig:
    """A `peft.LoraConfig` whose `rank_pattern`/`alpha_pattern` carry the allocation.

    α_i = `alpha_ratio`·r_i for every module (one effective scale), or one α with
    rsLoRA. With `model`, every pattern key is checked to match exactly its own module
    and GPT-2's Conv1D layers get `fan_in_fan_out`; without it, the module names of
    the allocation are trusted.
    """
    settings = AdapterSettings(alpha_ratio=alpha_ratio, rslora=rslora, dropout=dropout)
    if model is None:
        return build_lora_config(allocation, settings, sorted(allocation.ranks))
    modules = dict(model.named_modules())
    conv1d = any(type(modules[name]).__name__ == "Conv1D" for name in allocation.ranks)
    return build_lora_config(allocation, settings, list(modules), fan_in_fan_out=conv1d)


def train(
    config: RunConfig | dict[str, Any] | str | Path, *, out: str | Path = "runs", quiet=False
) -> RunResult:
    """Train and evaluate one run into `out/<run id>/`; returns its record.

    `config` is a `RunConfig`, a dict of its sections (missing keys take their
    defaults) or the path of a run config YAML (an earlier run's config.yaml works).
    """
    if isinstance(config, (str, Path)):
        config = load_yaml(str(config))
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    return execute_run(config, Path(out), quiet=quiet)


def write_report(
    study: Study | str | Path,
    out: str | Path | None = None,
    *,
    allow_mixed: bool = False,
    against: Study | str | Path | None = None,
) -> ReportFiles:
    """Write a study's report (default: `<study out>/report`) from its store.

    Runs from different environments are refused unless `allow_mixed` (see
    `report/environment_check.py`). `against`: another study (a replication's original,
    say) whose decisions the report sets beside this one's in the cells both ran.
    """
    study = _stored_study(study)
    other = None if against is None else _stored_study(against)
    other_opened = nullcontext() if other is None else _open(other)
    with _open(study) as store, other_opened as other_store:
        out_dir = Path(out) if out else study.out / "report"
        return write_report_files(
            study,
            store,
            out_dir,
            allow_mixed=allow_mixed,
            against=None if other is None else (other, other_store),
        )


def _stored_study(study: Study | str | Path) -> Study:
    """A study spec whose store exists (else the one-line error naming the command to run)."""
    if not isinstance(study, Study):
        study = load_study(study, check_sources=False)
    if not study.store_path.is_file():
        raise UserError(
            f"study {study.name} has no store at {study.store_path} yet: "
            f"run `adaptive-lora run {study.path}` first"
        )
    return study


def _open(study: Study) -> StudyStore:
    """The existing store of a study (`_stored_study` checked it), for a `with` block."""
    return StudyStore.open(study.store_path, create=False)
