"""A study's report: Markdown, LaTeX and figures, printed from one analysis (stats.json)."""

from adaptive_lora.report.write import ReportFiles, write_report

__all__ = ["ReportFiles", "write_report"]
