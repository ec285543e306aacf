"""The cross-budget question: does a strategy at the smaller budget recover the baseline's gain?

For the study's `cross_budget: {small, large, margin}`: the baseline's gain from `small`
to `large` (paired by seed, with its 95% t interval), and for every strategy at `small`
the paired difference from the baseline at `large` with a TOST (`analysis.equivalence`)
against ±margin. Equivalence within the margin means the strategy at `small` recovers
(all but the margin of) what the baseline gains by doubling its parameters.

The margin should be fixed before the runs (DESIGN.md, "Hypotheses before runs"): the
study's `cross_budget.margin`, else the equivalence margin its `hypotheses` declare.
Without either, the margin is half the baseline's measured gain: computed from the very
runs it then judges, it is **post hoc**, flagged `margin_post_hoc` in stats.json and
labelled so wherever the report uses it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from adaptive_lora.analysis.descriptive import mean_ci_t
from adaptive_lora.analysis.equivalence import tost_paired
from adaptive_lora.analysis.formatting import fmt_num, fmt_p
from adaptive_lora.study.protocol import CrossBudget

LossBySeed = dict[int, float]


def _paired(a: LossBySeed, b: LossBySeed) -> list[float]:
    """a − b over the seeds both have with finite values, in seed order."""
    return [
        a[s] - b[s] for s in sorted(set(a) & set(b)) if math.isfinite(a[s]) and math.isfinite(b[s])
    ]


def _summary(diffs: list[float]) -> dict[str, Any]:
    return {
        "n": len(diffs),
        "mean": float(np.mean(diffs)) if diffs else math.nan,
        "ci_t": mean_ci_t(diffs),
        "values": diffs,
    }


POST_HOC_SOURCE = "post hoc: half of the baseline's measured gain, from these runs"


def _choose_margin(
    spec: CrossBudget, declared: float | None, gain: dict[str, Any]
) -> tuple[float | None, str, bool]:
    """(margin, where it came from, whether it is post hoc)."""
    if spec.margin is not None:
        return spec.margin, "set by the study before its runs", False
    if declared is not None:
        return declared, "declared in the study's hypotheses", False
    margin = 0.5 * gain["mean"] if gain["n"] and gain["mean"] > 0 else None
    return margin, POST_HOC_SOURCE, True


def cross_budget(
    spec: CrossBudget,
    baseline: str,
    losses: dict[str, dict[str, LossBySeed]],
    params: dict[str, dict[str, float]],
    *,
    declared_margin: float | None = None,
) -> dict[str, Any]:
    """The cross-budget block of stats.json.

    `losses[budget][label]` maps seed → test loss of the reported runs; `params[budget]
    [label]` is the mean final trainable (effective) parameter count. `declared_margin`
    is the hypotheses' equivalence margin, used when `cross_budget` sets none.
    """
    small, large = losses.get(spec.small, {}), losses.get(spec.large, {})
    gain = _summary(_paired(small.get(baseline, {}), large.get(baseline, {})))
    margin, margin_source, post_hoc = _choose_margin(spec, declared_margin, gain)
    block: dict[str, Any] = {
        **spec.to_dict(),
        "baseline": baseline,
        "gain": gain,
        "margin": margin,
        "margin_source": margin_source,
        "margin_post_hoc": post_hoc,
        "params_large": params.get(spec.large, {}).get(baseline, math.nan),
        "strategies": {},
    }
    for label, by_seed in small.items():
        if label == baseline:
            continue
        diffs = _paired(by_seed, large.get(baseline, {}))
        entry = _summary(diffs)
        entry["params"] = params.get(spec.small, {}).get(label, math.nan)
        entry["tost"] = tost_paired(diffs, margin) if margin else None
        block["strategies"][label] = entry
    return block


def _params(value: float) -> str:
    return f"{int(round(value)):,}" if math.isfinite(value) else "n/a"


def gain_includes_zero(gain: dict[str, Any]) -> bool:
    """Whether the baseline's measured gain has a 95% interval that includes 0 (the
    gain itself is then not established)."""
    lo, hi = gain["ci_t"]
    return gain["n"] >= 2 and lo <= 0 <= hi


def recovery(entry: dict[str, Any], margin: float) -> str:
    """What a strategy's paired difference from the baseline at the larger budget says.

    "equivalent": TOST within ±margin. Otherwise the 95% interval decides what can be
    said: "better" (all of it below −margin), "worse_beyond_margin" (all of it above
    +margin), "worse" (above 0: the whole gain is not recovered, though part may be),
    "inconclusive" (it reaches past the margin on a side that is not ruled out), or
    "untestable" (fewer than two seeds, or no spread).
    """
    tost = entry["tost"] or {}
    if tost.get("equivalent"):
        return "equivalent"
    if tost.get("equivalent") is None:
        return "untestable"
    lo, hi = entry["ci_t"]
    if hi < -margin:
        return "better"
    if lo > margin:
        return "worse_beyond_margin"
    if lo > 0:
        return "worse"
    return "inconclusive"


def _recovery_words(kind: str, base: str, large: str, params: str) -> str:
    return {
        "equivalent": f"equivalent within the margin: it recovers the {large} result with "
        f"{params} parameters.",
        "better": f"better than {base} at {large} by more than the margin, with {params} "
        "parameters.",
        "worse_beyond_margin": f"worse than {base} at {large} by more than the margin: it "
        f"does not recover the {large} gain.",
        "worse": f"not shown equivalent, and worse than {base} at {large} (interval above 0): "
        f"it does not recover the whole {large} gain.",
        "inconclusive": "not shown equivalent, nor shown worse: the interval is too wide to "
        f"tell whether it recovers the {large} gain.",
        "untestable": "not testable (fewer than two paired seeds, or no spread).",
    }[kind]


def margin_words(block: dict[str, Any], decimals: int = 4) -> str:
    """The margin as text, with "(post hoc)" when it was computed from the outcomes."""
    text = f"±{fmt_num(block['margin'], decimals)}"
    return text + (" (post hoc)" if block.get("margin_post_hoc") else "")


def margin_sentence(block: dict[str, Any], decimals: int = 4) -> str:
    """Where the margin came from; a post-hoc one says what that means for the TOST."""
    text = f"Equivalence margin ±{fmt_num(block['margin'], decimals)} ({block['margin_source']})."
    if block.get("margin_post_hoc"):
        text = (
            f"Equivalence margin ±{fmt_num(block['margin'], decimals)} (half of the "
            "baseline's measured gain), **post hoc**: computed from the same runs it is "
            "tested against; the study declared no margin before its runs "
            "(`cross_budget.margin` or `hypotheses.margin`), so these TOSTs are descriptive, "
            "not a pre-registered test."
        )
    return text


def verdict_lines(block: dict[str, Any], decimals: int = 4) -> list[str]:
    """The cross-budget answer in words, one line per strategy."""
    small, large, base = block["small"], block["large"], block["baseline"]
    gain = block["gain"]
    lo, hi = gain["ci_t"]
    lines = [
        f"{base} gains {fmt_num(gain['mean'], decimals)} in test loss from {small} to "
        f"{large} ({small} − {large}, 95% CI [{fmt_num(lo, decimals)}, "
        f"{fmt_num(hi, decimals)}], {gain['n']} paired seeds)"
        + (
            "; the interval includes 0: the gain itself is not established."
            if gain_includes_zero(gain)
            else "."
        )  # fmt: skip
    ]
    if not gain["n"]:
        lines.append(
            f"No seed has {base} at both {small} and {large} yet: the question is still open."
        )
        return lines
    if block["margin"] is None:
        lines.append(
            f"{base} gains nothing measurable from {small} to {large}, so there is no gain to "
            "recover and no positive equivalence margin: the question does not arise."
        )
        return lines
    lines.append(margin_sentence(block, decimals))
    for label, entry in block["strategies"].items():
        tost = entry["tost"] or {}
        lo, hi = entry["ci_t"]
        head = (
            f"**{label}** at {small} ({_params(entry['params'])} parameters) vs {base} at "
            f"{large} ({_params(block['params_large'])}): Δ = "
            f"{fmt_num(entry['mean'], decimals, plus=True)} [{fmt_num(lo, decimals)}, "
            f"{fmt_num(hi, decimals)}], TOST p = {fmt_p(tost.get('p', math.nan))}"
        )
        kind = recovery(entry, block["margin"])
        words = _recovery_words(kind, base, large, _params(entry["params"]))
        lines.append(f"{head} — {words}{tightest_words(tost, decimals)}")
    return lines


def tightest_words(tost: dict[str, Any], decimals: int = 4) -> str:
    """Beside a TOST verdict: the tightest margin its data support (nothing when the
    TOST could not be computed, or the stats predate the number)."""
    x = tost.get("tightest_margin")
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return ""
    return f" Tightest margin the data support: equivalent within ±{fmt_num(x, decimals)}."
