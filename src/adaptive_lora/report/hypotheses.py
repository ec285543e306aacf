"""The report's first section: what the study declared before its runs, and its seed plan.

DESIGN.md, "Hypotheses before runs": sidedness, the Holm family, the smallest effect of
interest and the equivalence margin are fixed in the study file before the runs they
concern, so a reader sees them before any result. A study that declared nothing gets
the defaults, said as such; a sequential study also gets, per cell, where each
comparison stopped and why (`sequential_lines`).
"""

from __future__ import annotations

from typing import Any

from adaptive_lora.analysis.formatting import fmt_g
from adaptive_lora.study.hypotheses import UNIT_WORDS

NONE_DECLARED = "None declared: two-sided, Holm within each cell, no margin."

_ALTERNATIVE_WORDS = {
    "two-sided": "two-sided (strategy − {base} ≠ 0)",
    "less": "one-sided, strategy − {base} < 0 (the strategy lowers the metric)",
    "greater": "one-sided, strategy − {base} > 0 (the strategy raises the metric)",
}
_SPENDING = {"obrien-fleming": "O'Brien–Fleming", "pocock": "Pocock"}


def _number(value: float | None, what: str) -> str:
    return f"{what} {fmt_g(value)}" if value is not None else f"no {what}"


def _declared_lines(block: dict[str, Any], baseline: str) -> list[str]:
    # The study's own words on when it declared them: "before any run", or not.
    when = block.get("declared") or "when: not stated"
    metric = str(block.get("metric", "test_loss")).replace("_", " ")
    lines = [
        f"Declared in the study file ({when}), in {metric} units:",
        "",
        f"- **Alternative:** {_ALTERNATIVE_WORDS[block['alternative']].format(base=baseline)}.",
        "- **Holm family:** the comparisons of one cell (model × task × size × budget).",
        f"- **Smallest effect of interest:** "
        f"{fmt_g(block['smallest_effect']) if block.get('smallest_effect') else 'none'}.",
        f"- **Equivalence margin (TOST):** "
        f"{'±' + fmt_g(block['margin']) if block.get('margin') else 'none'}.",
    ]
    if block.get("unit"):
        lines.append(
            f"- **Inference unit:** {UNIT_WORDS.get(block['unit'], block['unit'])} (a "
            "sequential decision generalises over "
            f"{'seeds on these test items' if block['unit'] == 'seeds' else 'seeds and test items'})."
        )
    for label, own in (block.get("comparisons") or {}).items():
        parts = [f"{key.replace('_', ' ')} {fmt_g(v) if isinstance(v, float) else v}"
                 for key, v in own.items()]  # fmt: skip
        lines.append(f"- **{label}** declares its own: {', '.join(parts)}.")
    return lines


def _seed_plan_lines(plan: dict[str, Any] | None) -> list[str]:
    if not plan:
        return []
    looks = ", ".join(str(n) for n in plan["looks"])
    return [
        f"- **Seeds, sequential:** up to {plan['max']} reporting seeds from seed "
        f"{plan['start']}, looked at after {looks} seeds; "
        f"{_SPENDING.get(plan['spending'], plan['spending'])} α-spending (Lan–DeMets) at "
        "α / m for the m comparisons of a cell. A comparison stops at the first look that "
        "decides it and gets no more seeds.",
    ]


def hypotheses_lines(block: dict[str, Any] | None, baseline: str) -> list[str]:
    """The "Hypotheses" section (printed before the answer)."""
    block = block or {"given": False}
    lines = ["## Hypotheses", ""]
    if block.get("given"):
        lines += _declared_lines(block, baseline)
    else:
        lines += [
            f"{NONE_DECLARED} The study file has no `hypotheses` section, so every test "
            "is two-sided, Holm corrects the comparisons of each budget together, no "
            "smallest effect of interest is set and no equivalence margin was fixed before "
            "the runs (a cross-budget margin, if any, is then post hoc and labelled so).",
        ]
    lines += _seed_plan_lines(block.get("seed_plan"))
    return lines + [""]


def _unit_words(decided: dict[str, Any]) -> str:
    """The inference unit a decision was judged in, and the other unit's where it differs."""
    unit = decided.get("unit")
    if unit is None:
        return ""
    other = decided.get("other_unit_decision")
    text = f"; unit: {UNIT_WORDS.get(unit, unit)}"
    if other:
        text += f" (by {'seeds × items' if unit == 'seeds' else 'seeds alone'}: {other})"
    return text


def sequential_lines(study_baseline: str, decisions: dict[str, dict[str, Any]]) -> list[str]:
    """One cell's sequential decisions: the decision, the look it stopped at, and why."""
    if not decisions:
        return []
    lines = [
        "Sequential seeds in this cell (group-sequential design: a comparison stops at the "
        "first look that decides it; the fixed-sample tests above describe the seeds it "
        "ran, the decision below is the design's):",
        "",
        "| comparison | decision | stopped at | reason |",
        "|---|---|---|---|",
    ]
    for label, d in decisions.items():
        where = (
            f"look {d['look'] + 1} ({d['n']} seeds)"
            if d["stopped"] and d["look"] is not None
            else "open"
        )
        reason = (str(d["reason"]) + _unit_words(d)).replace("|", "\\|")
        lines.append(f"| {label} vs {study_baseline} | {d['decision']} | {where} | {reason} |")
    return lines + [""]
