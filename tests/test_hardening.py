"""Hardening (issue 22): the CPU's matrix-instruction family in a run's record and the
checks that read it, run-time checks of what the tool patches in PEFT, edge-case data
and store writes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from adaptive_lora.cli import main
from adaptive_lora.environment import matrix_family
from adaptive_lora.study.runner import run_study
from adaptive_lora.study.spec import load_study

# ---------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def done_study(tmp_path_factory) -> Path:
    """A finished 4-run bf16 study of a tiny model (uniform, linear_decay × seeds 0, 1);
    bf16 by name, as `auto` is fp32 on a CPU without bf16 instructions."""
    from tiny import save_tiny, tiny_llama, write_tiny_study

    folder = tmp_path_factory.mktemp("hardening")
    model = save_tiny(tiny_llama(), folder / "model")
    train = {"max_steps": 2, "batch_size": 4, "threads": 1, "precision": "bf16"}
    path = write_tiny_study(folder, model, train=train)
    run_study(load_study(path), log=lambda line: None, quiet=True)
    return path


def copy_study(path: Path, to: Path) -> Path:
    """A copy of a study (its file and its out folder) that a test may change."""
    spec = yaml.safe_load(path.read_text())
    shutil.copytree(spec["out"], to / "out")
    copy = to / "study.yaml"
    copy.write_text(yaml.safe_dump({**spec, "out": str(to / "out")}, sort_keys=False))
    return copy


def edit_manifests(path: Path, change, where: str = "1") -> None:
    """Apply `change(manifest)` to the stored manifest of the runs matching SQL `where`."""
    store = Path(yaml.safe_load(path.read_text())["out"]) / "study.db"
    with sqlite3.connect(store) as conn:
        for run_id, text in conn.execute(f"SELECT id, manifest FROM runs WHERE {where}"):
            manifest = json.loads(text)
            change(manifest)
            conn.execute(
                "UPDATE runs SET manifest = ? WHERE id = ?", (json.dumps(manifest), run_id)
            )
    conn.close()


def table(path: Path, sql: str) -> list[tuple]:
    store = Path(yaml.safe_load(path.read_text())["out"]) / "study.db"
    conn = sqlite3.connect(store)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def the_error_line(capsys) -> str:
    """The one line the command said its error in (loading a model also draws progress
    bars on stderr): the last line, and the only one of the tool's."""
    lines = capsys.readouterr().err.strip().splitlines()
    ours = [line for line in lines if line.startswith("adaptive-lora")]
    assert len(ours) == 1 and lines[-1] == ours[0], lines
    return ours[0]


# A family the stored runs claim that this machine is not: the tests run on Xeons with AMX
# and on EPYCs without it, so "another family" must be chosen against the host.
HERE = matrix_family(torch.device("cpu"))
ANOTHER = "AVX512-bf16" if HERE == "AMX-bf16" else "AMX-bf16"


def set_family(family: str | None):
    def change(manifest: dict) -> None:
        if family is None:
            manifest.pop("matrix_family", None)
        else:
            manifest["matrix_family"] = family

    return change


# ---------------------------------------------------------------------- the CPU's family


@pytest.mark.parametrize(
    "flags, family",
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "AMX-bf16"),
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX512-bf16"),
        ({"avx2", "avx512f"}, "AVX512"),
        ({"avx2", "fma"}, "AVX2"),
    ],
)
def test_matrix_family_is_the_widest_instructions_the_cpu_has(flags, family):
    assert matrix_family(torch.device("cpu"), frozenset(flags)) == family


def test_a_runs_manifest_names_the_family_and_kernel_path(done_study):
    spec = yaml.safe_load(done_study.read_text())
    for run_dir, text in table(done_study, "SELECT run_dir, manifest FROM runs"):
        stored = json.loads(text)
        assert stored["matrix_family"] == matrix_family(torch.device("cpu"))
        assert stored["kernel_path"].startswith("ATen ")
        on_disk = json.loads((Path(spec["out"]) / run_dir / "manifest.json").read_text())
        assert on_disk["matrix_family"] == stored["matrix_family"]


def test_report_refuses_bf16_runs_of_two_families_unless_allowed(done_study, tmp_path, capsys):
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, set_family("AMX-bf16"), "label = 'uniform'")
    edit_manifests(path, set_family("AVX512-bf16"), "label != 'uniform'")
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert (
        "matrix-instruction family (bf16)" in err and "AMX-bf16" in err and "--allow-mixed" in err
    )
    assert not out.exists()
    assert main(["report", str(path), "--out", str(out), "--allow-mixed"]) == 0
    assert "pooled runs that differ in matrix-instruction family" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    top = text[: text.index("## Test loss")]  # said before any result
    assert "Warning: runs from different environments are pooled" in top
    assert "matrix-instruction family (bf16) differs" in top


