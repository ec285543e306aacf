"""Refused before anything loads (a bad data file, a budget no adapter can spend, budgets
that are not a list); a stopped `train` says so in its manifest; figures written whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    from tiny import save_tiny, tiny_llama

    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("model") / "m")


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: what is refused must be refused before one."""
    import adaptive_lora.run
    import adaptive_lora.study.local

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(adaptive_lora.run, "load_model", never)
    monkeypatch.setattr(adaptive_lora.study.local, "default_load_model", never)


def _data(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


TRAIN_REFUSALS = {
    "malformed JSON": ("bad.json", json.dumps([GOOD] * 3)[:-20], [], "not valid JSON at line 1"),
    "a missing field": ("bad.jsonl", json.dumps({"instruction": "a"}) + "\n", [],
                        "missing required field 'output'"),
    "too few examples": ("few.json", json.dumps([GOOD] * 10), [],
                         "the data set has 10 examples but the splits ask for 16"),
    "a budget of 1 parameter": ("ok.json", json.dumps([GOOD] * 20), ["--budget", "1"],
                                "allocation.budget 1: impossible budget: 1 parameters is below"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRAIN_REFUSALS))
def test_train_refuses_bad_inputs_before_the_model_loads(
    model_folder, tmp_path, capsys, no_model_loads, case
):
    name, text, flags, said = TRAIN_REFUSALS[case]
    data = _data(tmp_path / "data", name, text)
    out = tmp_path / "out"
    argv = ["train", "--model", model_folder, "--data", str(data), "--out", str(out),
            "--n-train", "8", "--set", "data.n_val=4", "--set", "data.n_test=4", *flags]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err
    assert not out.exists()


def _study(folder: Path, model: str, **changes) -> Path:
    spec = {
        "name": "t",
        "model": model,
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay"],
        "seeds": [0],
        "train": {"max_steps": 1},
        "out": str(folder / "out"),
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


STUDY_REFUSALS = {
    "a budget of 1 parameter": (
        {"budgets": ["r4", 1]},
        "budgets[1] (1): impossible budget: 1 parameters is below the ",
    ),
    "budgets not a list": ({"budgets": 8}, "budgets must be a list, like [r8, r16], got the "
                           "single value 8: write [r8] for rank 8"),
    "a budget above max_rank everywhere": (
        {"budgets": ["r8"], "allocation": {"max_rank": 4}},
        "budgets[0] (r8): impossible budget: ",
    ),
    "a malformed data file": ({"data": {"source": "DATA", "n_train": 8, "n_val": 4,
                                        "n_test": 4}}, "not valid JSON at line 1"),
    "too few examples": ({"data": {"source": "FEW", "n_train": 8, "n_val": 4, "n_test": 4}},
                         "the data set has 10 examples but the splits ask for 16"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STUDY_REFUSALS))
@pytest.mark.parametrize("command", [["run", "--dry-run"], ["run"]])
def test_a_study_is_refused_in_one_line_before_any_run_or_model_load(
    model_folder, tmp_path, capsys, no_model_loads, case, command
):
    changes, said = STUDY_REFUSALS[case]
    bad = _data(tmp_path / "data", "bad.json", json.dumps([GOOD] * 3)[:-20])
    few = _data(tmp_path / "data", "few.json", json.dumps([GOOD] * 10))
    text = json.dumps(changes).replace('"DATA"', json.dumps(str(bad)))
    text = text.replace('"FEW"', json.dumps(str(few)))
    path = _study(tmp_path, model_folder, **json.loads(text))
    assert main([command[0], str(path), *command[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err
    assert err.startswith(f"adaptive-lora: error: {path}: "), err
    assert not (tmp_path / "out").exists()  # no store, no run folder, no lock


def test_a_hub_model_not_in_the_cache_leaves_the_budget_to_its_run(tmp_path, capsys):
    """Without the network a hub model's shapes are unknown: the dry run goes on."""
    path = _study(tmp_path, "nobody/no-such-model-anywhere", budgets=[1])
    assert main(["run", str(path), "--dry-run"]) == 0


# ---------------------------------------------------------------------- a stopped train


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_train_stopped_by_a_signal_leaves_a_manifest_that_says_so(model_folder, tmp_path, sig):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "adaptive_lora.cli", "train", "--model", model_folder,
               "--data", "builtin", "--n-train", "16", "--set", "data.n_val=4",
               "--set", "data.n_test=4", "--max-steps", "100000", "--set", "train.threads=1",
               "--set", "train.eval_every=100000", "--set", "data.template=chat",
               "--max-length", "128", "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/manifest.json")):  # training has begun
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err.decode()
    (manifest,) = out.glob("*/manifest.json")
    record = json.loads(manifest.read_text())
    assert record["status"] == "stopped" and record["error"] == f"stopped by {sig.name}"
    assert record["ended"]


# ---------------------------------------------------------------------- figures


def test_a_figure_that_fails_mid_write_leaves_the_previous_one_and_no_temporary_file(
    tmp_path, monkeypatch
):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from adaptive_lora.allocation.heatmap import save_figure
    from adaptive_lora.report.figures import _save

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = _save(fig, tmp_path / "figures", "x")
    before = {p.name: p.read_bytes() for p in paths}
    assert before["x.png"].startswith(b"\x89PNG") and b"<svg" in before["x.svg"]
    real = matplotlib.figure.Figure.savefig

    def half(self, fname, **kwargs):  # writes part of the file, then the process "dies"
        Path(fname).write_bytes(b"\x89PNG half a figure")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half)
    for save in (lambda f: _save(f, tmp_path / "figures", "x"),
                 lambda f: save_figure(f, tmp_path / "figures" / "x.png")):  # fmt: skip
        fig, ax = plt.subplots()
        with pytest.raises(KeyboardInterrupt):
            save(fig)
        plt.close(fig)
        assert {p.name: p.read_bytes() for p in (tmp_path / "figures").iterdir()} == before
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    fig, ax = plt.subplots()
    (written,) = save_figure(fig, tmp_path / "new" / "heat.png")
    assert written.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in written.parent.iterdir()] == ["heat.png"]
