"""`adaptive-lora prune`: stored runs an edited study file no longer lists, removed only
after confirmation, never those a decision note names; `plan` ignores them anyway."""

from __future__ import annotations

from test_study import FakeRuns, quiet_run, write_study

from adaptive_lora.cli import main
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore


def _narrowed(tmp_path):
    path = write_study(tmp_path, seeds="0..2")
    quiet_run(load_study(path), FakeRuns())
    write_study(tmp_path, seeds="0..1")  # seed 2 dropped from the file
    return path


def _stored_ids(path):
    with StudyStore.open(load_study(path).store_path, create=False) as store:
        return {row.id for row in store.rows()}


def test_prune_asks_and_removes_only_the_runs_the_file_dropped(tmp_path, capsys, monkeypatch):
    path = _narrowed(tmp_path)
    study = load_study(path)
    before = _stored_ids(path)
    dropped = before - set(study.run_ids)
    assert len(dropped) == 2
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["prune", str(path)]) == 0  # no terminal to ask: nothing removed
    assert "not removed: confirm with --yes" in capsys.readouterr().out
    assert _stored_ids(path) == before
    assert main(["prune", str(path), "--yes"]) == 0
    assert "removed 2 stored run(s)" in capsys.readouterr().out
    assert _stored_ids(path) == set(study.run_ids)
    assert main(["prune", str(path), "--yes"]) == 0
    assert "nothing to prune" in capsys.readouterr().out


def test_prune_keeps_runs_a_note_names(tmp_path, capsys):
    path = _narrowed(tmp_path)
    study = load_study(path)
    dropped = sorted(_stored_ids(path) - set(study.run_ids))
    with StudyStore.open(study.store_path) as store:
        store.add_note("seed 2 looked odd", decision=None, rationale=None, run_ids=dropped[:1])
    assert main(["prune", str(path), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 stored run(s)" in out and "kept 1 run(s) that a decision note names" in out
    assert dropped[0] in _stored_ids(path) and dropped[1] not in _stored_ids(path)
