"""Does a strategy's difference from the baseline survive a change of model?

For a study with several models (`models: [...]`), each model is analysed on its own
(runs paired by seed within a model); this table puts, per budget and strategy, each
model's difference from the baseline (paired t, Holm-adjusted p) side by side and says
whether the direction (lower or higher test loss) and the significance (Holm p < α)
agree across the models.
"""

from __future__ import annotations

import math
from typing import Any

from adaptive_lora.analysis.formatting import fmt_num, fmt_p


def _direction(mean: float) -> str:
    if not math.isfinite(mean) or mean == 0:
        return "none"
    return "lower" if mean < 0 else "higher"


def cross_model_agreement(
    analyses: dict[str, dict[str, Any]], baseline: str, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """One row per budget × strategy that every model ran (the baseline left out)."""
    models = list(analyses)
    budgets = list(dict.fromkeys(b for a in analyses.values() for b in a["budgets"]))
    rows = []
    for budget in budgets:
        blocks = [analyses[m]["budgets"].get(budget) for m in models]
        if any(block is None for block in blocks):
            continue
        shared = [
            label
            for label in blocks[0]["strategies"]
            if label != baseline and all(label in b["comparisons"] for b in blocks)
        ]
        for label in shared:
            per_model = {}
            for model, block in zip(models, blocks):
                c = block["comparisons"][label]
                p = c.p_t_holm
                per_model[model] = {
                    "n": c.n,
                    "mean_diff": c.mean_diff,
                    "ci_t": c.ci_t,
                    "p_t_holm": p,
                    "direction": _direction(c.mean_diff),
                    "significant": bool(math.isfinite(p) and p < alpha),
                }
            values = list(per_model.values())
            rows.append(
                {
                    "budget": budget,
                    "strategy": label,
                    "models": per_model,
                    "direction_agrees": len({v["direction"] for v in values}) == 1,
                    "significance_agrees": len({v["significant"] for v in values}) == 1,
                }
            )
    return rows


def agreement_lines(rows: list[dict[str, Any]], models: list[str], baseline: str) -> list[str]:
    """The agreement table in Markdown, with a sentence that says how to read it."""
    lines = ["## Across models: does the difference from the baseline agree?", ""]
    if not rows:
        return lines + ["No strategy has paired results on every model yet.", ""]
    head = ["budget", "strategy", *(f"`{m}`: Δ [95% CI], p (Holm)" for m in models)]
    lines += [
        "| " + " | ".join(head + ["direction agrees", "significance agrees"]) + " |",
        "|" + "|".join("---" for _ in range(len(head) + 2)) + "|",
    ]
    for row in rows:
        cells = []
        for model in models:
            v = row["models"][model]
            lo, hi = v["ci_t"]
            cells.append(
                f"{fmt_num(v['mean_diff'], 4, plus=True)} [{fmt_num(lo, 4)}, {fmt_num(hi, 4)}], "
                f"p = {fmt_p(v['p_t_holm'])} (n = {v['n']})"
            )
        yes = {True: "yes", False: "**no**"}
        lines.append(
            f"| {row['budget']} | {row['strategy']} | " + " | ".join(cells)
            + f" | {yes[row['direction_agrees']]} | {yes[row['significance_agrees']]} |"
        )  # fmt: skip
    return lines + [
        "",
        f"Δ = strategy − {baseline} in test loss on each model, paired by seed within the "
        "model; p: paired t-test, Holm-corrected within the model and budget. Direction: the "
        "sign of Δ; significance: Holm p < 0.05.",
        "",
    ]
