"""The tests a study with fixed seeds declared: a difference beyond its smallest effect of
interest, and equivalence within its margin.

A study with sequential seeds applies both in its decisions (`sequential`). A study with
fixed seeds declares them too, and the plain one-sided test against 0 answers neither: a
difference can be below 0 and not below −δ. Beyond δ is the one-sided paired t of the
differences shifted by δ (alternative `less`: H0 mean ≥ −δ, t = (d̄ + δ)/se; `greater`:
H0 mean ≤ δ, t = (d̄ − δ)/se), Holm-corrected over the cell's comparisons as the test
against 0 is; a two-sided study has no direction to shift, so it gets no such test.
Equivalence is TOST within ±margin (`equivalence.tost_paired`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from adaptive_lora.analysis.corrections import holm
from adaptive_lora.analysis.equivalence import tost_paired

NAN = float("nan")


def beyond_effect(diffs: Sequence[float], effect: float, alternative: str) -> dict[str, Any]:
    """One-sided paired t of `diffs` against −`effect` (`less`) or +`effect` (`greater`)."""
    if alternative not in ("less", "greater"):
        raise ValueError(f"a shifted one-sided test needs less or greater, not {alternative!r}")
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "effect": float(effect), "t": NAN, "p": NAN}
    if n < 2:
        return out
    mean = float(np.mean(diffs))
    se = float(np.std(diffs, ddof=1)) / math.sqrt(n)  # as `tost_paired` has it
    if se == 0:
        return out
    if alternative == "less":
        t = (mean + effect) / se
        p = stats.t.cdf(t, n - 1)
    else:
        t = (mean - effect) / se
        p = stats.t.sf(t, n - 1)
    out.update(t=float(t), p=float(p))
    return out


def declared_tests(
    diffs: dict[str, list[float]],
    declared: dict[str, tuple[str, float | None, float | None]],
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Per comparison (label → its paired differences; `declared`: label → its alternative,
    smallest effect and margin): `beyond` (the shifted test, its Holm p over the comparisons
    that have one, `shown` when that p < α; None without a smallest effect or with a
    two-sided alternative) and `tost` (None without a margin)."""
    out: dict[str, dict[str, Any]] = {}
    for label, d in diffs.items():
        side, effect, margin = declared[label]
        out[label] = {
            "beyond": beyond_effect(d, effect, side)
            if effect and side in ("less", "greater")
            else None,
            "tost": tost_paired(d, margin, alpha) if margin else None,
        }
    shifted = [e["beyond"] for e in out.values() if e["beyond"] is not None]
    finite = [b for b in shifted if math.isfinite(b["p"])]
    for b, p_holm in zip(finite, holm([b["p"] for b in finite]), strict=True):
        b["p_holm"] = p_holm
        b["shown"] = bool(p_holm < alpha)
    for b in shifted:
        b.setdefault("p_holm", NAN)
        b.setdefault("shown", None)
    return out
