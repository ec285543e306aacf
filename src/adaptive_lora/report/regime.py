"""Where does rank matter? The baseline over the budget ladder, per model × task × size.

A comparison of allocations says something only where the baseline's own rank binds
(DESIGN.md, "Rank must matter before allocation can"). Per group this module reads
the baseline's test loss (and task accuracy) at every budget from the group's
analysis, and its *gain per doubling* of the parameter budget, per step and over the
ladder, paired by seed (`analysis/ladder.py`).

A gain is *established* when its interval lies above 0. The heatmap's cells are every
strategy's paired Δ against the baseline per group × budget, marked by Holm-corrected
significance within its cell (the comparisons' own family).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptive_lora.analysis.formatting import fmt_num, fmt_p
from adaptive_lora.analysis.ladder import (
    GainInterval,
    GainPerDoubling,
    GainStep,
    gain_per_doubling,
    read_gain,
)
from adaptive_lora.evaluation_metrics import PRIMARY_METRIC as PRIMARY
from adaptive_lora.report.cells import figure_lines, mean_and_ci


def _baseline_series(analysis: dict[str, Any], baseline: str) -> list[dict[str, Any]]:
    """The baseline's budgets in order of parameters, with its per-seed test losses."""
    series = []
    for budget, block in analysis["budgets"].items():
        entry = block["strategies"].get(baseline)
        if not entry or not entry[PRIMARY]["values"]:
            continue
        accuracy = {
            key: sec["summary"][baseline]
            for key, sec in block.get("secondary", {}).items()
            if key != "val_loss" and baseline in sec["summary"]
        }
        series.append(
            {
                "budget": budget,
                "params": entry["effective_params"]["mean"],
                "lr": entry.get("lr"),  # the chosen rate (tuned per budget, or the only one)
                "lr_edge": entry.get("lr_edge", ""),  # at an end of the grid it was tuned over
                "test_loss": entry[PRIMARY],
                "metrics": accuracy,
            }
        )
    return sorted(series, key=lambda s: s["params"])


def _gain(entry: dict[str, Any]) -> GainPerDoubling:
    """A regime entry's gain per doubling, computed or read back from stats.json."""
    return read_gain(entry["gain_per_doubling"])


def regime_map(
    analyses: dict[str, dict[str, Any]], titles: dict[str, str], baseline: str
) -> list[dict[str, Any]]:
    """One entry per group: the baseline's ladder and its gain per doubling."""
    out = []
    for key, analysis in analyses.items():
        series = _baseline_series(analysis, baseline)
        out.append({"group": key, "title": titles[key], "ladder": series,
                    "gain_per_doubling": gain_per_doubling(series)})  # fmt: skip
    return out


def heatmap_cells(
    analyses: dict[str, dict[str, Any]], titles: dict[str, str], baseline: str
) -> list[dict[str, Any]]:
    """Every strategy's test-loss Δ against the baseline per group × budget."""
    cells = []
    for key, analysis in analyses.items():
        for budget, block in analysis["budgets"].items():
            decisions = block.get("sequential") or {}
            here = block.get("baseline") or baseline  # a budget's own, where it has one
            for label, c in block.get("comparisons", {}).items():
                if label == here:
                    continue
                decided = decisions.get(label) or {}
                cells.append(
                    {"group": key, "title": titles[key], "budget": budget, "strategy": label,
                     "n": c.n, "mean_diff": c.mean_diff, "ci_t": c.ci_t, "d_z": c.d_z,
                     "p_t_holm": c.p_t_holm, "significant": c.significant,
                     "decision": decided.get("decision"),
                     "tightest_margin": decided.get("tightest_margin"),
                     "unit": decided.get("unit"),
                     "other_unit_decision": decided.get("other_unit_decision"),
                     "two_level": getattr(c, "two_level", None),
                     **({"baseline": here} if here != baseline else {})}
                )  # fmt: skip
    return cells


LADDER_TITLE = "The baseline over the budget ladder: per-seed test loss, mean and 95% t interval"
HEATMAP_TITLE = "Every strategy against the baseline, per cell (the Δ table as a heatmap)"


