"""Table cells shared by the Markdown and LaTeX tables, printed from the analysis; and
how report.md embeds a figure."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from adaptive_lora.analysis.comparison import FamilyComparison
from adaptive_lora.analysis.formatting import fmt_num, fmt_p, fmt_sig
from adaptive_lora.report.analyse import LOSS_DECIMALS, PRIMARY
from adaptive_lora.study.spec import Study


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; a "|" inside a cell is escaped (it would end the cell)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _interval(summary: dict[str, Any], decimals: int) -> str:
    mean = fmt_num(summary["mean"], decimals)
    lo, hi = summary["ci_t"]
    if math.isnan(lo):
        return mean
    return f"{mean} [{fmt_num(lo, decimals)}, {fmt_num(hi, decimals)}]"


def mean_and_ci(mean: float, ci: list[float], *, plus: bool = True) -> str:
    """A loss difference with its interval: "+0.0123 [−0.0010, 0.0250]"."""
    lo, hi = ci
    return (
        f"{fmt_num(mean, LOSS_DECIMALS, plus=plus)} "
        f"[{fmt_num(lo, LOSS_DECIMALS)}, {fmt_num(hi, LOSS_DECIMALS)}]"
    )


def _diff(comparison: FamilyComparison | None) -> str:
    if not comparison or comparison.n == 0:
        return "n/a"
    if math.isnan(comparison.ci_t[0]):
        return fmt_num(comparison.mean_diff, LOSS_DECIMALS, plus=True)
    return mean_and_ci(comparison.mean_diff, comparison.ci_t)


def _count(d: dict[str, Any]) -> str:
    if d["min"] == d["max"]:
        return f"{int(d['min']):,}"
    return f"{int(d['min']):,}–{int(d['max']):,}"


def _params(entry: dict[str, Any]) -> str:
    """The trainable count; where a run kept fewer than it trained (AdaLoRA), both."""
    trained, final = entry["trainable_params"], entry.get("effective_params") or {"n": 0}
    if trained["n"] == 0:
        return "n/a"
    if final["n"] and (final["min"], final["max"]) != (trained["min"], trained["max"]):
        return f"{_count(trained)} trained, {_count(final)} final"
    return _count(trained)


def _deviation(entry: dict[str, Any]) -> str:
    """Deviation from the budget of the final count (AdaLoRA's effective, else trainable)."""
    final = entry.get("effective_deviation_pct") or {"n": 0}
    d = final if final["n"] else entry["deviation_pct"]
    if d["n"] == 0:
        return "n/a"
    if d["min"] == d["max"]:
        return fmt_num(d["mean"], 2, plus=True) + "%"
    return f"{fmt_num(d['min'], 2, plus=True)} to {fmt_num(d['max'], 2, plus=True)}%"


def _seconds(entry: dict[str, Any]) -> str:
    d = entry["train_seconds"] if entry["train_seconds"]["n"] else entry["wall_seconds"]
    return fmt_num(d["mean"], 1)


# A chosen rate at an end of the grid it was tuned over: the best rate may lie past it.
EDGE_MARKS = {"largest": " (top of grid)", "smallest": " (bottom of grid)"}


def _rate(entry: dict[str, Any]) -> str:
    if entry["lr"] is None:
        return "n/a"
    return f"{entry['lr']:g}" + EDGE_MARKS.get(entry.get("lr_edge") or "", "")


def main_table_rows(study: Study, block: dict[str, Any]) -> list[dict[str, str]]:
    """The cells of the main table of one budget, as text (shared by Markdown and LaTeX)."""
    out = []
    for label in block["strategies"]:  # the strategies run at this budget
        entry = block["strategies"][label]
        comparison = block["comparisons"].get(label)
        is_base = label == (block.get("baseline") or study.baseline)
        out.append(
            {
                "strategy": label,
                "lr": _rate(entry),
                "n": str(entry[PRIMARY]["n"]),
                "test": _interval(entry[PRIMARY], LOSS_DECIMALS),
                "diff": "—" if is_base else _diff(comparison),
                "p_t": "—" if is_base or not comparison else fmt_p(comparison.p_t_holm),
                "p_w": "—" if is_base or not comparison else fmt_p(comparison.p_wilcoxon_holm),
                "d_z": "—" if is_base or not comparison else fmt_sig(comparison.d_z),
                "params": _params(entry),
                "deviation": _deviation(entry),
                "seconds": _seconds(entry),
            }
        )
    return out


MAIN_COLUMNS = (
    ("strategy", "strategy"),
    ("lr", "lr"),
    ("n", "n"),
    ("test", "test loss, mean [95% CI]"),
    ("diff", "Δ vs {baseline} [95% CI]"),
    ("p_t", "p (paired t, Holm)"),
    ("p_w", "p (Wilcoxon, Holm)"),
    ("d_z", "d_z"),
    ("params", "trainable params"),
    ("deviation", "vs budget"),
    ("seconds", "train time (s)"),
)


def _columns(study: Study) -> list[tuple[str, str]]:
    columns = [(k, h.format(baseline=study.baseline)) for k, h in MAIN_COLUMNS]
    return columns if study.tunes_lr else [c for c in columns if c[0] != "lr"]


def _seed_range(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]} ({len(seeds)} seeds)"
    return f"{', '.join(map(str, seeds))} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"


def file_slug(text: str) -> str:
    """A budget or label as it appears in a figure's file name (qv:r1 → qv_r1)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def figure_lines(title: str, png: Path, out_dir: Path, suffix: str = "") -> list[str]:
    """A figure embedded in report.md: its title with a link to its SVG, then the PNG
    (`png` lies under `out_dir`, where report.md is; links are relative to it)."""
    rel = png.relative_to(out_dir).as_posix()
    svg = png.with_suffix(".svg").relative_to(out_dir).as_posix()
    return [
        f"**{title}{f' — {suffix}' if suffix else ''}** ([SVG]({svg}))",
        "",
        f"![{title}]({rel})",
        "",
    ]
