"""`adaptive-lora rerun`: a stored run trained again from its record gives the same numbers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main
from adaptive_lora.study.rerun import compare_metrics
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study


@pytest.fixture(scope="module")
def study_path(tmp_path_factory) -> Path:
    """A finished two-run study of a tiny model (uniform and linear_decay, seed 0)."""
    from tiny import save_tiny, tiny_llama, write_tiny_study

    folder = tmp_path_factory.mktemp("rerun")
    model = save_tiny(tiny_llama(), folder / "model")
    path = write_tiny_study(folder, model, max_steps=3, seeds=[0])
    run_study(load_study(path), log=lambda line: None, quiet=True)
    return path


def run_id(path: Path, label: str) -> str:
    return next(s.run_id for s in load_study(path).runs if s.label == label)


def test_a_stored_run_is_reproduced_exactly(study_path, capsys, tmp_path):
    wanted = run_id(study_path, "linear_decay")
    assert main(["rerun", str(study_path), wanted[:-3], "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reproduced: all" in out and "equal exactly" in out
    assert "numerics version   same" in out and "DIFFERS" not in out
    assert (tmp_path / wanted / "metrics.json").is_file()  # --out keeps the folder


def test_a_changed_stored_number_is_not_reproduced(study_path, capsys, tmp_path):
    wanted = run_id(study_path, "uniform")
    copy = tmp_path / "study.yaml"
    spec = yaml.safe_load(study_path.read_text())
    out_copy = tmp_path / "out"
    out_copy.mkdir()
    (out_copy / "study.db").write_bytes(Path(spec["out"], "study.db").read_bytes())
    copy.write_text(yaml.safe_dump({**spec, "out": str(out_copy)}, sort_keys=False))
    with sqlite3.connect(out_copy / "study.db") as conn:
        metrics = json.loads(
            conn.execute("SELECT metrics FROM runs WHERE id = ?", (wanted,)).fetchone()[0]
        )
        metrics["test_loss"] += 1e-9
        conn.execute("UPDATE runs SET metrics = ? WHERE id = ?", (json.dumps(metrics), wanted))
    assert main(["rerun", str(copy), wanted]) == 1
    assert "not reproduced: test_loss differ" in capsys.readouterr().out
    assert main(["rerun", str(copy), wanted, "--tolerance", "1e-6"]) == 0
    assert "equal within 1e-06" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-run"], "no run 'no-such-run' in the study store"),
        ([""], "names 2 runs"),
        (["uniform", "--tolerance", "-1"], "--tolerance must be 0 or more"),
        (["uniform", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_requests_are_one_line_errors(study_path, capsys, argv, message):
    assert main(["rerun", str(study_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_study_run_folder_is_never_overwritten(study_path, capsys):
    runs = yaml.safe_load(study_path.read_text())["out"] + "/runs"
    assert main(["rerun", str(study_path), "uniform", "--out", runs]) == 2
    assert "the study's own run folder" in capsys.readouterr().err


def test_compare_metrics_reads_numbers_and_curves():
    stored = {"test_loss": 1.5, "rouge_l": None, "train_loss_curve": [[1, 2.0], [2, 1.8]]}
    same = compare_metrics(stored, dict(stored))
    assert [row[-1] for row in same] == [True, True, True]
    moved = compare_metrics(stored, {**stored, "train_loss_curve": [[1, 2.0], [2, 1.9]]})
    assert [key for key, *_, ok in moved if not ok] == ["train_loss_curve"]
    assert compare_metrics({"val_loss": float("nan")}, {"val_loss": float("nan")})[0][-1]
    assert not compare_metrics({"rouge_l": None}, {"rouge_l": 0.5})[0][-1]


def test_compare_metrics_reads_task_metrics_and_per_item_records():
    """A generated task's `task_score` (named in `eval_metrics`) and every item's loss and
    verdict are compared, not only the fixed list."""
    items = {"key": ["a1", "b2"], "loss": [0.5, 0.7], "tokens": [3, 4], "task_score": [1.0, 0.0]}
    stored = {
        "test_loss": 1.5,
        "task_score": 0.5,
        "eval_metrics": ["task_score"],
        "test_items": items,
    }
    same = compare_metrics(stored, json.loads(json.dumps(stored)))
    assert [key for key, *_ in same] == ["test_loss", "task_score", "test_items"]
    assert all(ok for *_, ok in same)
    flipped = {**items, "task_score": [1.0, 1.0]}
    moved = compare_metrics(stored, {**stored, "task_score": 1.0, "test_items": flipped})
    assert [key for key, *_, ok in moved if not ok] == ["task_score", "test_items"]
    renamed = {**items, "key": ["a1", "c3"]}
    assert not compare_metrics(stored, {**stored, "test_items": renamed})[-1][-1]


def test_the_seed_sd_counts_only_the_runs_group():
    """Peers are the same strategy, budget and rate in the same model × data group: a
    factorial study's other tasks and sizes at that budget are not seeds of this run."""
    from types import SimpleNamespace

    from adaptive_lora.study.rerun import seed_sd

    def row(seed, n_train, loss):
        config = {"model": "m", "data": {"source": "s.json", "n_train": n_train}}
        return SimpleNamespace(status="done", label="uniform", budget="r4", lr=1e-3,
                               seed=seed, config=config, metrics={"test_loss": loss})  # fmt: skip

    rows = [row(0, 100, 1.0), row(1, 100, 1.2), row(2, 100, 1.1), row(0, 400, 9.0)]
    sds, n = seed_sd(rows, rows[0])
    assert n == 3 and sds["test_loss"] == pytest.approx(0.1)
