"""NaN-aware float helpers shared by the statistics modules.

Owns ``NAN`` and the two conversions every module needs: a value as a plain float
(``None`` read as NaN) and "is this missing" (``None`` or a float NaN).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NAN", "as_float", "is_nan"]

NAN = float("nan")


def as_float(x: Any) -> float:
    """A plain Python float (NaN for None)."""
    return NAN if x is None else float(x)


def is_nan(x: Any) -> bool:
    """True for None and for a float NaN (other types are never missing)."""
    return x is None or (isinstance(x, float) and math.isnan(x))