def regime_lines(
    regime: list[dict[str, Any]],
    cells: list[dict[str, Any]],
    baseline: str,
    figures: Sequence[Path] = (),
    out_dir: Path | None = None,
) -> list[str]:
    """The regime section in Markdown: the ladder table, then the Δ table, each followed
    by its figure where `figures` (under `out_dir`) hold it."""
    drawn = {png.stem: png for png in figures if png.suffix == ".png"}

    def embed(stem: str, title: str) -> list[str]:
        return figure_lines(title, drawn[stem], out_dir) if stem in drawn and out_dir else []

    return [
        *ladder_lines(regime, baseline),
        *embed("regime_ladder", LADDER_TITLE),
        *delta_lines(cells, baseline),
        *embed("regime_heatmap", HEATMAP_TITLE),
    ]


def ladder_lines(regime: list[dict[str, Any]], baseline: str) -> list[str]:
    """ "Where does rank matter?": the baseline's ladder per group, and its gain per doubling
    per step and over the ladder (a single-group study's report has one group)."""
    lines = [
        "## Where does rank matter?",
        "",
        f"The baseline (`{baseline}`) over the budget ladder in each model × task × size. "
        "Gain per doubling: the fall in test loss per doubling of the parameter budget, "
        "paired by seed (per step, and the least-squares slope over the whole ladder); "
        "**established** when its 95% t interval lies above 0.",
        "",
        "| group | budget | parameters | test loss [95% CI] | task metrics | gain per doubling to here [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for entry in regime:
        steps = {s.to: s for s in _gain(entry).steps}
        for point in entry["ladder"]:
            loss = point["test_loss"]
            metrics = "; ".join(
                f"{name} {fmt_num(m['mean'], 3)}" for name, m in point["metrics"].items()
            )
            step = steps.get(point["budget"])
            gain = gain_text(step) if step else "—"
            lines.append(
                f"| {entry['title']} | {point['budget']}{_edge_mark(point)} | "
                f"{int(round(point['params'])):,} | "
                f"{mean_and_ci(loss['mean'], loss['ci_t'], plus=False)} (n = {loss['n']}) | "
                f"{metrics or '—'} | {gain} |"
            )
    lines += ["", "Over the whole ladder:", ""]
    for entry in regime:
        lines.append(f"- {entry['title']}: {gain_text(_gain(entry).overall)}")
    return lines + [""]


def _edge_mark(point: dict[str, Any]) -> str:
    """Beside a ladder budget whose tuned rate is an end of its grid: the ladder's loss
    there may be the grid's, not the budget's."""
    edge = point.get("lr_edge") or ""
    return (
        f" (rate {point['lr']:g}, {'top' if edge == 'largest' else 'bottom'} of grid)"
        if edge
        else ""
    )


def gain_text(gain: GainInterval | GainStep) -> str:
    if not gain.n:
        return "no paired seeds yet"
    verdict = "**established**" if gain.established else "not established"
    return f"{mean_and_ci(gain.mean, gain.ci_t)} (n = {gain.n}), {verdict}"


def delta_lines(cells: list[dict[str, Any]], baseline: str) -> list[str]:
    lines = ["### Every strategy against the baseline, per cell", ""]
    if not cells:
        return lines + ["No strategy other than the baseline has paired results yet.", ""]
    lines += [
        "| group | budget | strategy | Δ test loss [95% CI] | d_z | p (Holm, in its cell) |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        lo, hi = c["ci_t"]
        mark = " *" if c["significant"] else ""
        lines.append(
            f"| {c['title']} | {c['budget']} | {c['strategy']} | "
            f"{fmt_num(c['mean_diff'], 4, plus=True)} [{fmt_num(lo, 4)}, {fmt_num(hi, 4)}]{mark} | "
            f"{fmt_num(c['d_z'], 2)} | {fmt_p(c['p_t_holm'])} (n = {c['n']}) |"
        )
    return lines + [
        "",
        f"Δ = strategy − {baseline} (lower is better), paired by seed; * Holm p < 0.05 within "
        f"the cell's family. {heatmap_colour(cells)[2]}",
        "",
    ]


def heatmap_colour(cells: list[dict[str, Any]]) -> tuple[str, str, str]:
    """What the heatmap's colour encodes: (the cells' key it draws, its colour bar's label,
    the report's sentence). Always Δ in the loss's own units: coloured by d_z, a tiny Δ
    with a small sd (−0.0005) looked a deeper win than a loss four times its size."""
    sentence = (
        "The heatmap colours each cell by its Δ in test-loss units (red: worse, blue: "
        "better; one scale for every cell) and writes the Δ in it"
    )
    if any(c.get("decision") for c in cells):
        sentence += (
            ", with the design's sequential decision under it (better, worse, equiv., "
            "futile, open)."
        )
    else:
        sentence += ", starred where Holm p < 0.05 in its cell's fixed-sample family."
    return "mean_diff", "Δ test loss (strategy − baseline); red: worse", sentence


# The design's decision under a cell's Δ: what the study concluded, in a word.
CELL_WORDS = {
    "superior": "better", "inferior": "worse", "equivalent": "equiv.", "futile": "futile",
    "continue": "open", "inconclusive": "open",
}  # fmt: skip


def _cell_text(cell: dict[str, Any], sequential: bool) -> str:
    text = fmt_num(cell["mean_diff"], 4, plus=True)
    if sequential:
        return text + "\n" + CELL_WORDS.get(cell.get("decision") or "", "open")
    return text + ("*" if cell["significant"] else "")


def _ladder_panel(ax: Any, entry: dict[str, Any]) -> None:
    """One group's baseline over its ladder: each seed's test losses joined (the pairs the
    gains are computed from), the mean with its 95% t interval over them, and the gain
    per doubling over the ladder in the title."""
    ladder = entry["ladder"]
    x = [p["params"] for p in ladder]
    seeds = sorted({s for p in ladder for s in p["test_loss"]["values"]}, key=int)
    for seed in seeds:
        y = [p["test_loss"]["values"].get(seed, math.nan) for p in ladder]
        ax.plot(x, y, color="0.75", linewidth=0.8, zorder=1)
    y = np.array([p["test_loss"]["mean"] for p in ladder], dtype=float)
    # One seed has no interval (NaN here, null once written to stats.json): no bar.
    ci = np.array([p["test_loss"]["ci_t"] for p in ladder], dtype=float)
    err = np.nan_to_num(np.array([y - ci[:, 0], ci[:, 1] - y]), nan=0.0)
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color="C0", zorder=2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [p["budget"] for p in ladder])
    ax.minorticks_off()
    gain = _gain(entry).overall
    if gain.n:
        verdict = "established" if gain.established else "not established"
        note = f"gain/doubling {mean_and_ci(gain.mean, gain.ci_t)}, {verdict}"
    else:
        note = "no paired seeds yet"
    ax.set_title(f"{entry['title'].replace('`', '')}\n{note}", fontsize=8)
    ax.tick_params(labelsize=7)


def _draw_heatmap(cells: list[dict[str, Any]], folder: Any) -> list[Any]:
    """`regime_heatmap`: strategy × cell, Δ in loss units, the decision or a star in it."""
    import matplotlib.pyplot as plt

    from adaptive_lora.report.figures import _save

    strategies = list(dict.fromkeys(c["strategy"] for c in cells))
    columns = list(dict.fromkeys((c["title"], c["budget"]) for c in cells))
    key, label, _ = heatmap_colour(cells)
    grid = np.full((len(strategies), len(columns)), np.nan)
    for c in cells:
        grid[strategies.index(c["strategy"]), columns.index((c["title"], c["budget"]))] = c[key]
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    bound = bound or 1.0  # every Δ zero: any scale shows white
    sequential = any(c.get("decision") for c in cells)
    fig, ax = plt.subplots(
        figsize=(
            2.6 + 1.2 * len(columns),
            1.4 + (0.55 if sequential else 0.45) * len(strategies),
        )
    )
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for c in cells:
        i, j = strategies.index(c["strategy"]), columns.index((c["title"], c["budget"]))
        # White on the dark ends of the scale, black on the pale middle.
        dark = abs(c[key]) > 0.6 * bound if c[key] is not None else False
        ax.text(j, i, _cell_text(c, sequential), ha="center", va="center", fontsize=6,
                color="white" if dark else "black")  # fmt: skip
    ax.set_yticks(range(len(strategies)), strategies, fontsize=7)
    labels = [f"{t.replace('`', '')}\n{b}" for t, b in columns]
    ax.set_xticks(range(len(columns)), labels, fontsize=6, rotation=30, ha="right")
    fig.colorbar(image, ax=ax, label=label)
    title = (
        "Δ test loss against the baseline per cell\n(under it: the design's decision)"
        if sequential
        else "Δ test loss against the baseline per cell (* Holm p < 0.05)"
    )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, folder, "regime_heatmap")


