"""Does a replication agree with the study it replicates?

Two studies that must not be pooled (another model, another CPU family: DESIGN.md) are
compared only through what each concluded on its own. Cells are matched by their data
settings and budget (the model may differ: that is what a replication on another model
changes); per strategy against the same baseline, each study's paired Δ with its
interval and its decision: its declared group-sequential design's where it has one,
else the direction of a Holm-corrected fixed-sample test. A comparison agrees when both
studies reached the same decision. The baselines' ladders stand beside it — test loss
per budget, the gain per doubling per step and over each study's own ladder — so a reader
sees whether rank binds in both; two studies of the baseline alone (the same cells run
again on another CPU family) meet through their ladders only.
"""

from __future__ import annotations

from typing import Any

from adaptive_lora.analysis.formatting import fmt_num
from adaptive_lora.report.cells import mean_and_ci
from adaptive_lora.report.regime import equivalence_tail, gain_text
from adaptive_lora.report.same_runs import same_runs_lines, same_runs_summary

# A sequential decision in a table cell (regime.DECISION_WORDS has the sentences).
SHORT = {
    "superior": "beats",
    "equivalent": "equivalent",
    "inferior": "loses",
    "futile": "futile",
    "inconclusive": "inconclusive",
    "continue": "open",
}


def decision_word(cell: dict[str, Any]) -> str:
    """What a study concluded on one comparison (a `regime.heatmap_cells` entry)."""
    if cell.get("decision"):
        return SHORT.get(cell["decision"], cell["decision"])
    if not cell["significant"]:
        return "no difference (Holm)"
    return "beats (Holm)" if cell["mean_diff"] < 0 else "loses (Holm)"


def _within(word: str, cell: dict[str, Any]) -> str:
    """A decision in a table; an equivalence as "equivalent within ±x", x the tightest
    margin its data support."""
    tail = equivalence_tail(cell)
    return tail.removeprefix("; ") if tail else word


def matched_groups(here: Any, there: Any) -> list[tuple[str, str]]:
    """(this study's group key, the other's) for every pair of groups whose data settings
    are equal: the same source, options, sizes, template and data seed."""
    return [
        (mine.key, theirs.key)
        for mine in here.groups
        for theirs in there.groups
        if mine.sections.get("data") == theirs.sections.get("data")
    ]


