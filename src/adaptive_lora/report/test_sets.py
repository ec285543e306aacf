"""Whether a factorial study's groups of one task were tested on the same items.

A report that sets groups of different training sizes side by side compares sizes only
if their test sets are the same; with the published studies' `train_first` split a data
file's test set moved with the training size. The answer comes from the runs' recorded
test hashes where every run has one, else from the split rule (which is what made them):
generated tasks and `test_first` draw the test set first, so it depends only on the task,
the data seed and the test size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptive_lora.study.design import Group
from adaptive_lora.study.store import RunRow


def _task_key(sections: dict[str, Any]) -> str:
    data = sections.get("data", {})
    return f"{data.get('source')}|{sorted((data.get('options') or {}).items())}"


def _test_set(group: Group, rows: Sequence[RunRow]) -> str:
    """A name for the group's test items: equal names, equal items (seed by seed for
    `per_seed`, whose seeds draw the test set first from the data and run seeds alone)."""
    data = group.sections.get("data", {})
    split = data.get("split", "test_first")
    hashes = {(row.manifest or {}).get("test_hash") for row in rows}
    if split != "per_seed" and rows and None not in hashes and len(hashes) == 1:
        return f"hash {next(iter(hashes))}"
    generated = str(data.get("source", "")).startswith("reasoning_gym:")
    drawn_first = split != "train_first" or generated
    rule = (split == "per_seed", data.get("n_test"), data.get("data_seed"))
    return f"rule {rule}" if drawn_first else f"rule {rule} after {data.get('n_train')}"


def test_set_lines(groups: Sequence[Group], rows_of: dict[str, Sequence[RunRow]]) -> list[str]:
    """One line per task whose groups were tested on different items; nothing if none."""
    by_task: dict[str, list[Group]] = {}
    for group in groups:
        by_task.setdefault(_task_key(group.sections), []).append(group)
    lines = []
    for members in by_task.values():
        if len(members) < 2:
            continue
        tests = {g.key: _test_set(g, rows_of.get(g.key, ())) for g in members}
        if len(set(tests.values())) > 1:
            sizes = ", ".join(str(g.n_train) for g in members)
            lines.append(
                f"**Test sets differ between the training sizes of task `{members[0].task}` "
                f"(n_train = {sizes}):** their splits drew other test items for each size, "
                "so a difference between these groups mixes the training size with the "
                "test items."
            )
    return lines + [""] if lines else []
