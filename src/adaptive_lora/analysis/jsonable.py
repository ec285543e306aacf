"""Strict-JSON copies of analysis results: NaN/inf become ``None``, numpy becomes Python.

Results are dataclasses (``paired.PairedComparison``, ``ladder.GainPerDoubling``,
``planning.ComparisonPlan`` ...) read by attribute; ``to_jsonable`` writes one as an
object whose keys are its fields in declaration order, so a field's place in its class is
its place in ``stats.json``. A field may name its JSON key (``metadata={"key": "from"}``,
for a key that is a Python keyword) and a field set to ``OMIT`` is left out (a key
that only some results of one kind carry, such as ``two_level``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["OMIT", "KeyedRecord", "json_fields", "to_jsonable"]


class _Omit:
    """A field's value that leaves its key out of the JSON (a key not every result has)."""

    def __repr__(self) -> str:
        return "OMIT"

    def __bool__(self) -> bool:  # reads as "none" where a report asks `if c.two_level`
        return False


OMIT: Any = _Omit()


def json_fields(record: Any) -> dict[str, Any]:
    """A dataclass result's JSON keys and values, in field order (``OMIT`` left out)."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is not OMIT:
            out[f.metadata.get("key", f.name)] = value
    return out


class KeyedRecord:
    """Read access by JSON key beside the attributes, for the callers in ``study/`` that
    index a plan or a ladder (``plan["t_seeds"]``) until they read attributes. A key that
    is no field raises, as a typo should."""

    def __getitem__(self, key: str) -> Any:
        for f in dataclasses.fields(self):
            if f.metadata.get("key", f.name) == key:
                return getattr(self, f.name)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def to_jsonable(obj: Any) -> Any:
    """A strict-JSON copy: NaN/inf -> None, numpy scalars/arrays -> Python numbers/lists,
    dataclass results -> objects (``json_fields``).

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
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(json_fields(obj))
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