def compare_studies(
    name: str,
    pairs: list[tuple[str, str]],
    here: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    there: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> dict[str, Any]:
    """Side by side: `here` and `there` are each study's (regime, cells) as
    `regime.regime_map` and `regime.heatmap_cells` give them."""
    (here_regime, here_cells), (there_regime, there_cells) = here, there
    theirs = {(c["group"], c["budget"], c["strategy"]): c for c in there_cells}
    rows = []
    for mine_key, their_key in pairs:
        for cell in here_cells:
            other = theirs.get((their_key, cell["budget"], cell["strategy"]))
            if cell["group"] != mine_key or other is None:
                continue
            words = decision_word(cell), decision_word(other)
            rows.append({"here": cell, "there": other, "decisions": list(words),
                         "agree": words[0] == words[1]})  # fmt: skip

    # Each baseline's ladder: its budgets, test loss and gain per doubling per step, and
    # the gain over the ladder; one mapping per study, since the two studies' group keys
    # may be equal.
    def gains(regime: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            entry["group"]: {
                "budgets": [point["budget"] for point in entry["ladder"]],
                "gain": entry["gain_per_doubling"].overall,
                "points": _points(entry),
            }
            for entry in regime
        }

    mine_gains, their_gains = gains(here_regime), gains(there_regime)
    return {
        "study": name,
        "groups": [list(pair) for pair in pairs],
        "ladders": [[mine_gains.get(a), their_gains.get(b)] for a, b in pairs],
        "rows": rows,
    }


def _points(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A ladder's budgets with the baseline's test loss and the gain per doubling of the
    step that reaches each (none at the foot)."""
    steps = {step.to: step for step in entry["gain_per_doubling"].steps}
    return [
        {
            "budget": point["budget"],
            "lr": point.get("lr"),
            "test_loss": {key: point["test_loss"][key] for key in ("mean", "ci_t", "n")},
            "step": steps.get(point["budget"]),
        }
        for point in entry["ladder"]
    ]


def _loss(point: dict[str, Any] | None) -> str:
    if point is None:
        return "—"
    loss = point["test_loss"]
    rate = f", lr {point['lr']:g}" if point.get("lr") is not None else ""
    return f"{mean_and_ci(loss['mean'], loss['ci_t'], plus=False)} (n = {loss['n']}{rate})"


def _step(point: dict[str, Any] | None) -> str:
    return gain_text(point["step"]) if point and point["step"] else "—"


def ladder_table(comparison: dict[str, Any], baseline: str, mark: str = "") -> list[str]:
    """The baseline's test loss per budget in each matched cell, here and there (with the
    rate each chose), and the gain per doubling of the step that reaches it: set beside
    each other, never pooled (`mark`: the other side ran on another CPU family)."""
    name = comparison["study"]
    lines = [
        f"| cell | budget | `{baseline}` test loss here | gain per doubling to here | "
        f"in `{name}`{mark} | gain per doubling to here, there{mark} |",
        "|---|---|---|---|---|---|",
    ]
    for (mine, _), ladders in zip(comparison["groups"], comparison["ladders"]):
        here, there = ({p["budget"]: p for p in (e or {}).get("points", [])} for e in ladders)
        cell = mine.replace("|", "\\|")  # a group key's "|" would end the table cell
        for budget in _merged(list(here), list(there)):
            a, b = here.get(budget), there.get(budget)
            lines.append(
                f"| `{cell}` | {budget} | {_loss(a)} | {_step(a)} | {_loss(b)} | {_step(b)} |"
            )
    return lines


def _merged(first: list[str], second: list[str]) -> list[str]:
    """Both ladders' budgets in one order that keeps each ladder's own (smallest first):
    a budget only the second has goes right before the next one it has that is placed,
    else last."""
    order = list(first)
    for i, budget in enumerate(second):
        if budget in order:
            continue
        after = next((b for b in second[i + 1 :] if b in order), None)
        order.insert(order.index(after) if after else len(order), budget)
    return order


def _delta(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci_t"]
    return (
        f"{fmt_num(cell['mean_diff'], 4, plus=True)} [{fmt_num(lo, 4)}, {fmt_num(hi, 4)}] "
        f"(n = {cell['n']})"
    )


def summary_line(comparison: dict[str, Any]) -> str:
    """One sentence: how many comparisons agree, and which; how far apart the runs both
    studies hold are."""
    return _decisions_summary(comparison) + same_runs_summary(comparison.get("same_runs"))


def _decisions_summary(comparison: dict[str, Any]) -> str:
    rows = comparison["rows"]
    if not rows:
        text = f"no comparison in common with `{comparison['study']}`"
        if comparison["groups"]:
            text += f"; the baseline's ladders side by side in {len(comparison['groups'])} cell(s)"
        return text
    same = [r["here"]["strategy"] for r in rows if r["agree"]]
    differ = [
        f"{r['here']['strategy']} ({r['decisions'][0]} here, {r['decisions'][1]} there)"
        for r in rows
        if not r["agree"]
    ]
    text = f"agree on {len(same)} of {len(rows)} comparisons"
    if same:
        text += f" ({', '.join(same)})"
    return text + (f"; differ on {', '.join(differ)}" if differ else "")


CROSS = "†"  # marks a comparison whose two sides ran on different CPU families


def crosses_families(comparison: dict[str, Any]) -> bool:
    here, there = comparison.get("families") or ([], [])
    return bool(here and there and set(here) != set(there))


def _family_lines(comparison: dict[str, Any]) -> list[str]:
    """What a mark † means here: the two sides ran on different CPU families, and how far
    the machine alone moves a test loss (the same runs on both, where there are any)."""
    if not crosses_families(comparison):
        return []
    here, there = (", ".join(f) for f in comparison["families"])
    text = (
        f"{CROSS} **Across CPU families**: this study ran on {here}, `{comparison['study']}` "
        f"on {there}. bf16 sums differ between families by about the size of the effects "
        "studied, so a difference between a number here and one there is partly the machine's"
    )
    same = comparison.get("same_runs") or {}
    loss = (same.get("metrics") or {}).get("test_loss")
    if loss:
        text += (
            f": the {loss['n']} run(s) of the same id in both moved test loss by sd "
            f"{fmt_num(loss['sd'], 4)} (largest {fmt_num(loss['max_abs'], 4)}; the table of "
            "the same runs below)."
        )
    else:
        text += "; no run of the same id is in both, so that spread is not measured here."
    return [text, ""]


def against_lines(comparison: dict[str, Any] | None, baseline: str) -> list[str]:
    """The report's section on the other study (none without `--against`)."""
    if comparison is None:
        return []
    name = comparison["study"]
    mark = CROSS if crosses_families(comparison) else ""
    lines = [
        f"## Against `{name}`",
        "",
        f"This study's decisions beside those of `{name}` in the cells both ran: the same "
        "data settings and budget (the model and the machine may differ). The runs of the "
        "two studies are never pooled; each Δ is paired by seed within its own study, and "
        "each decision is its own study's (its declared sequential design, else a "
        "Holm-corrected fixed-sample test).",
        "",
    ]
    if not comparison["groups"]:
        return lines + [
            "The two studies have no cell in common.",
            "",
            *same_runs_lines(comparison.get("same_runs"), name),
        ]
    for (mine, theirs), (here_ladder, there_ladder) in zip(
        comparison["groups"], comparison["ladders"]
    ):
        lines.append(f"- Cell `{mine}` here, `{theirs}` there.")
        for who, entry in (("here", here_ladder), ("there", there_ladder)):
            if entry and entry["gain"].n:
                budgets = ", ".join(entry["budgets"])
                gain = gain_text(entry["gain"])
                lines.append(f"  - `{baseline}`'s gain per doubling {who} ({budgets}): {gain}")
    lines += ["", *ladder_table(comparison, baseline, mark), "", *_family_lines(comparison)]
    same = same_runs_lines(comparison.get("same_runs"), name)
    if not comparison["rows"]:
        return lines + [
            f"No strategy other than `{baseline}` ran in both studies' matched cells: they "
            "meet through their baselines' ladders only, each paired by seed within its own "
            "study.",
            "",
            *same,
        ]
    lines += [
        f"| budget | strategy | Δ test loss here [95% CI] | decision here | Δ in `{name}`{mark} [95% CI] | decision there | agree |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        here, there = row["here"], row["there"]
        lines.append(
            f"| {here['budget']} | {here['strategy']} | {_delta(here)} | "
            f"{_within(row['decisions'][0], here)} | {_delta(there)} | "
            f"{_within(row['decisions'][1], there)} | {'yes' if row['agree'] else '**no**'} |"
        )
    summary = _decisions_summary(comparison)
    return lines + [
        "",
        f"Δ = strategy − `{baseline}` (lower is better). This study and `{name}` {summary}.",
        "",
        *same,
    ]
