"""Write a study's report: report.md, table.tex, stats.json, figures and results.csv."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from adaptive_lora.analysis.jsonable import to_jsonable
from adaptive_lora.report.analyse import analyse
from adaptive_lora.report.environment_check import refuse_mixed
from adaptive_lora.report.figures import draw_figures
from adaptive_lora.report.latex import render_latex
from adaptive_lora.report.markdown import render_markdown
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    StudyStore,
    export_results,
)


@dataclass
class ReportFiles:
    report_md: Path
    table_tex: Path
    stats_json: Path
    figures: list[Path] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)


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
) -> ReportFiles:
    """Write the report of `study` (finished or not) into `out_dir`.

    Compared runs from different environments (package source, model, data, precision,
    torch, device type) are refused in one line before anything is written, unless
    `allow_mixed` (then the report says so at the top).
    """
    rows = store.rows(study.run_ids)
    analysis = analyse(study, rows, n_boot=n_boot)
    analysis["allow_mixed"] = allow_mixed
    if not allow_mixed:
        refuse_mixed(analysis["environment_check"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(study, rows, analysis, out_dir / "figures")
    files = ReportFiles(out_dir / "report.md", out_dir / "table.tex", out_dir / "stats.json")
    files.figures = figures
    _write(files.table_tex, render_latex(study, analysis))
    _write(
        files.report_md,
        render_markdown(study, analysis, rows, store.notes(), store.manifest(), figures, out_dir),
    )
    _write(files.stats_json, json.dumps(to_jsonable(analysis), indent=2))
    files.exports = export_results(rows, out_dir)
    return files
