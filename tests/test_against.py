"""`report --against`: a study's decisions beside another study's, cell by cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from adaptive_lora.analysis.ladder import gain_per_doubling
from adaptive_lora.cli import main
from adaptive_lora.report.against import (
    _merged,
    against_lines,
    compare_studies,
    decision_word,
    matched_groups,
    summary_line,
)

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart"


def _cell(group, strategy, mean, decision=None, significant=False, budget="r4"):
    return {"group": group, "title": group, "budget": budget, "strategy": strategy, "n": 10,
            "mean_diff": mean, "ci_t": [mean - 0.001, mean + 0.001], "d_z": 0.0,
            "p_t_holm": 0.5, "significant": significant, "decision": decision}  # fmt: skip


def _point(budget, mean=1.5, n=10):
    return {"budget": budget, "params": 1.0,
            "test_loss": {"mean": mean, "ci_t": [mean - 0.1, mean + 0.1], "n": n, "values": {}}}  # fmt: skip


def test_a_decision_is_the_designs_else_the_holm_tests_direction():
    assert decision_word(_cell("g", "a", -0.002, decision="superior")) == "beats"
    assert decision_word(_cell("g", "a", 0.0, decision="equivalent")) == "equivalent"
    assert decision_word(_cell("g", "a", 0.0, decision="continue")) == "open"
    assert decision_word(_cell("g", "a", -0.002, significant=True)) == "beats (Holm)"
    assert decision_word(_cell("g", "a", 0.002, significant=True)) == "loses (Holm)"
    assert decision_word(_cell("g", "a", 0.002)) == "no difference (Holm)"


def test_groups_match_on_equal_data_settings_whatever_the_model():
    def group(key, n_train):
        return SimpleNamespace(key=key, sections={"data": {"source": "x.json", "n_train": n_train}})

    here = SimpleNamespace(groups=[group("gemma|data|100", 100)])
    there = SimpleNamespace(groups=[group("smol|x|100", 100), group("smol|x|400", 400)])
    assert matched_groups(here, there) == [("gemma|data|100", "smol|x|100")]


def test_only_shared_cells_are_compared_and_disagreements_are_named():
    here = [_cell("h", "a", -0.002, "superior"), _cell("h", "b", 0.0, "equivalent"),
            _cell("h", "c", 0.0, "equivalent"), _cell("h", "a", 0.0, "equivalent", budget="r8")]  # fmt: skip
    there = [_cell("t", "a", 0.0, "equivalent"), _cell("t", "b", 0.0, "equivalent"),
             _cell("other", "c", 0.0, "equivalent")]  # fmt: skip
    ladder = {"gain_per_doubling": gain_per_doubling([]), "ladder": [_point("r4")]}
    comparison = compare_studies(
        "orig",
        [("h", "t")],
        ([{**ladder, "group": "h"}], here),
        ([{**ladder, "group": "t"}], there),
    )
    # c's match is in a group not paired with h; a at r8 has no counterpart there.
    assert [(r["here"]["strategy"], r["agree"]) for r in comparison["rows"]] == [
        ("a", False),
        ("b", True),
    ]
    point = {"budget": "r4", "lr": None, "test_loss": {"mean": 1.5, "ci_t": [1.4, 1.6], "n": 10},
             "step": None}  # fmt: skip
    none = gain_per_doubling([]).overall
    assert comparison["ladders"] == [[{"budgets": ["r4"], "gain": none, "points": [point]}] * 2]
    assert summary_line(comparison) == (
        "agree on 1 of 2 comparisons (b); differ on a (beats here, equivalent there)"
    )


def test_the_report_sets_a_study_beside_another(tmp_path, monkeypatch, capsys):
    """The committed quickstart study against itself agrees everywhere; the section, the
    printed summary and stats.json say so."""
    work = tmp_path / "quickstart"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)
    assert main(["report", "study.yaml", "--out", "again", "--against", "study.yaml"]) == 0
    printed = capsys.readouterr().out
    assert "against quickstart: agree on 1 of 1 comparisons (linear_decay)" in printed
    text = (work / "again" / "report.md").read_text()
    section = text.split("## Against `quickstart`", 1)[1].split("\n## ", 1)[0]
    assert "| r8 | linear_decay |" in section and "| yes |" in section
    assert "adaptive-lora report study.yaml --out again --against study.yaml" in text
    against = json.loads((work / "again" / "stats.json").read_text())["against"]
    assert against["groups"] == [["smollm2-135m|data|96", "smollm2-135m|data|96"]]
    assert [row["agree"] for row in against["rows"]] == [True]
    # Against itself every run is in both stores and equal to the last digit.
    same = against["same_runs"]
    assert same["n"] >= 2 and same["metrics"]["test_loss"]["equal"] == same["n"]
    assert f"{same['n']} run(s) in both: test loss Δ sd 0.0000" in printed
    assert "**The same runs in both studies.**" in section


def test_another_study_without_a_store_is_one_line_and_nothing_written(
    tmp_path, monkeypatch, capsys
):
    work = tmp_path / "quickstart"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)
    other = (work / "study.yaml").read_text().replace("out: study\n", "out: elsewhere\n")
    (work / "other.yaml").write_text(other.replace("name: quickstart", "name: other"))
    assert main(["report", "study.yaml", "--out", "again", "--against", "other.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "study other has no store" in err
    assert not (work / "again").exists()


def test_equal_group_keys_keep_each_studys_own_ladder():
    """A confirmation of the same cell has the same group key as its original."""
    mine = {"group": "g", "ladder": [_point("r4")],
            "gain_per_doubling": gain_per_doubling([])}  # fmt: skip
    theirs = {**mine, "ladder": [_point("r2"), _point("r4")]}
    comparison = compare_studies("orig", [("g", "g")], ([mine], []), ([theirs], []))
    assert [entry["budgets"] for entry in comparison["ladders"][0]] == [["r4"], ["r2", "r4"]]


def test_two_studies_of_the_baseline_alone_meet_through_their_ladders():
    """The same cells run again on another CPU family: no strategy to compare, the two
    baselines' losses per budget and step gains side by side, never pooled."""
    series = _ladder_series()
    gain = gain_per_doubling(series)
    mine = {"group": "m|d|100", "ladder": series, "gain_per_doubling": gain}
    # There, only the foot of the ladder has reporting seeds.
    short = series[:2]
    theirs = {"group": "t", "ladder": short, "gain_per_doubling": gain_per_doubling(short)}
    comparison = compare_studies("orig", [("m|d|100", "t")], ([mine], []), ([theirs], []))
    assert comparison["rows"] == []
    assert summary_line(comparison) == (
        "no comparison in common with `orig`; the baseline's ladders side by side in 1 cell(s)"
    )
    lines = against_lines(comparison, "uniform")
    # A group key's pipes are escaped, or they would split the table's cells.
    table = [line for line in lines if line.startswith("| `m\\|d\\|100` |")]
    assert [line.split(" | ")[1] for line in table] == ["r1", "r2", "r4"]
    assert all(line.count(" | ") == 5 for line in table)
    r2_step = gain["steps"][0]
    assert f"{r2_step['mean']:+.4f}" in table[1] and table[1].count("(n = 4)") == 2
    assert table[1].count("(n = 4, lr 0.002)") == 2  # each study's chosen rate
    assert table[2].endswith("| — | — |")  # no r4 there
    assert any("meet through their baselines' ladders only" in line for line in lines)
    assert not any(line.startswith("| budget | strategy |") for line in lines)


