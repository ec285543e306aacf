"""A committed study database regenerates its committed report, file by file.

The fixture is a real study (`configs/quickstart.yaml` on SmolLM2, 12 runs) whose
store is committed without its run folders, as `results/` holds published studies.
It was written with the library versions in `constraints.txt`; figures are compared
byte for byte, so raising matplotlib there means regenerating the fixture:
`cd tests/fixtures/quickstart && adaptive-lora report study.yaml --out report`
(on a copy, so that no journal files are left beside the database).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from adaptive_lora.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart"


def test_the_committed_database_regenerates_the_committed_report(tmp_path, monkeypatch, capsys):
    work = tmp_path / "quickstart"
    shutil.copytree(FIXTURE, work)
    shutil.rmtree(work / "report")
    monkeypatch.chdir(work)  # paths in a study are relative to the current folder
    assert main(["report", "study.yaml", "--out", "report"]) == 0
    committed = sorted(p.relative_to(FIXTURE / "report") for p in (FIXTURE / "report").rglob("*"))
    written = sorted(p.relative_to(work / "report") for p in (work / "report").rglob("*"))
    assert written == committed
    assert any(p.name == "allocation_r8.png" for p in written)  # drawn from the store alone
    text = (work / "report" / "report.md").read_text()
    assert "- not run at r16 (the study lists them at other budgets only): linear_decay" in text
    for relative in committed:
        old, new = FIXTURE / "report" / relative, work / "report" / relative
        if old.is_dir():
            continue
        if old.suffix == ".parquet":  # its footer names the writer's pyarrow version
            pd.testing.assert_frame_equal(pd.read_parquet(old), pd.read_parquet(new))
        else:
            assert old.read_bytes() == new.read_bytes(), f"{relative} differs"
