"""Typed, validated configuration of one run (a study expands into many of these).

Each section is a dataclass whose fields carry a help text; YAML and the CLI only
serialise and override them. `RunConfig.from_dict` rejects unknown keys and bad
values with a one-line `UserError` naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import yaml

from adaptive_lora.config_fields import build_typed
from adaptive_lora.config_fields import help_field as _help  # short: every field below uses it
from adaptive_lora.errors import UserError
from adaptive_lora.records import HISTORICAL, run_id_for

_RANK_BUDGET = re.compile(r"^r(\d+)$")
# `qv:rN`: rank N on PEFT's default target modules (q and v on Llama), the budget most
# LoRA users spend; resolved against the model's type and inventory like `rN`.
_PLACED_BUDGET = re.compile(r"^(qv):r(\d+)$")
_COUNT_BUDGET = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


@dataclass(frozen=True)
class Budget:
    """A resolved budget: its label as the user wrote it and its parameter count."""

    label: str
    params: int
    rank: int | None = None  # N for an `rN` (or `qv:rN`) budget, else None
    # Where rank N is counted: None for every target module (`rN`), `qv` for PEFT's
    # default target modules (`qv:rN`).
    placement: str | None = None

    @property
    def uniform_rank(self) -> int | None:
        """N of an `rN` budget: the rank that spends it on every target module (else None)."""
        return self.rank if self.placement is None else None

    def to_dict(self) -> dict:
        out = {"label": self.label, "params": self.params, "rank": self.rank}
        if self.placement is not None:  # absent for rN and counts: their records stay as were
            out["placement"] = self.placement
        return out


def parse_budget(spec: str | int) -> Budget:
    """The one budget parser: `r8` → rank 8 (parameters unknown until an inventory is
    given: `params` 0); `qv:r8` → rank 8 on PEFT's default target modules (unknown until
    the model's type and inventory are given); `250000`, `250k`, `1.5M` → that count. A
    one-line error otherwise. The label is kept exactly as written.

    It lives here, beside the run config that checks its budget when it is read;
    `allocation/budget.py` re-exports it with the apportioning that resolves it.
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    text = str(spec).strip()
    match = _RANK_BUDGET.match(text)
    if match:
        rank = int(match.group(1))
        if rank < 1:
            raise UserError(f"budget {text!r}: the rank must be at least 1 (e.g. r8)")
        return Budget(text, 0, rank)
    match = _PLACED_BUDGET.match(text)
    if match:
        rank = int(match.group(2))
        if rank < 1:
            raise UserError(f"budget {text!r}: the rank must be at least 1 (e.g. qv:r8)")
        return Budget(text, 0, rank, match.group(1))
    match = _COUNT_BUDGET.match(text)
    if match:
        scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
        params = int(round(float(match.group(1)) * scale))
        if params < 1:
            raise UserError(f"budget {text!r} is not a positive parameter count")
        return Budget(text, params)
    raise UserError(
        f"cannot read budget {text!r}: write rN (e.g. r8), qv:rN (rank N on PEFT's default "
        "target modules, e.g. qv:r8) or a parameter count (e.g. 500000, 1.2M)"
    )


# How a pool is split (`data/splits.py` says what each means).
SPLIT_RULES = ("test_first", "train_first", "per_seed")
# What a stored config without a later data field did (see `RunConfig.from_stored`): the
# historical values run ids already leave out (`records.HISTORICAL`), one table for both.
LEGACY_DATA = {
    path.removeprefix("data."): value
    for path, value in HISTORICAL.items()
    if path.startswith("data.")
}