def _ladder_series():
    losses = {"r1": [1.60, 1.62, 1.61, 1.63], "r2": [1.58, 1.61, 1.59, 1.60],
              "r4": [1.57, 1.59, 1.57, 1.58]}  # fmt: skip
    series = []
    for i, (budget, values) in enumerate(losses.items()):
        seeds = dict(enumerate(values))
        mean = sum(values) / len(values)
        series.append({"budget": budget, "params": float(2**i), "lr": 4e-3 / 2**i,
                       "test_loss": {"values": seeds, "mean": mean, "ci_t": [mean - 0.01, mean + 0.01],
                                     "n": len(values)}, "metrics": {}})  # fmt: skip
    return series


def test_both_ladders_budgets_keep_each_ladders_order():
    assert _merged(["r2", "r4", "r8"], ["r1", "r2", "r4", "r8", "r16"]) == [
        "r1",
        "r2",
        "r4",
        "r8",
        "r16",
    ]
    assert _merged(["r1", "r4"], ["r2", "r4", "r16"]) == ["r1", "r2", "r4", "r16"]


def test_a_narrowed_design_keeps_its_dropped_runs_out_of_the_numbers_and_says_so(
    tmp_path, monkeypatch, capsys
):
    """A study file narrowed after its runs (a strategy dropped here): the report leaves
    the dropped runs out and counts them; a study set against it still finds them."""
    work = tmp_path / "quickstart"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)
    text = (work / "study.yaml").read_text()
    narrowed = text.replace("  - {name: linear_decay, budgets: [r8]}\n", "")
    assert narrowed != text
    (work / "narrowed.yaml").write_text(narrowed.replace("name: quickstart", "name: narrowed"))
    assert main(["report", "narrowed.yaml", "--out", "narrow"]) == 0
    stats = json.loads((work / "narrow" / "stats.json").read_text())
    dropped = stats["outside_study_file"]
    assert dropped and all(run_id.startswith("linear_decay-") for run_id in dropped)
    report = (work / "narrow" / "report.md").read_text()
    n = len(dropped)
    assert f"**{n} stored run(s) are no longer in the study file** ({n} done):" in report
    assert set(dropped.values()) == {"done"}
    assert "linear_decay" not in report.split("## Status", 1)[1].split("## Setup", 1)[0]
    capsys.readouterr()
    assert main(["status", "narrowed.yaml"]) == 0
    assert f"{n} stored run(s) are no longer in the study file ({n} done; kept, not reported)" in (
        capsys.readouterr().out
    )
    assert main(["report", "study.yaml", "--out", "again", "--against", "narrowed.yaml"]) == 0
    same = json.loads((work / "again" / "stats.json").read_text())["against"]["same_runs"]
    assert same["not_listed_there"] == len(dropped)
    assert set(dropped) <= set(same["ids"])
    full = json.loads((work / "again" / "stats.json").read_text())
    assert "outside_study_file" not in full


