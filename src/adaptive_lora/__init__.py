"""adaptive-lora: budget-matched LoRA rank allocation, trained over seeds and tested.

The public API (see `api.py` and the README):

    load_model(spec)                             -> LoadedModel (.model, .tokenizer)
    allocate(model, strategy, budget, **params) -> Allocation
    lora_config(allocation, ...)                 -> peft.LoraConfig (rank/alpha patterns)
    train(config)                                -> RunResult (a run folder)
    load_study(path), run_study(study, executor=...), write_report(study)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it. Loaded on first use, so that `import adaptive_lora.errors`
# (or the CLI's argument errors) does not pay for importing torch, Transformers and PEFT.
_PUBLIC = {
    "allocate": "adaptive_lora.api",
    "lora_config": "adaptive_lora.api",
    "train": "adaptive_lora.api",
    "write_report": "adaptive_lora.api",
    "load_model": "adaptive_lora.model.loading",
    "load_study": "adaptive_lora.study.spec",
    "run_study": "adaptive_lora.study.runner",
    "Allocation": "adaptive_lora.allocation.core",
    "RunConfig": "adaptive_lora.config",
    "RunResult": "adaptive_lora.records",
    "Study": "adaptive_lora.study.spec",
    "LocalExecutor": "adaptive_lora.study.local",
    "UserError": "adaptive_lora.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'adaptive_lora' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