@dataclass
class DataSettings:
    source: str = _help(
        "`builtin`, an Alpaca JSON/JSONL file, a hub data set id, `reasoning_gym:<task>` or "
        "`planted` (a task with a known answer)",
        "builtin",
    )
    n_train: int = _help("training examples in the subset", 160)
    n_val: int = _help("validation examples (model and learning-rate selection)", 32)
    n_test: int = _help("test examples (the reported numbers)", 48)
    data_seed: int = _help("seed of the subset and split draw (independent of the run seed)", 0)
    split: str = _help(
        "`test_first` (one test set for every training size, training sets nested), "
        "`per_seed` (each run seed draws its own split: data as a random factor) or "
        "`train_first` (the order of the studies published before 2026-12-07)",
        "test_first",
    )
    max_length: int = _help("tokens per example after truncation", 256)
    template: str = _help(
        "prompt format: `alpaca` or `chat` (the tokenizer's chat template)", "alpaca"
    )
    options: dict[str, Any] = _help(
        "generator options of a `reasoning_gym:<task>` source, e.g. {max_terms: 3}, or a "
        "`planted` task's sites and settings (data/planted.py)",
        default_factory=dict,
    )

    def validate(self) -> None:
        _at_least(self, "n_train", 1)
        _at_least(self, "n_val", 0)
        _at_least(self, "n_test", 0)
        _at_least(self, "max_length", 8)
        _choice(self, "template", ("alpaca", "chat"))
        _choice(self, "split", SPLIT_RULES)


@dataclass
class AllocationSettings:
    strategy: str = _help(
        "rank-allocation strategy (see `adaptive-lora allocate --help`)", "uniform"
    )
    budget: str = _help(
        "`rN` (parameters of uniform rank N), `qv:rN` (parameters of rank N on PEFT's default "
        "target modules, e.g. q and v on Llama) or a parameter count",
        "r8",
    )
    params: dict[str, Any] = _help("strategy parameters, e.g. {ratio: 4}", default_factory=dict)
    min_rank: int = _help(
        "smallest rank any module gets (0: a strategy may leave a module without an adapter)", 1
    )
    max_rank: int | None = _help("largest rank any module gets (none: unbounded)", None)
    target: str = _help(
        "modules to adapt: `all`, `attention`, `mlp` or a comma list of kinds", "all"
    )

    @functools.cached_property
    def parsed_budget(self) -> Budget:
        """The budget, read once (by `validate`, when the config is read): a bad one fails
        before any model or data loads, and the run uses this value, not the text again."""
        return parse_budget(self.budget)

    def validate(self) -> None:
        try:
            self.parsed_budget  # noqa: B018 -- read (and kept) now, to fail at parse time
        except UserError as error:
            raise UserError(f"allocation.budget: {error}") from None
        _at_least(self, "min_rank", 0)
        if self.max_rank is not None and self.max_rank < self.min_rank:
            raise UserError(
                f"allocation.max_rank ({self.max_rank}) must be >= min_rank ({self.min_rank})"
            )