def test_a_comparison_across_cpu_families_is_marked_with_the_machines_own_spread():
    series = _ladder_series()
    entry = {"group": "g", "ladder": series, "gain_per_doubling": gain_per_doubling(series)}
    comparison = compare_studies("orig", [("g", "g")], ([entry], []), ([entry], []))
    comparison["families"] = [["AVX512-bf16"], ["AMX-bf16"]]
    comparison["same_runs"] = None
    lines = against_lines(comparison, "uniform")
    header = next(line for line in lines if line.startswith("| cell | budget |"))
    assert "in `orig`† |" in header
    note = next(line for line in lines if line.startswith("† **Across CPU families**"))
    assert "this study ran on AVX512-bf16, `orig` on AMX-bf16" in note
    assert "no run of the same id is in both" in note
    spread = {"n": 12, "mean": 0.001, "sd": 0.0042, "max_abs": 0.011, "equal": 0}
    comparison["same_runs"] = {"n": 12, "ids": [], "families": comparison["families"],
                               "metrics": {"test_loss": spread}, "test_loss_by_group": {},
                               "not_listed_there": 0}  # fmt: skip
    note = next(line for line in against_lines(comparison, "uniform") if line.startswith("†"))
    assert "the 12 run(s) of the same id in both moved test loss by sd 0.0042" in note
    # One family on both sides: no mark, no note.
    comparison["families"] = [["AMX-bf16"], ["AMX-bf16"]]
    lines = against_lines(comparison, "uniform")
    assert not any("†" in line for line in lines)
