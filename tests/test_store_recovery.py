"""A damaged store is refused and left as it is; the backup and `restore` put it back."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main
from adaptive_lora.config import RunConfig
from adaptive_lora.records import METRIC_KEYS, RunResult, write_json
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.restore import recovered_row
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study
from adaptive_lora.study.store import StudyStore, backup_path, store_damage

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart"


# ---------------------------------------------------------------------- damage


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 100)


def _truncated_by_pages(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 3 * 4096)


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _foreign_sqlite(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something (a, b)")
    conn.commit()
    conn.close()


def _corrupted_row(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE runs SET metrics = substr(metrics, 1, 100) WHERE id = "
        "(SELECT id FROM runs WHERE status = 'done' ORDER BY position LIMIT 1 OFFSET 2)"
    )
    conn.commit()
    conn.close()


DAMAGE = {
    "empty": (_empty, "empty: 0 bytes"),
    "truncated": (_truncated, "is not a whole number of 4,096-byte pages"),
    "truncated by whole pages": (_truncated_by_pages, "truncated: "),
    "random bytes": (_random_bytes, "not an SQLite database"),
    "foreign SQLite": (_foreign_sqlite, "without the study's table(s) runs, attempts"),
    "a corrupted row": (_corrupted_row, "stored JSON that does not decode: run "),
}


@pytest.fixture
def committed_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the committed quickstart study (its store, no run folders), cwd there."""
    work = tmp_path / "quickstart"
    shutil.copytree(FIXTURE, work)
    shutil.rmtree(work / "report")
    monkeypatch.chdir(work)
    return work


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_store_is_refused_in_one_line_and_left_as_it_is(committed_copy, capsys, kind):
    damage, what = DAMAGE[kind]
    store = committed_copy / "study" / "study.db"
    damage(store)
    before = _snapshot(store.parent)
    for command in (["status"], ["report"], ["run"], ["run", "--dry-run"], ["note"]):
        argv = [command[0], "study.yaml", *command[1:]] + (
            ["a note"] if command == ["note"] else []
        )
        assert main(argv) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"adaptive-lora: error: study/study.db is damaged ({''}"), err
        assert what in err, err
        # No backup, no run folders beside a committed store: the fix is a copy.
        assert "no backup and no run folders" in err and "git checkout -- study/study.db" in err
        assert _snapshot(store.parent) == before, command  # bytes and mtimes, no new file
    assert not (committed_copy / "study" / "report").exists()
    assert not (committed_copy / "study" / "runs").exists()
    if kind == "a corrupted row":  # named by run id
        assert re.search(
            r"does not decode: run (uniform|linear_decay)-r\d+-s\d-\w+ \(metrics\)", err
        )


def test_the_refusal_names_the_restore_command_when_a_backup_or_run_folders_exist(
    committed_copy, capsys
):
    store = committed_copy / "study" / "study.db"
    (committed_copy / "study" / "runs" / "uniform-r8-s1-x").mkdir(parents=True)
    _empty(store)
    assert main(["status", "study.yaml"]) == 2
    err = capsys.readouterr().err
    assert "it has no backup; rebuild it from the run folders with " in err
    assert "`adaptive-lora restore study.yaml --from-runs`" in err
    shutil.copyfile(FIXTURE / "study" / "study.db", backup_path(store))
    assert main(["report", "study.yaml"]) == 2
    err = capsys.readouterr().err
    assert "restore it from its backup (study.db.backup, " in err
    assert "with `adaptive-lora restore study.yaml`" in err


def test_a_missing_store_is_nothing_yet_and_only_run_creates_it(committed_copy, capsys):
    (committed_copy / "study" / "study.db").unlink()
    assert main(["status", "study.yaml"]) == 0
    assert "(nothing has run yet)" in capsys.readouterr().out
    assert main(["report", "study.yaml"]) == 2
    assert "has no store at study/study.db yet" in capsys.readouterr().err
    assert not (committed_copy / "study" / "study.db").exists()


def test_a_sound_store_opens_and_reading_it_leaves_no_journal_behind(committed_copy):
    store = committed_copy / "study" / "study.db"
    before = _snapshot(store.parent)
    assert store_damage(store) is None
    assert _snapshot(store.parent) == before


def test_a_new_store_is_never_seen_half_made(tmp_path):
    path = tmp_path / "out" / "study.db"
    with StudyStore.open(path) as store:
        assert store.rows() == []
    assert store_damage(path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["study.db"]


# ---------------------------------------------------------------------- backup and restore


class FolderRuns:
    """A stand-in for `execute_run` that leaves a run folder as a real run does: its
    config.yaml, metrics.json and manifest.json (a failure with its reason)."""

    def __init__(self, fail: set[tuple[str, int]] = frozenset()):
        self.fail = fail

    def __call__(self, config, out_root, *, run_id=None, loaded=None, quiet=False):
        run_dir = Path(out_root) / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
        manifest = {"run_id": run_id, "started": "2026-01-02T03:04:05+00:00", "seed": config.seed}
        if (config.allocation.strategy, config.seed) in self.fail:
            manifest.update(status="failed", error="loss is nan at step 1",
                            ended="2026-01-02T03:04:09+00:00")  # fmt: skip
            write_json(run_dir / "manifest.json", manifest)
            return RunResult(run_id, run_dir, "failed", {}, manifest, "loss is nan at step 1")
        metrics = {k: None for k in METRIC_KEYS}
        metrics.update(
            test_loss=2.0 + 0.01 * config.seed, val_loss=2.0 + config.train.lr,
            val_ppl=float("nan"), train_loss_curve=[[1, 2.5]], test_items={"loss": [1.0, 2.0]},
        )  # fmt: skip
        manifest.update(status="done", ended="2026-01-02T03:04:15+00:00", hostname="h")
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "manifest.json", manifest)
        return RunResult(run_id, run_dir, "done", metrics, manifest)