def test_runs_without_a_family_are_never_refused(done_study, tmp_path, capsys):
    """Runs recorded before families were: unknown, beside a known one or alone."""
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, set_family(None), "label = 'uniform'")
    edit_manifests(path, set_family("AMX-bf16"), "label != 'uniform'")
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    assert "Warning: runs from different" not in (tmp_path / "report" / "report.md").read_text()


def test_fp32_runs_of_two_families_are_pooled(done_study, tmp_path):
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, lambda m: m.update(precision="fp32", matrix_family="AMX-bf16"))
    edit_manifests(path, set_family("AVX2"), "label = 'uniform'")
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0


def _reopen_one_run(path: Path) -> str:
    """Make one done run pending again (as if it had not run yet); its id."""
    store = Path(yaml.safe_load(path.read_text())["out"]) / "study.db"
    with sqlite3.connect(store) as conn:
        (run_id,) = conn.execute("SELECT id FROM runs ORDER BY position LIMIT 1").fetchone()
        conn.execute("UPDATE runs SET status = 'pending' WHERE id = ?", (run_id,))
    conn.close()
    return run_id


def test_run_stops_before_any_run_on_another_family(done_study, tmp_path, capsys):
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, set_family(ANOTHER))
    reopened = _reopen_one_run(path)
    before = table(path, "SELECT * FROM attempts")
    assert main(["run", str(path), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert f"this machine computes bf16 with {HERE}" in err and f"{ANOTHER} (3 run(s))" in err
    assert table(path, "SELECT * FROM attempts") == before  # nothing started
    assert main(["run", str(path), "--quiet", "--allow-mixed"]) == 0
    assert "going on (--allow-mixed)" in capsys.readouterr().out
    assert table(path, f"SELECT status FROM runs WHERE id = '{reopened}'") == [("done",)]


def test_status_and_dry_run_say_beforehand_that_run_would_stop_here(done_study, tmp_path, capsys):
    path = copy_study(done_study, tmp_path)
    _reopen_one_run(path)
    for command in (["status", str(path)], ["run", str(path), "--dry-run"]):
        assert main(command) == 0
        assert "would stop" not in capsys.readouterr().out  # stored on this machine's family
    edit_manifests(path, set_family(ANOTHER))
    before = table(path, "SELECT * FROM attempts")
    for command in (["status", str(path)], ["run", str(path), "--dry-run"]):
        assert main(command) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("note: `run` here would stop before its first run")
        assert f"computes bf16 with {HERE}" in last and f"{ANOTHER} (3 run(s))" in last
    assert main(["run", str(path), "--dry-run", "--allow-mixed"]) == 0
    assert capsys.readouterr().out.strip().endswith("`run --allow-mixed` goes on")
    assert table(path, "SELECT * FROM attempts") == before  # planning started nothing
    edit_manifests(path, set_family(None))  # runs of unknown family: nothing to say
    assert main(["status", str(path)]) == 0
    assert "would stop" not in capsys.readouterr().out


def test_run_stops_before_switching_precision_and_says_so_beforehand(done_study, tmp_path, capsys):
    """`auto` resolves per machine; a study's runs must not change precision unannounced."""
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, lambda m: m.update(precision="fp32"))  # as if begun without bf16
    _reopen_one_run(path)
    assert main(["status", str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("note: `run` here would stop before its first run")
    before = table(path, "SELECT * FROM attempts")
    assert main(["run", str(path), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert "`precision: bf16` computes in bf16-autocast-cpu on this machine" in err
    assert "stored runs computed in fp32 (3 run(s))" in err and "--allow-mixed" in err
    assert table(path, "SELECT * FROM attempts") == before  # nothing started


def test_bf16_on_a_cpu_without_bf16_instructions_is_named(done_study, monkeypatch):
    from adaptive_lora.compute import precision
    from adaptive_lora.study.machine_check import slow_bf16_line

    study = load_study(done_study)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert "no bf16 instructions" in slow_bf16_line(study)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert slow_bf16_line(study) is None


def test_run_does_not_stop_for_runs_of_unknown_family_or_nothing_to_run(done_study, tmp_path):
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, set_family(ANOTHER))
    assert main(["run", str(path), "--quiet"]) == 0  # nothing left to run: nothing to stop
    edit_manifests(path, set_family(None))
    _reopen_one_run(path)
    assert main(["run", str(path), "--quiet"]) == 0


def test_rerun_names_a_family_difference_and_differences_in_seed_sds(done_study, tmp_path, capsys):
    path = copy_study(done_study, tmp_path)
    edit_manifests(path, set_family(ANOTHER))
    (run_id, text) = table(path, "SELECT id, metrics FROM runs WHERE label = 'uniform'")[0]
    metrics = json.loads(text)
    metrics["test_loss"] += 1e-3  # as if the stored machine had computed another number
    store = Path(yaml.safe_load(path.read_text())["out"]) / "study.db"
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET metrics = ? WHERE id = ?", (json.dumps(metrics), run_id))
    conn.close()
    assert main(["rerun", str(path), run_id]) == 1
    out = capsys.readouterr().out
    assert f"matrix family      DIFFERS  stored {ANOTHER}, now {HERE}" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("test_loss "))
    assert "DIFFERS" in line and "(Δ -0.001 = " in line and " sd)" in line, line
    assert "over the 2 seeds of this strategy, budget and rate" in out


# ---------------------------------------------------------------------- patched PEFT internals


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    from tiny import save_tiny, tiny_llama

    return save_tiny(tiny_llama(), tmp_path_factory.mktemp("model") / "m")


def train(folder: str, out: Path, strategy: str) -> int:
    """A 2-step run in bf16 (by name: the patched fast step is bf16's, and `auto` is fp32 on
    a CPU without bf16 instructions)."""
    flags = ["--max-steps", "2", "--n-train", "8", "--set", "eval.n_generate=1", "--quiet",
             "--precision", "bf16"]  # fmt: skip
    return main(["train", "--model", folder, "--out", str(out), "--strategy", strategy, *flags])


def _allocator_without_element_score(monkeypatch):
    from peft.tuners.adalora.layer import RankAllocator

    monkeypatch.delattr(RankAllocator, "_element_score")


def _allocator_with_another_mask_signature(monkeypatch):
    from peft.tuners.adalora.layer import RankAllocator

    monkeypatch.setattr(RankAllocator, "mask_to_budget", lambda self, model, budget, k: None)


def _allocator_that_masks_elsewhere(monkeypatch):
    from peft.tuners.adalora.layer import RankAllocator

    monkeypatch.setattr(RankAllocator, "update_and_allocate", lambda self, model, global_step, force_mask=False: (0, None))  # fmt: skip


def _lora_linear_without_its_forward(monkeypatch):
    from peft.tuners.lora.layer import Linear

    monkeypatch.delattr(Linear, "forward")  # nn.Module's forward (input) is found instead


def _lora_layers_without_variants(monkeypatch):
    from peft.tuners.lora.layer import Linear

    original = Linear.update_layer

    def update_layer(self, *args, **kwargs):
        original(self, *args, **kwargs)
        vars(self).pop("lora_variant", None)

    monkeypatch.setattr(Linear, "update_layer", update_layer)


@pytest.mark.parametrize(
    "break_peft, strategy, said",
    [
        (_allocator_without_element_score, "adalora", "RankAllocator._element_score is missing"),
        (
            _allocator_with_another_mask_signature,
            "adalora",
            "mask_to_budget takes (model, budget, k)",
        ),
        (_allocator_that_masks_elsewhere, "adalora", "no longer calls self.mask_to_budget"),
        (_lora_linear_without_its_forward, "uniform", "Linear.forward takes (input), not (x, args"),
        (_lora_layers_without_variants, "uniform", "LoRA Linear layers have no lora_variant"),
    ],
)
def test_a_peft_whose_patched_internals_changed_is_a_one_line_error(
    model_folder, tmp_path, monkeypatch, capsys, break_peft, strategy, said
):
    import peft

    break_peft(monkeypatch)
    assert train(model_folder, tmp_path / "out", strategy) == 2
    err = the_error_line(capsys)
    assert f"PEFT {peft.__version__}: " in err and said in err, err
    assert "pip install peft==0.21.2" in err


# ---------------------------------------------------------------------- edge-case data, store writes

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


def _lines(*records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


# name → (file contents, what the one-line error says); each file is refused.
MALFORMED = {
    "truncated.json": (json.dumps([GOOD] * 3)[:-20], "not valid JSON at line 1"),
    "truncated.jsonl": (_lines(GOOD) + json.dumps(GOOD)[:25], "line 2: not valid JSON"),
    "number.json": (json.dumps([GOOD, {"instruction": 5, "output": "x"}]), "record 1: field 'instruction' is a JSON number"),
    "list.jsonl": (_lines(GOOD, {"instruction": "a", "output": ["x"]}), "line 2: field 'output' is a JSON list"),
    "null_field.json": (json.dumps([{"instruction": None, "output": "x"}]), "field 'instruction' is a JSON null"),
    "null_record.json": (json.dumps([GOOD, None]), "record 1: is a JSON null, expected an object"),
    "missing.jsonl": (_lines({"instruction": "a"}), "missing required field 'output'"),
    "object.json": (json.dumps({"data": [GOOD]}), "the top level is a JSON object, expected a list"),
    "latin1.json": ('[{"instruction": "café", "output": "x"}]'.encode("latin-1"), "not UTF-8 text"),
    "binary.jsonl": (bytes(range(256)) * 4, "not UTF-8 text"),
    "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "empty.json": ("  \n", "the file is empty"),
    "no_records.json": ("[]", "contains zero records"),
}  # fmt: skip


def _write_data(folder: Path, name: str, contents: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        path.write_text(contents, encoding="utf-8")
    return path


def train_on(model: str, data: Path, out: Path, *extra: str) -> int:
    flags = ["--max-steps", "1", "--n-train", "8", "--set", "data.n_val=4", *extra]
    flags += ["--set", "data.n_test=4", "--set", "eval.n_generate=1", "--quiet"]
    return main(["train", "--model", model, "--data", str(data), "--out", str(out), *flags])


def test_malformed_data_files_are_refused_in_one_line_with_nothing_written(
    model_folder, tmp_path, capsys
):
    for name, (contents, said) in MALFORMED.items():
        data = _write_data(tmp_path / "data", name, contents)
        out = tmp_path / "out" / name
        assert train_on(model_folder, data, out) == 2, name
        err = the_error_line(capsys)
        assert err.startswith(f"adaptive-lora: error: {data}: ") and said in err, (name, err)
        assert not out.exists() or not any(out.iterdir()), name


def test_blank_fields_and_a_huge_record_are_kept_with_one_warning_per_kind(
    model_folder, tmp_path, capsys, monkeypatch
):
    from adaptive_lora.data import sources

    monkeypatch.setattr(sources, "_WARNED_EMPTY", set())
    monkeypatch.setattr(sources, "_WARNED_BLANK", set())
    blank = {"instruction": " \t ", "input": "", "output": ""}
    huge = {"instruction": "a" * 2_000_000, "output": "x"}  # longer than max_length: dropped
    data = _write_data(tmp_path, "blank.jsonl", _lines(blank, blank, huge, *[GOOD] * 17))
    # Training first: the huge record (third of the file) lands in the training split.
    assert train_on(model_folder, data, tmp_path / "out", "--set", "data.split=train_first") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {data}: 2 of 20 records have an empty output; they are kept and teach the "
        "model to stop at once (remove them if unintended)",
        f"warning: {data}: 2 of 20 records have a blank instruction; they are kept and teach "
        "answers to no question (remove them if unintended)",
    ]
    (manifest,) = (tmp_path / "out").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["dropped_too_long"] == 1  # the huge record


def test_a_note_during_a_run_is_refused_in_one_line_and_writes_nothing(
    done_study, tmp_path, capsys, monkeypatch
):
    from adaptive_lora.cli import note
    from adaptive_lora.study.store import StudyLock

    monkeypatch.setattr(note, "LOCK_WAIT_S", 0.3)
    path = copy_study(done_study, tmp_path)
    study = load_study(path)
    lock = StudyLock(study.lock_path).acquire()  # what a `run` holds for its whole life
    try:
        assert main(["note", str(path), "mid-run"]) == 2
        err = one_error_line(capsys)
        assert "another `adaptive-lora run` is working on this study (pid" in err
        assert err.endswith("add the note when it has finished or been stopped")
        assert table(path, "SELECT count(*) FROM notes") == [(0,)]
    finally:
        lock.release()
    assert main(["note", str(path), "after the run"]) == 0
    assert table(path, "SELECT text FROM notes") == [("after the run",)]


def test_report_and_rerun_to_an_unusable_folder_are_one_line_errors(done_study, tmp_path, capsys):
    path = copy_study(done_study, tmp_path)
    (run_id,) = table(path, "SELECT id FROM runs LIMIT 1")[0]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["report", str(path), "--out", str(a_file)]) == 2
    assert "cannot write the report to" in one_error_line(capsys)
    assert main(["rerun", str(path), run_id, "--out", str(a_file)]) == 2
    assert f"--out {a_file}: File exists" in one_error_line(capsys)


def test_remaining_bad_inputs_are_one_line_errors(tmp_path, capsys):
    """A study path that is a folder, a non-UTF-8 study, a strategy parameter of the wrong
    type, a negative thread count: one line, exit 2."""
    from adaptive_lora.cli import main

    (tmp_path / "bad.yaml").write_bytes(b"name: \xff\xfe\n")
    cases = [
        (["run", str(tmp_path), "--dry-run"], "is a folder"),
        (["run", str(tmp_path / "bad.yaml"), "--dry-run"], "not UTF-8"),
        (["allocate", "--model", "smollm2-135m", "--strategy", "linear_decay", "--budget", "r8",
          "--param", "ratio=abc"], "must be a number"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    from adaptive_lora.config import RunConfig
    from adaptive_lora.errors import UserError

    with pytest.raises(UserError, match="train.threads must be >= 1"):
        RunConfig.from_dict({"train": {"threads": -1}})
