"""Numbers as text for reports and verdicts: fixed decimals, significant figures, p-values.

Rounds half up (``decimal``), writes a typographic minus (``MINUS``, U+2212) and "n/a"
for NaN/None.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from adaptive_lora.analysis.values import is_nan

__all__ = ["MINUS", "fmt_g", "fmt_num", "fmt_p", "fmt_sig", "metric_decimals"]

MINUS = "\u2212"  # typographic minus sign used in verdict sentences


def _round_half_up(x: float, decimals: int) -> str:
    q = Decimal(1).scaleb(-decimals)
    return str(Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP))


def _sig_decimals(x: float, sig: int) -> int:
    if x == 0 or not math.isfinite(x):
        return max(0, sig - 1)
    return max(0, sig - 1 - math.floor(math.log10(abs(x)) + 1e-9))


def fmt_num(x: Any, decimals: int = 3, *, plus: bool = False, unicode_minus: bool = True) -> str:
    """A number with fixed decimals, a typographic minus (U+2212) and "n/a" for NaN/None.

    ``plus=True`` writes a leading "+" on positive numbers. Rounds half up.
    """
    if is_nan(x) or math.isnan(float(x)):
        return "n/a"
    if math.isinf(float(x)):
        return ((MINUS if unicode_minus else "-") + "inf") if float(x) < 0 else "inf"
    s = _round_half_up(float(x), decimals)
    if s.startswith("-"):
        body = s[1:]
        if float(body) == 0:  # "-0.000" -> "0.000"
            return body
        return (MINUS if unicode_minus else "-") + body
    return ("+" + s) if (plus and float(s) != 0) else s


def fmt_sig(x: Any, sig: int = 2, *, unicode_minus: bool = True) -> str:
    """A number to ``sig`` significant figures (at least), e.g. d_z: 1.2, 0.35, 12."""
    if is_nan(x) or not math.isfinite(float(x)):
        return fmt_num(x, unicode_minus=unicode_minus)
    return fmt_num(float(x), _sig_decimals(float(x), sig), unicode_minus=unicode_minus)


def fmt_p(p: Any, *, alpha: float = 0.05, label: str | None = None) -> str:
    """A p-value for prose and tables: two significant figures, "< 0.001" below 0.001.

    If rounding to two figures would move p across ``alpha`` (0.0496 -> "0.050"), three
    figures are written instead ("0.0496"), so the text never contradicts the decision.
    NaN/None gives "n/a". With ``label="p"`` the result reads "p = 0.43" / "p < 0.001".
    """
    if is_nan(p):
        s = "n/a"
        return f"{label} = {s}" if label else s
    p = float(p)
    if p < 0.001:
        s = "< 0.001"
        return f"{label} {s}" if label else s
    s = _round_half_up(p, _sig_decimals(p, 2))
    if (float(s) < alpha) != (p < alpha):
        s = _round_half_up(p, _sig_decimals(p, 3))
    return f"{label} = {s}" if label else s


def fmt_g(x: float) -> str:
    """``f"{x:g}"``: the shortest plain form, for alpha levels and p-value floors."""
    return f"{x:g}"


def metric_decimals(*values: float) -> int:
    """Decimals that show two significant figures of the largest finite |value| (3 if none)."""
    finite = [abs(v) for v in values if not is_nan(v) and math.isfinite(v)]
    scale = max(finite) if finite else 0.0
    if scale == 0:
        return 3
    return min(10, max(0, 1 - math.floor(math.log10(scale) + 1e-9)))
