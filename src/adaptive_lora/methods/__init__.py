"""Methods: strategies that bring their own adapter code, each in a folder of its own.

Like PEFT's `tuners/<method>/`, everything one method adds lives in `methods/<name>/`:
its allocation strategy (`strategy.py`, registered with `allocation.core.register`),
its adapter hooks (`adapter.py`: a `MethodHooks` of `adapters/methods.py`, registered
with `register_method` under the same name), and what only those two share. Importing
the folder registers both.

The import list below is the registry of methods, as `allocation/__init__`'s is the
registry of strategies that only allocate. It sits here, above `adapters/`, because a
method's adapter code builds on `adapters/lora.py`: the allocation registry, below
adapters, could not import a method without a lower stage importing a higher one. So
this package is the whole registry: once it is imported, `STRATEGIES` holds every
strategy a study or the CLI may name. `run.py` imports `build_adapter` from here, and
every command, the study runner and the API import `run.py`.
"""

from adaptive_lora.adapters.methods import BuiltAdapter, build_adapter, method_hooks
from adaptive_lora.allocation import STRATEGIES, get_strategy

# The registry of methods: one line per method folder.
from adaptive_lora.methods import adalora, eva  # noqa: F401

__all__ = ["STRATEGIES", "BuiltAdapter", "build_adapter", "get_strategy", "method_hooks"]
