"""AdaLoRA (Zhang et al. 2023), all of it: the `adalora` strategy (`strategy.py`: its
budget as a uniform start at the target rank) and its adapters (`adapter.py`: PEFT's
AdaLoRA with the budget in parameters, its training hooks and its export refusal).

Importing this folder registers both: the strategy with `allocation.core.register`, the
adapter hooks with `adapters.methods.register_method`, under one name.
"""

from adaptive_lora.adapters.methods import register_method
from adaptive_lora.methods.adalora.adapter import HOOKS
from adaptive_lora.methods.adalora.strategy import NAME

register_method(NAME, HOOKS)
