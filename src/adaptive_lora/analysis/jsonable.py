"""Strict-JSON copies of analysis results: NaN/inf become ``None``, numpy becomes Python."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """A strict-JSON copy: NaN/inf -> None, numpy scalars/arrays -> Python numbers/lists.

    Dict keys become ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` as ``json`` allows;
    tuples and sets become lists.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                k = str(k)
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