def draw_regime(
    regime: list[dict[str, Any]], cells: list[dict[str, Any]], folder: Any
) -> list[Any]:
    """`regime_ladder` (per group a panel with its own scale: the baseline's test loss
    against its budget, seeds joined, mean and 95% t interval) and `regime_heatmap`
    (strategy × cell, coloured as `heatmap_colour` says, Δ written in)."""
    import matplotlib

    matplotlib.use("Agg")

    from adaptive_lora.report.figures import _save, _subplots

    paths = []
    drawn = [entry for entry in regime if entry["ladder"]]
    if drawn:
        fig, axes = _subplots(len(drawn), width=4.2, height=3.2, ncols=min(len(drawn), 2))
        for ax, entry in zip(axes, drawn):
            _ladder_panel(ax, entry)
        for ax in axes[:: min(len(drawn), 2)]:
            ax.set_ylabel("baseline test loss\n(seeds; mean, 95% t CI)", fontsize=8)
        fig.suptitle("Where does rank matter? The baseline over the budget ladder", fontsize=10)
        fig.tight_layout()
        paths += _save(fig, folder, "regime_ladder")

    if cells:
        paths += _draw_heatmap(cells, folder)
    return paths


def answer_lines(
    regime: list[dict[str, Any]],
    cells: list[dict[str, Any]],
    baseline: str,
    *,
    baseline_only: bool = False,
) -> list[str]:
    """The Answer of a factorial study: where rank matters first, then allocation there
    (`baseline_only`: the study runs no other strategy, so that is never asked)."""
    binding = [e for e in regime if _gain(e).overall.established]
    loose = [e for e in regime if e not in binding]
    lines = ["## Answer", ""]
    if binding:
        lines.append(
            "**Where rank matters.** The baseline's gain per doubling of the budget is "
            "established in: "
            + "; ".join(f"{e['title']} ({gain_text(_gain(e).overall)})" for e in binding)
            + "."
        )
    elif all(_gain(e).overall.n < 2 for e in regime):
        lines.append(
            "**Where rank matters.** Not known yet: with fewer than two paired seeds per "
            "group no interval exists, so no gain per doubling can be established (a pilot "
            "shows the design and its cost, not an answer)."
        )
    else:
        lines.append(
            "**Where rank matters.** In no group is the baseline's gain per doubling of the "
            "budget established, so no comparison of allocations below can say much."
        )
    if loose:
        lines.append("Not established in: " + "; ".join(e["title"] for e in loose) + ".")
    if baseline_only:
        allocation = (
            f"**Does allocation matter there?** Not asked here: this study runs `{baseline}` "
            "alone, to map its ladder."
        )
    else:
        allocation = _allocation_sentence([e["group"] for e in binding], cells, baseline)
    return [*lines, "", allocation, ""]


