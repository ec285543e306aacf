"""Write a study's report: report.md, table.tex (two tables), stats.json, figures, results."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from adaptive_lora.analysis.jsonable import to_jsonable
from adaptive_lora.analysis.ladder import read_gain
from adaptive_lora.report.against import against_lines, compare_studies, matched_groups
from adaptive_lora.report.analyse import analyse
from adaptive_lora.report.cross_model import agreement_lines, cross_model_agreement
from adaptive_lora.report.environment_check import refuse_mixed
from adaptive_lora.report.figures import draw_figures
from adaptive_lora.report.hypotheses import hypotheses_lines
from adaptive_lora.report.latex import render_latex
from adaptive_lora.report.markdown import notes_lines, outside_lines, render_markdown
from adaptive_lora.report.regime import (
    answer_lines,
    draw_regime,
    heatmap_cells,
    regime_lines,
    regime_map,
)
from adaptive_lora.report.same_runs import run_families, same_runs
from adaptive_lora.report.test_sets import test_set_lines
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    StudyStore,
    export_results,
)

# The budgets the baseline must run at before a single-group report asks whether its rank
# binds (two budgets are a comparison, which `cross_budget` already answers).
LADDER_BUDGETS = 3


@dataclass
class ReportFiles:
    report_md: Path
    table_tex: Path
    stats_json: Path
    figures: list[Path] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)
    comparison: dict | None = None  # with `against`: the two studies side by side


def _write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(
    study: Study,
    store: StudyStore,
    out_dir: str | Path,
    *,
    n_boot: int = 10000,
    allow_mixed: bool = False,
    against: tuple[Study, StudyStore] | None = None,
) -> ReportFiles:
    """Write the report of `study` (finished or not) into `out_dir`; with `against`
    (another study and its store), a section on where the two agree (`against.py`).

    Compared runs from different environments (numerics version, model, data, precision,
    torch, device type) are refused in one line before anything is written, unless
    `allow_mixed` (then the report says so at the top). A study with several models is
    analysed per model (pairs never cross models), with a cross-model agreement table.
    """
    wanted = set(study.run_ids)
    stored = store.rows()  # read once: the study's runs, and those its file no longer lists
    rows = [row for row in stored if row.id in wanted]
    outside = {row.id: row.status for row in stored if row.id not in wanted}
    parts = analyse_groups(study, rows, n_boot=n_boot, allow_mixed=allow_mixed)
    # The baseline ladders and strategy cells: the factorial report's tables and what a
    # comparison with another study matches, so computed once for both.
    mine = _regime_and_cells(study, parts) if study.multi_group or against else None
    comparison = (
        _compare_with(study, rows, mine, against, n_boot=n_boot, allow_mixed=allow_mixed)
        if against is not None
        else None
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir / "report.md", out_dir / "table.tex", out_dir / "stats.json")
    if not study.multi_group:
        markdown, latex, stats = _single_group(
            study, store, parts, mine, out_dir, files, comparison, outside
        )
    else:
        markdown, latex, stats = _multi_group(
            study, store, parts, mine, out_dir, files, comparison, outside
        )
    if outside:  # only then: a study's stats.json is otherwise as it always was
        stats["outside_study_file"] = outside
    if comparison is not None:
        stats["against"] = comparison
    files.comparison = comparison
    _write(files.table_tex, latex)
    _write(files.report_md, markdown)
    _write(files.stats_json, json.dumps(to_jsonable(stats), indent=2))
    files.exports = export_results(rows, out_dir)
    return files


def _single_group(
    study: Study,
    store: StudyStore,
    parts: dict,
    mine: tuple | None,
    out_dir: Path,
    files: ReportFiles,
    comparison: dict | None,
    outside: dict[str, str],
) -> tuple[str, str, dict]:
    """The report of a one-group study: its figures (and the baseline's ladder when it
    runs at enough budgets), Markdown, LaTeX and the stats it writes."""
    group = study.groups[0]
    sub, sub_rows, analysis = parts[group.key]
    if len(study.budgets_for(study.baseline)) >= LADDER_BUDGETS:
        # A ladder of the baseline: the report says whether its rank binds at all.
        [analysis["ladder"]] = (
            mine[0]  # already computed for the comparison
            if mine is not None
            else regime_map({group.key: analysis}, study.group_titles(), study.baseline)
        )
        _one_doubling(analysis, analysis["ladder"])
    files.figures = draw_figures(sub, sub_rows, analysis, out_dir / "figures")
    if analysis.get("ladder"):
        files.figures += draw_regime([analysis["ladder"]], [], out_dir / "figures")
    markdown = render_markdown(
        sub,
        analysis,
        sub_rows,
        store.notes(),
        store.manifest(),
        files.figures,
        out_dir,
        after_answer=against_lines(comparison, study.baseline),
        against=comparison["path"] if comparison else None,
        outside=outside,
    )
    return markdown, render_latex(sub, analysis), analysis


def _one_doubling(analysis: dict, ladder_entry: dict) -> None:
    """The baseline's measured gain per doubling of rank, kept for the paired figure's
    reference line (only where the ladder established one: a gain, not noise)."""
    gain = read_gain(ladder_entry["gain_per_doubling"]).overall
    if gain.n and gain.established and gain.mean > 0:
        analysis["one_doubling"] = gain.mean


def _doublings(analyses: dict[str, dict], regime: list[dict]) -> None:
    """Each group's paired figure gets its own ladder's doubling."""
    for entry in regime:
        if entry["ladder"]:
            _one_doubling(analyses[entry["group"]], entry)


def _group_section(
    part: tuple,
    title: str,
    slug: str,
    store: StudyStore,
    notes: list,
    out_dir: Path,
    files: ReportFiles,
    comparison: dict | None,
) -> tuple[list[str], str]:
    """One group's section of a study-wide report (its headings one level down, its
    figures in their own folder) and its LaTeX table (labels prefixed by `slug`)."""
    sub, sub_rows, analysis = part
    figures = draw_figures(sub, sub_rows, analysis, out_dir / "figures" / slug)
    files.figures += figures
    text = render_markdown(
        sub,
        analysis,
        sub_rows,
        notes,
        store.manifest(),
        figures,
        out_dir,
        study_level=False,
        against=comparison["path"] if comparison else None,
    )
    body = text.split("\n", 1)[1]  # the per-group title is replaced by the group's name
    lines = [f"## {title[0].upper() + title[1:]}", ""]
    lines += [("#" + line) if line.startswith("#") else line for line in body.splitlines()]
    table = render_latex(sub, analysis).replace("\\label{tab:", f"\\label{{tab:{slug}-")
    return lines, table


def _compare_with(
    study: Study,
    rows: list,
    mine: tuple[list, list],
    against: tuple[Study, StudyStore],
    *,
    n_boot: int,
    allow_mixed: bool,
) -> dict:
    """`study` (its `rows`, ladders and cells `mine`) beside another study and its store."""
    other, other_store = against
    listed = set(other.run_ids)
    other_stored = other_store.rows()  # read once: its runs, and those its file dropped
    other_rows = [row for row in other_stored if row.id in listed]
    theirs = analyse_groups(other, other_rows, n_boot=n_boot, allow_mixed=allow_mixed)
    comparison = compare_studies(
        other.name, matched_groups(study, other), mine, _regime_and_cells(other, theirs)
    )
    # Every run the other store holds done, not only those its file still expands to:
    # a run's id is its whole configuration, so one dropped from a narrowed design
    # still measures what the machine alone changes.
    titles = study.group_titles()
    groups = {titles[g.key]: [r.id for r in study.rows_of(g, rows)] for g in study.groups}
    comparison["same_runs"] = same_runs(
        rows,
        other_stored,
        groups=groups if study.multi_group else None,
        listed_there=listed,
    )
    comparison["families"] = [run_families(rows), run_families(other_rows)]
    comparison["path"] = str(other.path)  # for the report's command to reproduce it
    return comparison


def analyse_groups(
    study: Study, rows: list, *, n_boot: int, allow_mixed: bool
) -> dict[str, tuple[Study, list, dict]]:
    """Group key → (the group's study, its rows, its analysis); runs from different
    environments refused in one line unless `allow_mixed`."""
    parts = {}
    for group in study.groups:
        sub = study.for_group(group) if study.multi_group else study
        sub_rows = study.rows_of(group, rows) if study.multi_group else rows
        analysis = analyse(sub, sub_rows, n_boot=n_boot)
        analysis["allow_mixed"] = allow_mixed
        if not allow_mixed:
            refuse_mixed(analysis["environment_check"])
        parts[group.key] = (sub, sub_rows, analysis)
    return parts


def _regime_and_cells(study: Study, parts: dict) -> tuple[list, list]:
    """A study's baseline ladders and its strategies' Δ per group × budget."""
    analyses = {key: analysis for key, (_, _, analysis) in parts.items()}
    titles = study.group_titles()
    return (
        regime_map(analyses, titles, study.baseline),
        heatmap_cells(analyses, titles, study.baseline),
    )


def _factorial_head(
    study: Study,
    parts: dict,
    declared: list[str],
    regime: list,
    cells: list,
    comparison: dict | None,
    files: ReportFiles,
    out_dir: Path,
) -> list[str]:
    """A factorial study's title, design (and whether its sizes shared a test set),
    hypotheses, Answer, comparison and regime map, with the regime map's figures (drawn
    into `out_dir`, added to `files`)."""
    drawn = draw_regime(regime, cells, out_dir / "figures")
    files.figures += drawn
    baseline_only = study.labels == [study.baseline]  # a map of the baseline's ladder
    question = "where does rank matter" + (
        "" if baseline_only else ", and does allocation matter there"
    )
    return [
        f"# Study `{study.name}`: {question}?",
        "",
        f"A factorial design of {len(parts)} groups (model × task × training size), each "
        f"at budgets {', '.join(study.budgets)}. Runs are paired by seed within a group; "
        "every comparison, Holm family and learning-rate choice lives in its group × budget.",
        "",
        *test_set_lines(study.groups, {key: part[1] for key, part in parts.items()}),
        *declared,
        *answer_lines(regime, cells, study.baseline, baseline_only=baseline_only),
        *against_lines(comparison, study.baseline),
        *regime_lines(regime, cells, study.baseline, drawn, out_dir),
    ]


def _multi_group(
    study: Study,
    store: StudyStore,
    parts: dict,
    regime_and_cells: tuple[list, list],
    out_dir: Path,
    files: ReportFiles,
    comparison: dict | None = None,
    outside: dict[str, str] | None = None,
) -> tuple[str, str, dict]:
    """One section per group (headings one level down) after the study-wide tables.

    With several models and nothing else varying, the cross-model agreement table leads
    (as it always did); a factorial study (tasks or sizes) leads with where rank matters.
    """
    analyses = {key: analysis for key, (_, _, analysis) in parts.items()}
    # The hypotheses are the study's: printed once, before everything else.
    declared = hypotheses_lines(next(iter(analyses.values())).get("hypotheses"), study.baseline)
    notes = store.notes()  # so are the recorded decisions: once, after the study-wide tables
    varies = study.varies()
    groups = {g.key: g for g in study.groups}
    titles = study.group_titles()
    models_only = varies == (True, False, False)
    if models_only:
        by_model = {groups[key].model: a for key, a in analyses.items()}
        agreement = cross_model_agreement(by_model, study.baseline)
        lines = [
            f"# Study `{study.name}`: rank allocation at a fixed parameter budget, "
            f"{len(parts)} models",
            "",
            "Each model is analysed on its own: runs are paired by seed within a model, and "
            "every statistic is per model. The sections below follow the agreement table.",
            "",
            *declared,
            *agreement_lines(agreement, list(by_model), study.baseline),
            *against_lines(comparison, study.baseline),
            *notes_lines(notes, study),
            *outside_lines(outside or {}, study),
        ]
        stats: dict = {"models": by_model, "cross_model_agreement": agreement}
    else:
        regime, cells = regime_and_cells
        _doublings(analyses, regime)
        lines = [
            *_factorial_head(study, parts, declared, regime, cells, comparison, files, out_dir),
            *notes_lines(notes, study),
            *outside_lines(outside or {}, study),
        ]
        stats = {"groups": analyses, "regime": regime, "cells": cells}
    latex = []
    for key, part in parts.items():
        slug = groups[key].model if models_only else groups[key].slug
        slug = re.sub(r"[^A-Za-z0-9]+", "-", slug).strip("-")
        section, table = _group_section(
            part, titles[key], slug, store, notes, out_dir, files, comparison
        )
        lines += section
        latex.append(table)
    return "\n".join(lines), "\n".join(latex), stats
