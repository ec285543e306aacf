"""Studies as factorial designs: model × task × size groups, cells, the regime report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adaptive_lora.cli import main
from adaptive_lora.errors import UserError
from adaptive_lora.study import LocalExecutor, load_study, run_study
from adaptive_lora.study.store import StudyStore

ROOT = Path(__file__).resolve().parent.parent


def _pilot(tmp_path: Path, model: str = "smollm2-135m", **changes) -> Path:
    """configs/regime-pilot.yaml with its own out folder (and, for runs, a tiny model)."""
    spec = yaml.safe_load((ROOT / "configs" / "regime-pilot.yaml").read_text())
    spec["tasks"][1]["data"]["source"] = "builtin"  # the Alpaca file lives outside the repo
    spec.update(model=model, out=str(tmp_path / "out"), **changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_pilot_expands_into_cells_and_pairs_within_each_group(tmp_path):
    study = load_study(_pilot(tmp_path), check_sources=False)
    assert [(g.task, g.n_train) for g in study.groups] == [
        ("arith", 256),
        ("arith", 1024),
        ("alpaca", 32),
        ("alpaca", 128),
    ]
    assert len(study.runs) == 4 * 3 * 2 and len(set(study.run_ids)) == 24
    arith = study.groups[0]
    assert arith.sections["eval"]["n_generate"] == 200  # every generated test item answered
    for spec in study.runs:
        group = next(g for g in study.groups if g.key == spec.group)
        assert spec.config.data.n_train == group.n_train
        assert spec.config.data.source.startswith("reasoning_gym:") == (group.task == "arith")


def test_groups_are_named_by_the_factors_that_vary(tmp_path):
    study = load_study(_pilot(tmp_path), check_sources=False)
    titles = study.group_titles()
    assert titles["smollm2-135m|arith|256"] == "task `arith`, n_train = 256"  # model is fixed
    assert study.group_titles(plain=True)["smollm2-135m|alpaca|128"] == "task alpaca, n_train = 128"
    assert list(titles) == [g.key for g in study.groups]


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"tasks": [{"name": "a", "data": {"source": "reasoning_gym:basic_arithmetc"}}]},
            "close names: basic_arithmetic",
        ),
        ({"tasks": [{"name": "a", "dta": {}}]}, "tasks\\[0\\]: unknown key"),
        (
            {
                "tasks": [
                    {"name": "a", "data": {"source": "builtin"}},
                    {"name": "b", "data": {"source": "builtin"}},
                ]
            },
            "same data settings",
        ),
        ({"alpaca_n_train": [32, 32]}, "a size appears twice"),
        ({"alpaca_n_train": [10_000]}, "ask for fewer"),
        ({"budgets": ["5k"]}, "uniform cannot spend|below"),
    ],
)
def test_bad_designs_are_one_line_errors_before_anything_is_written(
    tmp_path, changes, message, capsys
):
    spec = yaml.safe_load(_pilot(tmp_path).read_text())
    sizes = changes.pop("alpaca_n_train", None)
    if sizes is not None:
        spec["tasks"][1]["data"]["n_train"] = sizes
    spec.update(changes)
    if "tasks" in changes or "budgets" in changes:
        spec["data"] = {**spec["data"], "source": "builtin"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    if "budgets" in changes:  # a budget is checked against the model's modules at allocation
        from adaptive_lora.allocation.budget import resolve_budget
        from adaptive_lora.allocation.core import AllocationContext, allocate
        from adaptive_lora.model.inventory import build_inventory
        from tiny import tiny_llama

        inv = build_inventory(tiny_llama())
        with pytest.raises(UserError, match=message):
            allocate("uniform", AllocationContext(inv, resolve_budget("500", inv), min_rank=0))
        return
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err)
    assert not (tmp_path / "out").exists()


def test_a_study_file_edited_mid_study_is_refused(tmp_path):
    study = load_study(_pilot(tmp_path), check_sources=False)
    study.path.write_text(study.text + "\n# edited\n")
    with pytest.raises(UserError, match="changed while its study runs"):
        study.check_unchanged()


@pytest.mark.parametrize(
    "folder, config",
    [("tests/fixtures/quickstart", "study.yaml"), (".", "configs/alpaca-smollm2.yaml")],
)
def test_existing_studies_keep_their_run_ids(folder, config, monkeypatch):
    """The factorial schema expands the committed studies into their stored ids, every one."""
    monkeypatch.chdir(ROOT / folder)  # a study's `out` is relative to where it is run
    study = load_study(config, check_sources=False)
    with StudyStore.open(study.store_path, create=False) as store:
        stored = {row.id for row in store.rows()}
    assert set(study.run_ids) == stored and len(stored) in (12, 140)


def test_the_pilot_runs_end_to_end_on_a_tiny_model_and_reports_the_regime(tmp_path, monkeypatch):
    from tiny import save_tiny, tiny_llama

    model = save_tiny(tiny_llama(), tmp_path / "m")
    path = _pilot(
        tmp_path,
        model=model,
        data={
            "n_train": [8, 16],
            "n_val": 4,
            "data_seed": 0,
            "max_length": 400,
            "template": "alpaca",
        },
        budgets=["r1", "r2", "r4"],
        seeds=[0, 1],
        train={"batch_size": 4, "max_steps": 2, "lr": 2e-3, "threads": 1},
        # Stage 2 of a regime map: the other strategy only where the baseline's rank binds.
        strategies=["uniform", {"name": "linear_decay", "where": {"task": "arith"}}],
    )
    spec = yaml.safe_load(path.read_text())
    spec["tasks"][0]["data"].update(n_test=12, max_length=400, n_train=[8, 16])
    spec["tasks"][1]["data"].update(n_test=8, n_train=[8, 16])
    spec["tasks"][0]["eval"].update(max_new_tokens=3)
    spec["tasks"][1]["eval"].update(n_generate=2, max_new_tokens=3)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(path)
    summary = run_study(study, executor=LocalExecutor(), quiet=True, log=lambda line: None)
    assert len(summary.done) == 4 * 3 * 2 + 2 * 3 * 2  # linear_decay in the arith groups only
    with StudyStore.open(study.store_path, create=False) as store:
        rows = store.rows()
    arith = [r for r in rows if r.config["data"]["source"].startswith("reasoning_gym:")]
    items = arith[0].metrics["test_items"]
    assert len(items["loss"]) == len(items["task_score"]) == 12  # every test item, per item
    tokens, losses = items["tokens"], items["loss"]
    mean = sum(t * loss for t, loss in zip(tokens, losses)) / sum(tokens)
    assert mean == pytest.approx(arith[0].metrics["test_loss"], rel=1e-9)
    assert arith[0].metrics["task_score"] == pytest.approx(sum(items["task_score"]) / 12)
    assert all(r.metrics["eval_seconds"] > 0 for r in rows)  # timed after its blocks end
    with StudyStore.open(study.store_path, create=False) as store:
        store.add_note("Stage 2 declared in the arith groups", decision="linear_decay there")
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    # A note is the study's: once, before the groups' sections (it was once per group).
    assert text.count("## Decisions") == 1 and text.count("Stage 2 declared in") == 1
    assert text.index("## Decisions") < text.index("## Task `arith`, n_train = 8")
    assert text.index("## Answer") < text.index("## Where does rank matter?")
    assert text.index("## Where does rank matter?") < text.index("## Task `arith`, n_train = 8")
    assert "**Where rank matters.**" in text and "**Does allocation matter there?**" in text
    assert "gain per doubling" in text and "### Every strategy against the baseline" in text
    assert text.count("## Hypotheses") == 1 and text.index("## Hypotheses") < text.index(
        "## Answer"
    )
    assert (out / "figures" / "regime_heatmap.png").is_file()
    assert (out / "figures" / "regime_ladder.png").is_file()
    stats = __import__("json").loads((out / "stats.json").read_text())
    assert len(stats["regime"]) == 4 and all(len(e["ladder"]) == 3 for e in stats["regime"])
    alpaca = text[text.index("## Task `alpaca`, n_train = 8") :]
    assert "linear_decay" in text[: text.index("## Task `alpaca`")] and "linear_decay" not in alpaca


def test_where_runs_a_strategy_only_in_the_groups_it_names(tmp_path):
    strategies = [
        "uniform",
        {
            "name": "linear_decay",
            "budgets": ["r1", "r4"],
            "where": {"task": "arith", "n_train": 1024},
        },
    ]
    study = load_study(_pilot(tmp_path, strategies=strategies), check_sources=False)
    decay = [(s.group, s.budget) for s in study.runs if s.label == "linear_decay"]
    assert decay == [("smollm2-135m|arith|1024", "r1"), ("smollm2-135m|arith|1024", "r4")]
    assert len(study.runs) == 4 * 3 + 2
    assert [study.for_group(g).labels for g in study.groups] == [
        ["uniform"],
        ["uniform", "linear_decay"],
        ["uniform"],
        ["uniform"],
    ]


@pytest.mark.parametrize(
    "where, baseline_where, message",
    [
        (
            {"task": "arithmetic"},
            False,
            r"where\.task: \['arithmetic'\] not among the study's levels \(arith, alpaca\)",
        ),
        ({"n_train": 2000}, False, r"where\.n_train: \[2000\] not among"),
        ({"size": 256}, False, r"strategies\[1\]\.where: unknown key"),
        ({"task": "alpaca", "n_train": 256}, False, "matches no group"),
        ({"task": "arith"}, True, "the baseline 'uniform' runs in every group"),
    ],
)
def test_a_bad_where_is_one_line(tmp_path, where, baseline_where, message, capsys):
    first = {"name": "uniform", "where": where} if baseline_where else "uniform"
    path = _pilot(tmp_path, strategies=[first, {"name": "linear_decay", "where": where}])
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_status_shows_one_block_per_group(tmp_path):
    from adaptive_lora.cli.status import format_status

    text = format_status(load_study(_pilot(tmp_path), check_sources=False))
    assert "task arith, n_train = 256:" in text and "task alpaca, n_train = 128:" in text
    assert "24 runs: 0 done" in text


def test_the_estimate_prices_each_group_by_its_own_runs_and_size(tmp_path):
    """Finished runs of one group price that group at their mean; a group with none yet is
    priced by its size at the measured seconds per heuristic second; runs go to the first
    worker to come free."""
    from types import SimpleNamespace

    from adaptive_lora.study.plan import estimate, heuristic_seconds

    study = load_study(_pilot(tmp_path), check_sources=False)
    small, large = study.groups[0].key, study.groups[1].key  # arith 256, arith 1024
    finished = [s for s in study.runs if s.group == small][:2]
    rows = {
        s.run_id: SimpleNamespace(status="done", seconds=seconds, config=s.config.to_dict())
        for s, seconds in zip(finished, (90.0, 110.0))
    }
    todo_small = [s for s in study.runs if s.group == small][2:]
    assert estimate(study, rows, todo_small).seconds == pytest.approx(100.0 * len(todo_small))
    todo_large = [s for s in study.runs if s.group == large]
    ratio = 100.0 / heuristic_seconds(finished[0].config)
    one = ratio * heuristic_seconds(todo_large[0].config)
    assert one > 2 * 100.0  # four times the steps: not priced at the small group's mean
    assert estimate(study, rows, todo_large).seconds == pytest.approx(one * len(todo_large))
    both = estimate(study, rows, todo_small[:1] + todo_large[:2], at_once=2)
    assert both.seconds == pytest.approx(max(one, 100.0 + one))


def test_run_only_runs_the_groups_named_and_leaves_the_rest_pending(tmp_path, capsys):
    """`--only task=alpaca --only n_train=32`: that group's runs, the reporting runs its
    tuning opens among them, and nothing else; a later plain `run` does the rest."""
    from test_study import FakeRuns, quiet_run

    from adaptive_lora.cli.run import format_dry_run

    tuned = {"lr_candidates": [1e-3, 2e-3], "lr_tuning_seeds": [0], "lr_extend": 0, "seeds": [1, 2]}
    study = load_study(_pilot(tmp_path, **tuned), check_sources=False)
    only = study.groups_named(["task=alpaca", "n_train=32"])
    assert only == {"smollm2-135m|alpaca|32"}
    text = format_dry_run(study, retry_failed=False, only=only)
    assert "12 would run; 36 more in the groups --only leaves out" in text
    assert "then 12 reporting run(s)" in text  # that group's 2 strategies × 3 budgets × 2 seeds
    fake = FakeRuns()
    quiet_run(study, fake, only=only)
    with StudyStore.open(study.store_path) as store:
        rows = store.rows()
    ran = {r.id for r in rows if r.status == "done"}
    assert len(ran) == len(fake.calls) == 24  # 12 tuning + the 12 reporting runs they opened
    group = {r.id: study.group_of(r.config).key for r in rows}
    assert {group[i] for i in ran} == only
    assert all(r.status == "pending" for r in rows if group[r.id] not in only)
    quiet_run(load_study(study.path, check_sources=False), fake)
    with StudyStore.open(study.store_path) as store:
        assert {r.status for r in store.rows()} == {"done"} and len(store.rows()) == 96


@pytest.mark.parametrize(
    "only, message",
    [
        (["task=alpac"], r"--only 'task=alpac': the study's task levels are arith, alpaca"),
        (["size=32"], r"--only 'size=32': write FACTOR=LEVEL with FACTOR one of model, task"),
        (["task=arith", "n_train=32"], r"no group of the study has all of these"),
    ],
)
def test_a_bad_only_is_one_line_before_anything_runs(tmp_path, only, message, capsys):
    path = _pilot(tmp_path)
    args = ["run", str(path), "--dry-run"] + [x for pair in only for x in ("--only", pair)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err


def test_only_takes_levels_of_one_factor_as_alternatives(tmp_path):
    study = load_study(_pilot(tmp_path), check_sources=False)
    both = study.groups_named(["n_train=32", "n_train=256", "task=alpaca"])
    assert both == {"smollm2-135m|alpaca|32"}  # n_train 256 is an arithmetic size only
    assert study.groups_named(["task=arith", "task=alpaca"]) == {g.key for g in study.groups}
