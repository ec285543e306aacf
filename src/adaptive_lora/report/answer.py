"""The answer in a few lines at the top of the report, read from the analysis alone.

Per budget: which strategies differ from the baseline after Holm correction (two-sided or
as the study declared), which ones differ only nominally (their 95% t interval excludes
0 but Holm's correction does not confirm it: "no strategy beats uniform" would hide
them), which one came closest to beating it, and what the seeds could have detected at
all (the minimum detectable effect of a paired t-test at 80 % power, before and after
the first Holm step, and a Wilcoxon test whose floor after Holm is above alpha). Then
the cross-budget verdict in one line, its margin labelled post hoc when it is. A study
with runs missing says its answer is provisional. Every number comes from `stats.json`'s
blocks, so a README that quotes these lines quotes the report.
"""

from __future__ import annotations

import math
from typing import Any

from adaptive_lora.analysis.comparison import FamilyComparison
from adaptive_lora.analysis.formatting import fmt_g, fmt_num, fmt_p, fmt_sig
from adaptive_lora.analysis.power import POWER, minimum_detectable_d_z
from adaptive_lora.analysis.values import as_float
from adaptive_lora.report.analyse import LOSS_DECIMALS
from adaptive_lora.report.cells import mean_and_ci
from adaptive_lora.report.cross_budget import gain_includes_zero, margin_words, recovery
from adaptive_lora.report.regime import (
    by_decision,
    equivalence_tail,
    gain_text,
    items_tail,
    unit_tail,
)
from adaptive_lora.study.store import DONE


def _improves(comparison: FamilyComparison) -> bool:
    diff = comparison.mean_diff
    return diff < 0 if comparison.lower_is_better else diff > 0


def _effect(label: str, comparison: FamilyComparison) -> str:
    return (
        f"{label} Δ = {mean_and_ci(comparison.mean_diff, comparison.ci_t)}, "
        f"Holm {fmt_p(comparison.p_t_holm, label='p')}, d_z = {fmt_sig(comparison.d_z)}"
    )


def _tested(comparisons: dict[str, FamilyComparison]) -> dict[str, FamilyComparison]:
    """The comparisons with a test: two or more paired seeds and a finite p-value."""
    return {label: c for label, c in comparisons.items() if c.n >= 2 and math.isfinite(c.p_t_holm)}


def _sidedness(tested: dict[str, FamilyComparison]) -> str:
    """The tests' sidedness as the study declared it (two-sided when nothing was)."""
    sides = {c.alternative for c in tested.values()}
    if sides == {"two-sided"}:
        return "two-sided"
    if len(sides) == 1:
        return f"one-sided ({'strategy lower' if sides == {'less'} else 'strategy higher'})"
    return "sidedness as declared per comparison"


def _nominal(tested: dict[str, FamilyComparison]) -> tuple[list[str], list[str]]:
    """Not significant after Holm, but the 95% t interval excludes 0: (gains, losses)."""
    gains, losses = [], []
    for label, c in tested.items():
        lo, hi = c.ci_t
        if c.significant or not (lo > 0 or hi < 0):
            continue
        (gains if _improves(c) else losses).append(label)
    return gains, losses