def _allocation_sentence(groups: list[str], cells: list[dict[str, Any]], baseline: str) -> str:
    there = [c for c in cells if c["group"] in groups]
    if not groups:
        return "**Does allocation matter there?** Not asked: rank does not bind in any group yet."
    if not there:
        return "**Does allocation matter there?** No strategy has paired results there yet."
    if any(c.get("decision") for c in there):
        return _decision_sentence(there, baseline)
    better = [c for c in there if c["significant"] and c["mean_diff"] < 0]
    worse = [c for c in there if c["significant"] and c["mean_diff"] > 0]

    def named(found: list[dict[str, Any]]) -> str:
        return "; ".join(
            f"{c['strategy']} at {c['budget']} in {c['title']} "
            f"(Δ {fmt_num(c['mean_diff'], 4, plus=True)}, Holm p = {fmt_p(c['p_t_holm'])})"
            for c in found
        )

    parts = [f"**Does allocation matter there?** Of {len(there)} comparison(s) with `{baseline}` "
             "in those groups, after Holm within each cell:"]  # fmt: skip
    parts.append(f"better: {named(better)}." if better else "none significantly better.")
    parts.append(f"Worse: {named(worse)}." if worse else "None significantly worse.")
    return " ".join(parts)


# A sequential decision → how the Answer says it (test loss: "superior" is lower).
DECISION_WORDS = {
    "superior": "beats `{b}`",
    "equivalent": "matches `{b}` (equivalent within the declared margin)",
    "inferior": "loses to `{b}`",
    "futile": "stopped for futility (the smallest effect of interest excluded; "
    "not a claim of equivalence)",
    "inconclusive": "undecided at the last look",
    "continue": "still open (more seeds to come)",
}


