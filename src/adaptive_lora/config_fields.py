"""Typed config fields: a help text per field, and the builder that checks a YAML mapping
against a dataclass (unknown keys and wrong types as one line naming the key).

`config.py` declares a run's sections with these; `study/schema.py` the top level of a
study file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field, fields
from typing import Any, get_type_hints

from adaptive_lora.errors import UserError


def help_field(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with its help text (`metadata["help"]`)."""
    if "default_factory" in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text})


def coerce(value: Any, hint: Any, where: str, *, exact: bool = False) -> Any:
    """Check a YAML/CLI value against a field's type, converting int → float where harmless.

    Without `exact`, a number is taken for a string and a comma list for a list (what a
    command line gives); with it, only the shape the type names (what a file gives).
    """
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise UserError(f"{where} may not be empty")
    if hint is bool or text == "bool":
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {value!r}")
    if hint is float or text.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where} must be a number, got {value!r}")
    if hint is int or text.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where} must be an integer, got {value!r}")
    if hint is str or text.startswith("str"):
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and not exact:
            return str(value)
        raise UserError(f"{where} must be a string, got {value!r}")
    if text.startswith("dict"):
        if isinstance(value, dict):
            return dict(value)
        raise UserError(f"{where} must be a mapping, got {value!r}")
    if text.startswith("list"):
        if isinstance(value, str) and not exact:
            return [v for v in value.split(",") if v]
        if isinstance(value, list):
            return list(value)
        raise UserError(f"{where} must be a list, got {value!r}")
    return value


def build_typed(cls: type, raw: dict[str, Any], prefix: str, *, exact: bool = False) -> Any:
    """An instance of the dataclass `cls` from a mapping, nested sections built in turn."""
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known in {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}"
        )
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = build_typed(hint, raw[f.name], prefix + f.name + ".", exact=exact)
        else:
            values[f.name] = coerce(raw[f.name], hint, prefix + f.name, exact=exact)
    return cls(**values)
