"""EVA (Paischer et al. 2024), all of it: the `eva` strategy (`strategy.py`: ranks by the
explained variance of each module's inputs, matched to the parameter budget), PEFT's EVA
internals it and the init share (`svd.py`), and the optional SVD init of A with its
export caveat (`adapter.py`).

Importing this folder registers both: the strategy with `allocation.core.register`, the
adapter hooks with `adapters.methods.register_method`, under one name.
"""

from adaptive_lora.adapters.methods import register_method
from adaptive_lora.methods.eva.adapter import HOOKS
from adaptive_lora.methods.eva.strategy import NAME

register_method(NAME, HOOKS)