@dataclass
class AdapterConfig:
    alpha_ratio: float = _help("γ = α/r, the same for every module", 2.0)
    rslora: bool = _help("rank-stabilised scaling α/√r (one α for all modules)", False)
    dropout: float = _help("LoRA dropout", 0.0)

    def validate(self) -> None:
        if self.alpha_ratio <= 0:
            raise UserError("adapter.alpha_ratio must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError("adapter.dropout must be in [0, 1)")


@dataclass
class TrainSettings:
    lr: float = _help("peak learning rate (AdamW)", 1e-3)
    batch_size: int = _help("examples per micro-batch", 8)
    grad_accum: int = _help("micro-batches per optimizer step", 1)
    epochs: float = _help("passes over the training split (ignored when max_steps is set)", 2.0)
    max_steps: int | None = _help("optimizer steps; overrides epochs", None)
    warmup_ratio: float = _help("fraction of steps of linear warm-up", 0.1)
    scheduler: str = _help("`linear` or `cosine` decay after warm-up", "linear")
    weight_decay: float = _help("AdamW weight decay", 0.0)
    max_grad_norm: float = _help("gradient clipping norm (0: off)", 1.0)
    precision: str = _help(
        "`auto` (the faster here: bf16 autocast where bf16 is native, else fp32), `bf16` or `fp32`",
        "auto",
    )
    group_by_length: bool = _help("batch examples of similar length (less padding)", True)
    eval_every: int = _help("validation loss every N optimizer steps (0: only at the end)", 0)
    threads: int | None = _help("torch CPU threads (none: all cores)", None)
    report_to: list[str] = _help("trainer loggers: tensorboard, mlflow", default_factory=list)

    def validate(self) -> None:
        _at_least(self, "batch_size", 1)
        _at_least(self, "grad_accum", 1)
        if self.lr <= 0:
            raise UserError("train.lr must be > 0")
        if self.max_steps is not None:
            _at_least(self, "max_steps", 1)
        elif self.epochs <= 0:
            raise UserError("train.epochs must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError("train.warmup_ratio must be in [0, 1)")
        _choice(self, "scheduler", ("linear", "cosine"))
        _choice(self, "precision", ("auto", "bf16", "fp32"))
        if self.threads is not None:
            _at_least(self, "threads", 1)
        unknown = sorted(set(self.report_to) - {"tensorboard", "mlflow"})
        if unknown:
            raise UserError(
                f"train.report_to: unknown logger(s) {unknown}; use tensorboard or mlflow"
            )


@dataclass
class EvalSettings:
    n_generate: int = _help("test prompts to generate answers for (scored by `metrics`)", 16)
    max_new_tokens: int = _help("tokens generated per prompt", 48)
    batch_size: int = _help("examples per evaluation batch", 16)
    metrics: list[str] = _help(
        "task metrics of the generated answers: rouge_l, exact_match, final_number, exact, "
        "contains, task_score (none: exact_match on built-in data, task_score on a "
        "reasoning_gym task, rouge_l otherwise; rouge_l, and "
        "exact_match on built-in data, are recorded always)",
        default_factory=list,
    )
    answer_pattern: str = _help(
        "a regular expression that finds the answer in a reference and a generated answer "
        "(its first group, else the whole match; the last match counts), for final_number; "
        "none: GSM8K's `#### N` line, else the number after the last `=`, else the last "
        "number",
        "",
    )

    def validate(self) -> None:
        _at_least(self, "n_generate", 0)
        _at_least(self, "max_new_tokens", 1)
        _at_least(self, "batch_size", 1)
        if self.answer_pattern:
            try:
                re.compile(self.answer_pattern)
            except re.error as error:
                raise UserError(
                    f"eval.answer_pattern {self.answer_pattern!r} is not a regular "
                    f"expression ({error}); e.g. 'The answer is (.+)'"
                ) from None


@dataclass
class RunConfig:
    model: str = _help(
        "preset (smollm2-135m, dialogpt-medium), hub id, folder or .gguf", "smollm2-135m"
    )
    seed: int = _help("run seed: data order and adapter initialisation", 0)
    data: DataSettings = _help("data", default_factory=DataSettings)
    allocation: AllocationSettings = _help("rank allocation", default_factory=AllocationSettings)
    adapter: AdapterConfig = _help("adapter scaling", default_factory=AdapterConfig)
    train: TrainSettings = _help("training", default_factory=TrainSettings)
    eval: EvalSettings = _help("evaluation", default_factory=EvalSettings)

    def validate(self) -> RunConfig:
        for section in (self.data, self.allocation, self.adapter, self.train, self.eval):
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """This run's id: strategy, budget, seed and a hash of what names the run."""
        return run_id_for(self.to_dict(), RunConfig().to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RunConfig:
        return build_typed(cls, raw or {}, "").validate()

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> RunConfig:
        """A stored run's config (a complete `to_dict` of its time): a field it lacks was
        added since, and means what the code did then, not today's default."""
        data = {**LEGACY_DATA, **stored.get("data", {})}
        return cls.from_dict({**stored, "data": data})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _at_least(section: Any, name: str, low: int) -> None:
    if getattr(section, name) < low:
        raise UserError(
            f"{_section_name(section)}.{name} must be >= {low}, got {getattr(section, name)}"
        )


def _choice(section: Any, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(section, name) not in allowed:
        raise UserError(
            f"{_section_name(section)}.{name} must be one of {', '.join(allowed)}, "
            f"got {getattr(section, name)!r}"
        )


_SECTION_NAMES = {
    DataSettings: "data",
    AllocationSettings: "allocation",
    AdapterConfig: "adapter",
    TrainSettings: "train",
    EvalSettings: "eval",
}


def _section_name(section: Any) -> str:
    return _SECTION_NAMES.get(type(section), type(section).__name__)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` → (["train", "lr"], 0.0001); the value is read as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like section.key=value (e.g. train.lr=1e-4)")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def merge_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested config dict (unknown keys are caught later)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return merged


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping with a one-line error for a missing or broken file."""
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; give the path of a YAML file") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(
            f"{path}{where} is not valid YAML: {getattr(error, 'problem', error)}"
        ) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a YAML mapping at the top level")
    return raw