def _names(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + f" and {labels[-1]}"


def _nominal_words(tested: dict[str, FamilyComparison]) -> str:
    """Which strategies differ nominally, in words ("" when no interval excludes 0)."""
    gains, losses = _nominal(tested)
    parts = []
    if gains:
        parts.append(f"{_names(gains)} show{'s' if len(gains) == 1 else ''} nominal gains")
    if losses:
        parts.append(f"{_names(losses)} show{'s' if len(losses) == 1 else ''} nominal losses")
    if not parts:
        return ""
    return "; ".join(parts) + " (95% t intervals exclude 0, uncorrected)"


def _verdict(baseline: str, budget: str, tested: dict[str, FamilyComparison]) -> str:
    ns = sorted({c.n for c in tested.values()})
    seeds = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    k = len(tested)
    head = (
        f"At {budget} ({k} strateg{'y' if k == 1 else 'ies'} against {baseline}, "
        f"{seeds} paired seeds, paired t-test, {_sidedness(tested)}, Holm-corrected): "
    )
    better = [(label, c) for label, c in tested.items() if c.significant and _improves(c)]
    worse = [(label, c) for label, c in tested.items() if c.significant and not _improves(c)]
    nominal = _nominal_words(tested)
    if not better and not worse:
        return (
            head
            + f"none differs significantly from {baseline} after Holm"
            + (f"; {nominal}." if nominal else "; no 95% t interval excludes 0.")
        )
    parts = []
    if better:
        parts.append(f"better than {baseline}: " + "; ".join(_effect(*e) for e in better))
    if worse:
        parts.append(f"worse than {baseline}: " + "; ".join(_effect(*e) for e in worse))
    rest = k - len(better) - len(worse)
    tail = f"; {rest} other(s) do not differ significantly" if rest else ""
    tail += f" ({nominal})" if rest and nominal else ""
    return head + "; ".join(parts) + tail + "."


def _closest(baseline: str, tested: dict[str, FamilyComparison]) -> str:
    """The strategy with the best mean against the baseline, significant or not."""

    def gain(item: tuple[str, FamilyComparison]) -> float:
        c = item[1]
        return -c.mean_diff if c.lower_is_better else c.mean_diff

    label, comparison = max(tested.items(), key=gain)
    if _improves(comparison):
        return f"Largest mean improvement over {baseline}: {_effect(label, comparison)}."
    return (
        f"Every strategy's mean is worse than {baseline}'s; the smallest gap: "
        f"{_effect(label, comparison)}."
    )


def _detectable(tested: dict[str, FamilyComparison]) -> str:
    """What the seeds could resolve: the MDE in d_z and, through each sd of Δ, in loss."""
    n = min(c.n for c in tested.values())
    alpha = next(iter(tested.values())).alpha
    k = len(tested)
    mde = minimum_detectable_d_z(n, alpha)
    in_loss = [c.mde_metric for c in tested.values() if c.n == n]
    in_loss = [x for x in in_loss if x is not None and math.isfinite(x)]
    text = (
        f"What {n} seeds can resolve: a paired t-test at α = {alpha:g} detects |d_z| ≥ "
        f"{fmt_sig(mde)} with {POWER:.0%} power"
    )
    if in_loss:
        low, high = (fmt_num(x, LOSS_DECIMALS) for x in (min(in_loss), max(in_loss)))
        text += (
            f", here a test-loss difference of about {low if low == high else f'{low} to {high}'}"
            " (|d_z| × the sd of Δ)"
        )
    if k > 1:
        strict = minimum_detectable_d_z(n, alpha / k)
        text += f"; the first Holm step tests at α/{k}, where |d_z| ≥ {fmt_sig(strict)} is needed"
    return text + ". Smaller true differences are likely to go unseen." + _unreachable(tested)


def _unreachable(tested: dict[str, FamilyComparison]) -> str:
    """The Wilcoxon test's floor after Holm, when it keeps every comparison from alpha."""
    stuck = [c for c in tested.values() if not c.can_reach_significance]
    if not stuck:
        return ""
    c = min(stuck, key=lambda c: c.n)
    sided = "two-sided" if c.alternative == "two-sided" else "one-sided"
    m = c.family_size
    holm = f", × {m} comparisons (Holm) = {fmt_g(c.wilcoxon_holm_floor_p)}" if m > 1 else ""
    return (
        f" The {sided} Wilcoxon signed-rank test cannot reach p < {c.alpha:g} here"
        f"{' after Holm' if m > 1 else ''}: with {c.n} seeds its smallest p is "
        f"{fmt_g(c.wilcoxon_floor_p)}{holm}."
    )


def _cross_budget(block: dict[str, Any] | None) -> list[str]:
    if not block:
        return []
    small, large, base = block["small"], block["large"], block["baseline"]
    gain = block["gain"]
    if not gain["n"]:
        return [
            f"- Across budgets: no seed has {base} at both {small} and {large} yet, "
            "so the cross-budget question is still open."
        ]
    if block["margin"] is None:
        return [f"- Across budgets: {base} gains nothing measurable from {small} to {large}."]
    kind = {label: recovery(e, block["margin"]) for label, e in block["strategies"].items()}

    def of_kind(*kinds: str) -> list[str]:  # in the study's order
        return [label for label, k in kind.items() if k in kinds]

    recovered = of_kind("equivalent", "better")
    n = len(block["strategies"])
    line = (
        f"- Across budgets: {base} gains {mean_and_ci(gain['mean'], gain['ci_t'], plus=False)}"
        f" in test loss from {small} to {large} ({gain['n']} paired seeds"
        + ("; the interval includes 0" if gain_includes_zero(gain) else "")
        + f"); {len(recovered)} of {n} strateg{'y' if n == 1 else 'ies'} at {small} shown to "
        f"recover it (equivalent to {base} at {large} within "
        f"{margin_words(block, LOSS_DECIMALS)} by TOST, or better)"
        + (f": {', '.join(_within(label, block) for label in recovered)}." if recovered else ".")
    )
    if worse := of_kind("worse_beyond_margin", "worse"):
        line += f" Worse than {base} at {large} (95% interval above 0, uncorrected): "
        line += f"{', '.join(worse)}."
    if uncertain := of_kind("inconclusive"):
        line += f" Too uncertain to tell: {', '.join(uncertain)}."
    return [line]


def _within(label: str, block: dict[str, Any]) -> str:
    """A recovering strategy, with the tightest margin its TOST data support."""
    x = (block["strategies"][label]["tost"] or {}).get("tightest_margin")
    if isinstance(x, (int, float)) and math.isfinite(x):
        return f"{label} (equivalent within ±{fmt_num(x, LOSS_DECIMALS)})"
    return label


def _ladder_line(baseline: str, ladder: dict[str, Any]) -> str:
    """Whether the baseline's rank binds: its gain per doubling over the study's ladder."""
    budgets = [point["budget"] for point in ladder["ladder"]]
    overall = ladder["gain_per_doubling"].overall
    line = (
        f"- Where rank matters: `{baseline}`'s gain in test loss per doubling of the budget "
        f"over {', '.join(budgets)} is {gain_text(overall)}"
    )
    if not overall.established:
        line += "; until it is, the comparisons below do not show allocation where rank binds"
    return line + "."


def _declared_lines(declared: dict[str, Any] | None) -> list[str]:
    """With fixed seeds, what the study declared, tested: a difference beyond its smallest
    effect (Holm over the cell), and equivalence within its margin (TOST)."""
    lines = []
    for label, tests in (declared or {}).items():
        parts = []
        # `as_float`: a stats.json read back holds null where a test had no p-value.
        if (b := tests.get("beyond")) is not None and math.isfinite(as_float(b["p"])):
            shown = "shown" if b["shown"] else "not shown"
            parts.append(
                f"a difference beyond the declared smallest effect {fmt_g(b['effect'])} is "
                f"{shown} (one-sided paired t = {fmt_sig(b['t'])}, Holm {fmt_p(b['p_holm'], label='p')})"
            )
        if (e := tests.get("tost")) is not None and math.isfinite(as_float(e["p"])):
            verdict = "equivalent" if e["equivalent"] else "not shown equivalent"
            parts.append(
                f"{verdict} within the declared ±{fmt_g(e['margin'])} (TOST "
                f"{fmt_p(e['p'], label='p')}; the data support ±{fmt_num(e['tightest_margin'], 4)})"
            )
        if parts:
            lines.append(f"As declared, {label}: " + "; ".join(parts) + ".")
    return lines


def _design_line(
    baseline: str,
    budget: str,
    comparisons: dict[str, FamilyComparison],
    decisions: dict[str, Any],
) -> str:
    """A sequential study's verdict at one budget: each comparison's decision by its
    declared group-sequential design, with Δ and its 95% t interval at the seeds it ran."""
    parts = [
        f"At {budget}, by the declared group-sequential design ({len(decisions)} "
        f"comparison(s) with `{baseline}`, α split over the cell):"
    ]
    named = [
        (
            f"{label} (Δ {mean_and_ci(c.mean_diff, c.ci_t)}, n = {c.n}{equivalence_tail(d)}"
            f"{items_tail(d['decision'], getattr(c, 'two_level', None))}{unit_tail(d)})",
            d["decision"],
        )
        for label, d in decisions.items()
        for c in [comparisons[label]]
    ]
    for words, found in by_decision(named, baseline):
        parts.append(f"{words[0].upper()}{words[1:]}: {found}.")
    return " ".join(parts)


def answer_lines(baseline: str, analysis: dict[str, Any]) -> list[str]:
    """The report's "Answer" section (empty when nothing could be compared yet). With a
    ladder (the baseline on three budgets or more) it first says whether rank binds; with
    sequential seeds each budget leads with the design's decisions, and the fixed-sample
    tests follow as a description of the seeds run."""
    body: list[str] = []
    if analysis.get("ladder"):
        body.append(_ladder_line(baseline, analysis["ladder"]))
    default = baseline
    for budget, block in analysis["budgets"].items():
        baseline = block.get("baseline") or default  # a budget's own, where it has one
        tested = _tested(block["comparisons"])
        decisions = {
            label: d for label, d in (block.get("sequential") or {}).items() if label in tested
        }
        if decisions:
            body += [f"- {_design_line(baseline, budget, tested, decisions)}"]
            body += [
                "  - Fixed-sample tests at these seeds (they describe the data; the design "
                f"above decides): {_verdict(baseline, budget, tested)}"
            ]
        elif tested:
            body += [f"- {_verdict(baseline, budget, tested)}"]
            body += [f"  - {line}" for line in _declared_lines(block.get("declared_tests"))]
        if tested:
            if not any(c.significant for c in tested.values()):
                body += [f"  - {_closest(baseline, tested)}"]
            body += [f"  - {_detectable(tested)}"]
    if not body:
        return []
    body += _cross_budget(analysis.get("cross_budget"))
    missing = analysis["n_runs"] - analysis["counts"][DONE]
    head = ["## Answer", ""]
    if missing:
        head += [
            f"*Provisional: {missing} of {analysis['n_runs']} runs are missing; these "
            "numbers will change when the study is complete.*",
            "",
        ]
    return head + body + [""]
