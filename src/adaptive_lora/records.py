"""What one run leaves behind, and the names the rest of the tool reads from it.

A run folder holds:

    config.yaml       the resolved RunConfig
    allocation.json   the allocation (Allocation.to_dict) and allocation.png, its heatmap
    metrics.json      every number below, with loss curves
    manifest.json     versions, device, git commit, fingerprints, seeds, times, status
    adapter/          the adapter in standard PEFT format (PeftModel.from_pretrained)
    generations.jsonl greedy answers to test prompts

`execute_run` in `run.py` produces it and returns a `RunResult`; the study
runner stores the result; the report reads metrics by the names listed here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Keys of metrics.json that every finished run has (None where not applicable).
METRIC_KEYS = (
    "test_loss",
    "test_loss_before",
    "val_loss",
    "val_loss_before",
    "test_ppl",
    "test_ppl_before",
    "val_ppl",
    "val_ppl_before",
    "rouge_l",  # mean ROUGE-L F1 of greedy answers to n_generate test prompts
    "exact_match",  # fraction exactly right (built-in data only, else None)
    "trainable_params",  # counted on the PEFT model during training
    "effective_params",  # after training: AdaLoRA's unmasked ranks; = trainable otherwise
    "budget_params",
    "deviation_pct",  # (trainable − budget) / budget, in %
    "train_seconds",
    "eval_seconds",
    "tokens_per_second",  # real (non-padding) training tokens per second
    "peak_memory_mb",  # RSS on CPU, max allocated on CUDA
    "steps",
    "final_train_loss",
)
# Curves: lists of [step, value].
CURVE_KEYS = ("train_loss_curve", "val_loss_curve")
# The allocation, one {name, layer, kind, rank} per module: in the store with the run's
# metrics, so a committed study database alone redraws the allocation figures.
ALLOCATION_KEY = "allocation_modules"
# Per test item: loss, token count and each metric's verdict (see `run.test_item_records`),
# so statistics can resample items as well as seeds.
ITEMS_KEY = "test_items"
# A planted task's run (`data.source: planted`): the planted modules, the teacher's scale
# and KL, and how much of the allocation's budget went to the planted modules
# (`allocation/oracle.planted_metrics`).
PLANTED_KEY = "planted"
# Too long for a column of results.csv: they stay in the store and in metrics.json.
NOT_EXPORTED_KEYS = (*CURVE_KEYS, ALLOCATION_KEY, ITEMS_KEY, PLANTED_KEY)

STATUS_DONE = "done"
STATUS_FAILED = "failed"
# An executor lost the run (its worker died, retries used up): it goes back to pending.
STATUS_INTERRUPTED = "interrupted"
# A run folder's manifest of a run stopped by Ctrl-C or a signal (`train`, `run`) before
# its end; a study runs it again.
STATUS_STOPPED = "stopped"


@dataclass
class RunResult:
    """What `execute_run` hands back (also on failure, with `error` set)."""

    run_id: str
    run_dir: Path
    status: str  # STATUS_DONE, STATUS_FAILED or (from an executor) STATUS_INTERRUPTED
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # one line: why it failed (e.g. "loss is nan at step 12")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# The RunConfig fields that existed when run ids were first defined (id schema 1). Each
# is always hashed; a field added since enters the hash only when it differs from its
# default, so adding a defaulted field keeps every id (and old stores resume) while any
# change that alters a run changes its id. `train.threads` is how fast a run goes, not
# what it computes, and never enters the hash.
ID_SCHEMA_1 = frozenset(
    {
        "model", "seed",
        "data.source", "data.n_train", "data.n_val", "data.n_test", "data.data_seed",
        "data.max_length", "data.template",
        "allocation.strategy", "allocation.budget", "allocation.params", "allocation.target",
        "allocation.min_rank", "allocation.max_rank",
        "adapter.alpha_ratio", "adapter.rslora", "adapter.dropout",
        "train.lr", "train.epochs", "train.max_steps", "train.batch_size", "train.grad_accum",
        "train.warmup_ratio", "train.scheduler", "train.weight_decay", "train.max_grad_norm",
        "train.eval_every", "train.group_by_length", "train.precision", "train.report_to",
        "eval.batch_size", "eval.max_new_tokens", "eval.n_generate",
    }
)  # fmt: skip
NOT_IDENTITY = frozenset({"train.threads"})
# Fields added since schema 1 whose *historical* behaviour is not their default: such a
# field names nothing at its historical value (the runs stored before it existed keep
# their ids) and names the run at any other value, its default included (a study file
# that does not name it gets new runs rather than resuming old ones made otherwise).
HISTORICAL = {"data.split": "train_first"}


def run_identity(
    config_dict: dict[str, Any], defaults: dict[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """The part of a resolved run config that names the run (see ID_SCHEMA_1)."""
    kept = {}
    for key, value in config_dict.items():
        path = prefix + key
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if path in NOT_IDENTITY or HISTORICAL.get(path, object()) == value:
            continue
        if path in HISTORICAL:
            kept[key] = value
            continue
        if isinstance(value, dict) and path not in ID_SCHEMA_1:
            inner = run_identity(value, default if isinstance(default, dict) else {}, path + ".")
            # A mapping field added since schema 1 (e.g. `data.options`) left at its
            # default names nothing, so it must not enter the hash as `{}` either.
            if inner or key not in defaults or value != default:
                kept[key] = inner
        elif path in ID_SCHEMA_1 or key not in defaults or value != default:
            kept[key] = value
    return kept


def run_id_for(config_dict: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """A stable id for a resolved run config: readable prefix + hash of its identity.

    `defaults` is the default config's dict (`RunConfig().to_dict()`, which callers
    pass; records stays below config).
    """
    identity = run_identity(config_dict, defaults or {})
    digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:10]
    alloc = config_dict.get("allocation", {})
    return f"{alloc.get('strategy', 'run')}-{alloc.get('budget', '')}-s{config_dict.get('seed', 0)}-{digest}"


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` when the block ends,
    removed if it raises. A reader (or a kill mid-write) never meets half a file at `path`.
    A writer that infers the format from the name must be told it (`format=...`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode by umask
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a reader (or a concurrent writer) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(value, out, indent=2, default=str, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
