"""The report's recovery section on a planted task (`report/recovery.py`).

From stored rows: each strategy's share of its budget on the planted modules, its
overlap with the planted set, Δ test loss against the cell's reference (the baseline
where it ran, `peft_default` below r1) and against the oracle, and what it reads. Then a
whole planted study on a tiny model: the report has the table and the figure, and the
figure's first panel is the planted mask.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main
from adaptive_lora.records import ALLOCATION_KEY, PLANTED_KEY
from adaptive_lora.report.recovery import recovery_block, recovery_lines, recovery_panels
from adaptive_lora.study.store import RunRow
from tiny import planted_llama, save_tiny

MODULES = [
    {"name": f"l{layer}.{kind}", "layer": layer, "kind": kind, "rank": 0}
    for layer in range(2)
    for kind in ("q", "v", "down")
]
PLANTED = ["l1.down"]


def row(label, budget, seed, loss, share, overlap, ranks=None, final=None, strategy=None):
    modules = [{**m, "rank": (ranks or {}).get(m["name"], 1)} for m in MODULES]
    metrics = {
        "test_loss": loss,
        ALLOCATION_KEY: modules,
        PLANTED_KEY: {"modules": PLANTED, "target_kl": 0.3, "achieved_kl": 0.301,
                      "kl_on_samples": 0.25, "scale": 1.0, "budget_share": share,
                      "overlap": overlap},
    }  # fmt: skip
    if final is not None:
        metrics["final_ranks"] = final
    return RunRow(
        id=f"{label}-{budget}-{seed}", position=0, label=label, strategy=strategy or label,
        budget=budget, seed=seed, lr=1e-3, status="done", reason=None, config={},
        metrics=metrics,
    )  # fmt: skip


def test_recovery_numbers_reference_and_labels():
    rows = [
        row("oracle", "qv:r1", 1, 1.00, 1.0, 1.0, ranks={"l1.down": 3}),
        row("oracle", "qv:r1", 2, 1.10, 1.0, 1.0, ranks={"l1.down": 3}),
        row("peft_default", "qv:r1", 1, 1.30, 0.0, 0.0),
        row("peft_default", "qv:r1", 2, 1.20, 0.0, 0.0),
        row("spectral", "qv:r1", 1, 1.25, 0.2, 0.0),
        row("ada", "qv:r1", 1, 1.05, 0.5, 1.0, final={"l1.down": 4, "l0.q": 0}, strategy="adalora"),
        row("uniform", "r1", 1, 1.40, 1 / 6, 1 / 6),
        row("oracle", "r1", 1, 1.10, 1.0, 1.0),
        row("empirical", "r1", 1, 1.20, 0.6, 1.0),
    ]
    block = recovery_block(rows, dict.fromkeys(["qv:r1", "r1", "r4"], "uniform"), "test_loss")
    assert block["planted_modules"] == PLANTED and block["achieved_kl"] == 0.301
    assert set(block["budgets"]) == {"qv:r1", "r1"}  # nothing ran at r4
    low, r1 = block["budgets"]["qv:r1"], block["budgets"]["r1"]
    assert low["reference"] == "peft_default"  # uniform cannot spend below r1
    assert r1["reference"] == "uniform"
    oracle = low["strategies"]["oracle"]
    # Paired by seed: (1.00 − 1.30 + 1.10 − 1.20) / 2 over the two seeds both ran.
    assert oracle["vs_reference"] == {"mean": pytest.approx(-0.2), "n": 2}
    assert oracle["vs_oracle"] is None and oracle["reads"] == "told the planted set"
    spectral = low["strategies"]["spectral"]
    assert spectral["vs_oracle"] == {"mean": pytest.approx(0.25), "n": 1}
    assert spectral["reads"] == "base weights only"
    assert low["strategies"]["ada"]["reads"] == "learns ranks on the data"
    assert low["strategies"]["peft_default"]["reads"] == "shapes only"
    assert low["strategies"]["peft_default"]["vs_reference"] is None
    assert r1["strategies"]["empirical"]["reads"] == "reads the data"
    assert r1["strategies"]["empirical"]["vs_reference"]["mean"] == pytest.approx(-0.2)
    assert low["strategies"]["oracle"]["budget_share"] == 1.0

    text = "\n".join(recovery_lines(block))
    assert (
        "| strategy | reads | share on planted | overlap | Δ vs peft_default | Δ vs oracle |"
        in text
    )
    assert "| oracle | told the planted set | 1.00 | 1.00 | -0.2000 (n=2) | — |" in text
    assert "| spectral | base weights only | 0.20 | 0.00 | -0.0500 | +0.2500 |" in text

    panels = recovery_panels(block, rows, "qv:r1")
    assert panels[0][0] == "planted set"
    assert panels[0][2] == {m["name"]: float(m["name"] in PLANTED) for m in MODULES}
    titles = [title for title, _, _ in panels]
    assert titles[1:] == ["oracle @ qv:r1", "peft_default @ qv:r1", "spectral @ qv:r1",
                          "ada @ qv:r1"]  # fmt: skip
    # AdaLoRA drawn at the ranks it ended with, scaled to its largest.
    ada = dict(panels[4][2])
    assert ada["l1.down"] == 1.0 and ada["l0.q"] == 0.0 and ada["l0.v"] == 0.0


def test_a_study_off_planted_data_has_no_recovery():
    plain = RunRow(id="u", position=0, label="uniform", strategy="uniform", budget="r1", seed=1,
                   lr=1e-3, status="done", reason=None, config={}, metrics={"test_loss": 1.0})  # fmt: skip
    assert recovery_block([plain], {"r1": "uniform"}, "test_loss") is None
    assert recovery_lines(None) == []


def test_a_planted_study_reports_recovery_with_its_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = save_tiny(planted_llama(), tmp_path / "model")
    study = {
        "name": "planted-tiny",
        "model": folder,
        "data": {"source": "planted", "n_train": 32, "n_val": 0, "n_test": 16,
                 "template": "chat", "max_length": 96,
                 "options": {"sites": [{"kinds": ["down"], "layers": "last_half", "rank": 4}],
                             "target_kl": 0.5, "pool_size": 48, "n_calibration": 8,
                             "max_new_tokens": 16}},
        "budgets": ["r1"],
        "strategies": ["uniform", "oracle", "mlp_only"],
        "seeds": [0],
        "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
        "eval": {"n_generate": 0, "batch_size": 16},
        "baseline": "uniform",
        "out": str(tmp_path / "study"),
    }  # fmt: skip
    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--quiet"]) == 0
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Recovery of the planted modules" in report
    row = re.search(r"^\| oracle \| told the planted set \| 1\.00 \| 1\.00 \| ([^|]+) \| — \|$",
                    report, re.M)  # fmt: skip
    assert row, report
    assert row.group(1).strip().startswith(("+", "-"))  # Δ vs uniform, one seed
    figure = Path(tmp_path / "report" / "figures" / "recovery_r1.png")
    assert figure.is_file()
    assert "(figures/recovery_r1.png)" in report