def equivalence_tail(decided: dict[str, Any]) -> str:
    """After an equivalence decision: "; equivalent within ±x", x the tightest margin the
    data support at the design's boundary (`SequentialDecision.tightest_margin`); nothing
    for another decision, or stats that predate the number."""
    x = decided.get("tightest_margin")
    if decided.get("decision") != "equivalent" or not isinstance(x, (int, float)):
        return ""
    return f"; equivalent within ±{fmt_num(x, 4)}" if math.isfinite(x) else ""


def items_tail(decision: str | None, two_level: dict[str, Any] | None) -> str:
    """After a claim (superior, inferior) whose two-level interval (seeds and test items
    resampled together) includes 0: the two units of inference disagree, and the claim
    holds for these test items only. Nothing otherwise, or without per-item records."""
    if decision not in ("superior", "inferior") or not isinstance(two_level, dict):
        return ""
    low, high = two_level.get("ci") or (math.nan, math.nan)
    if not (math.isfinite(low) and math.isfinite(high)) or not low <= 0 <= high:
        return ""
    level = round(100 * float(two_level.get("confidence", 0.95)))
    return (
        f"; with test items resampled too, [{fmt_num(low, 4)}, {fmt_num(high, 4)}] "
        f"({level}%) includes 0: so on these test items only"
    )


# A decision in a word, after "by the other unit it would be ...".
OTHER_UNIT_WORDS = {
    "superior": "better", "inferior": "worse", "equivalent": "equivalent",
    "futile": "futile", "inconclusive": "undecided", "continue": "open",
}  # fmt: skip


def unit_tail(decided: dict[str, Any]) -> str:
    """Where the two inference units decide a comparison differently: what the unit the
    study did not use says (seeds alone test the mean on these test items; seeds × items
    generalise over test items too). Nothing where they agree or only one could judge."""
    other = decided.get("other_unit_decision")
    if not other:
        return ""
    judged_by = "seeds × items" if decided.get("unit") == "seeds" else "seeds alone"
    return f"; judged by {judged_by} it would be {OTHER_UNIT_WORDS.get(other, other)}"


def by_decision(named: list[tuple[str, str | None]], baseline: str) -> list[tuple[str, str]]:
    """(how the Answer says a decision, the comparisons with it joined by "; ") in the
    fixed order of `DECISION_WORDS`, from (a comparison's text, its decision; None: open)."""
    out = []
    for decision, words in DECISION_WORDS.items():
        found = [text for text, d in named if (d or "continue") == decision]
        if found:
            out.append((words.format(b=baseline), "; ".join(found)))
    return out


def _decision_sentence(there: list[dict[str, Any]], baseline: str) -> str:
    """The Answer from each comparison's group-sequential decision (its seeds, Δ and 95%
    t interval at the seeds it ran), grouped by decision in a fixed order."""
    parts = [
        f"**Does allocation matter there?** {len(there)} comparison(s) with `{baseline}`, "
        "each decided by its group-sequential design (α split over its cell):"
    ]
    named = [
        (
            f"{c['strategy']} at {c['budget']} in {c['title']} "
            f"(Δ {mean_and_ci(c['mean_diff'], c['ci_t'])}, n = {c['n']}{equivalence_tail(c)}"
            f"{items_tail(c.get('decision'), c.get('two_level'))}{unit_tail(c)})",
            c.get("decision"),
        )
        for c in there
    ]
    parts += [f"{words}: {found}." for words, found in by_decision(named, baseline)]
    return " ".join(parts)