def _study(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "t",
        "model": "fake/model",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, "max_length": 32},
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay"],
        "seeds": "0..2",
        "train": {"max_steps": 1},
        "out": str(tmp_path / "out"),
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(path: Path, runs: FolderRuns) -> None:
    executor = LocalExecutor(runs, load_model=lambda spec: None)
    run_study(load_study(path), executor=executor, log=lambda line: None)


def _rows(path: Path) -> dict[str, dict]:
    with StudyStore.open(Path(yaml.safe_load(path.read_text())["out"]) / "study.db") as store:
        return {row.id: row.__dict__ for row in store.rows()}


def _same(a, b) -> bool:  # NaN equals NaN in a stored number
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_the_runner_keeps_a_whole_backup_after_every_run(tmp_path):
    path = _study(tmp_path)
    _run(path, FolderRuns())
    store = tmp_path / "out" / "study.db"
    backup = backup_path(store)
    assert store_damage(backup) is None
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'done'").fetchone()[0] == 6
    conn.close()
    leftovers = [p.name for p in store.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [".lock"]


def test_restore_from_the_backup_refuses_a_sound_store_unless_forced(tmp_path, capsys):
    path = _study(tmp_path)
    _run(path, FolderRuns(fail={("linear_decay", 1)}))
    before = _rows(path)
    store = tmp_path / "out" / "study.db"
    assert main(["restore", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is sound (5 done, 1 failed): nothing to restore; `--force`" in err
    _truncated(store)
    damaged = store.read_bytes()
    assert main(["status", str(path)]) == 2
    capsys.readouterr()
    assert main(["restore", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"restored {store} from its backup of " in out and "5 done, 1 failed" in out
    kept = [p for p in store.parent.iterdir() if p.name.startswith("study.db.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # the damaged file is kept
    assert _rows(path) == before
    assert main(["status", str(path)]) == 0
    assert main(["restore", str(path), "--force"]) == 0
    assert any(p.name.startswith("study.db.replaced-") for p in store.parent.iterdir())


def test_restore_without_a_backup_says_to_rebuild_from_the_run_folders(tmp_path, capsys):
    path = _study(tmp_path)
    _run(path, FolderRuns())
    store = tmp_path / "out" / "study.db"
    backup_path(store).unlink()
    _empty(store)
    assert main(["restore", str(path)]) == 2
    assert "`--from-runs` rebuilds the store from the run folders" in capsys.readouterr().err
    assert store.read_bytes() == b""


# What `restore --from-runs` brings back equal; the rest (attempt history, pids, exact run
# times) only the store held.
RECOVERED = ("id", "position", "label", "strategy", "budget", "seed", "lr", "status",
             "reason", "config", "metrics", "manifest", "run_dir")  # fmt: skip


def test_rebuilt_from_the_run_folders_the_rows_come_back_equal(tmp_path, capsys):
    # Tuning on seed 0 at two rates, so labels, order and the opened runs come from the
    # study expanded on the recovered rows; one run failed, one never ran.
    path = _study(tmp_path, lr_candidates=[1e-3, 2e-3], lr_tuning_seeds=[0], seeds="1..2")
    _run(path, FolderRuns(fail={("linear_decay", 2)}))
    before = _rows(path)
    store = tmp_path / "out" / "study.db"
    done = [row for row in before.values() if row["status"] == "done"]
    last = max(done, key=lambda r: r["position"])
    shutil.rmtree(tmp_path / "out" / last["run_dir"])  # its folder lost: pending again
    _random_bytes(store)
    backup_path(store).unlink()
    assert main(["restore", str(path), "--from-runs"]) == 0
    out = capsys.readouterr().out
    assert "not in the run folders, so not restored: each run's earlier attempts" in out
    after = _rows(path)
    assert set(after) == set(before)
    for run_id, row in before.items():
        if run_id == last["id"]:
            assert after[run_id]["status"] == "pending" and after[run_id]["metrics"] == {}
            continue
        for key in RECOVERED:
            assert _same(after[run_id][key], row[key]), (run_id, key)
        assert after[run_id]["seconds"] == (4.0 if row["status"] == "failed" else 10.0)
    assert main(["status", str(path)]) == 0
    assert "1 failed" in capsys.readouterr().out


def test_a_real_run_folder_gives_its_stored_row_back(tmp_path):
    """The files a real run writes (config.yaml, metrics.json, manifest.json) hold every
    JSON column of its row, NaNs and curves included."""
    from tiny import save_tiny, tiny_llama, write_tiny_study

    model = save_tiny(tiny_llama(), tmp_path / "model")
    path = write_tiny_study(tmp_path, model, strategies=["uniform"], seeds=[0])
    run_study(load_study(path), log=lambda line: None, quiet=True)
    (row,) = _rows(path).values()
    again = recovered_row(tmp_path / "out" / "runs" / row["id"])
    for key in RECOVERED:
        assert _same(getattr(again, key), row[key]), key
    assert RunConfig.from_dict(again.config).run_id() == row["id"]
