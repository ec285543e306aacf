"""Learning-rate choice per strategy × budget, on validation loss only.

With `lr_tuning_seeds`, the candidates are tried on those seeds only and the choice is
final once every tuning run of the strategy × budget has finished; the reporting seeds
then run at the chosen rate alone. Without them, every seed runs every candidate and
the choice is made on all of them (the report says so). Test loss never enters a choice.

`at_chosen_rate` / `chosen_rate_rows` are the one filter of the runs a reported number,
a pilot's sd or a sequential look may use: at the chosen rate, never on a tuning seed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from adaptive_lora.study.store import DONE, FAILED, RunRow


@dataclass
class LrChoice:
    """The learning rate chosen for one strategy × budget, on validation loss."""

    label: str
    budget: str
    candidates: list[float]
    val_loss_mean: dict[float, float]  # lr → mean validation loss over its finished seeds
    n_seeds: dict[float, int]
    chosen: float | None  # None: not decided yet, or every candidate failed
    seeds: list[int] = field(default_factory=list)  # the seeds the choice looks at
    failed: dict[float, list[int]] = field(default_factory=dict)  # lr → seeds failed or NaN
    complete: bool = True  # every run the choice needs has finished
    note: str = ""  # a tie, an excluded candidate, or why nothing was chosen
    edge: str = ""  # "largest"/"smallest": a finished choice at that end of its grid

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "budget": self.budget,
            "candidates": self.candidates,
            "val_loss_mean": {str(lr): v for lr, v in self.val_loss_mean.items()},
            "n_seeds": {str(lr): n for lr, n in self.n_seeds.items()},
            "chosen": self.chosen,
            "seeds": self.seeds,
            "failed": {str(lr): s for lr, s in self.failed.items()},
            "complete": self.complete,
            "note": self.note,
            "edge": self.edge,
        }


def choose_lr(
    label: str,
    budget: str,
    candidates: Sequence[float],
    seeds: Sequence[int],
    rows: Sequence[RunRow],
) -> LrChoice:
    """The candidate with the lowest mean validation loss over `seeds`.

    A candidate with a failed run or a non-finite validation loss on any of the seeds
    is excluded (and named in `note`); a tie goes to the smaller rate (and is said).
    With one candidate it is chosen as is. A finished choice at either end of a grid
    of three or more rates is said too: the best rate may lie outside the grid.
    """
    mine = [r for r in rows if r.label == label and r.budget == budget and r.seed in seeds]
    values: dict[float, list[float]] = {lr: [] for lr in candidates}
    failed: dict[float, list[int]] = {}
    finished = 0
    for row in mine:
        if row.lr not in values or row.status not in (DONE, FAILED):
            continue
        finished += 1
        value = row.metrics.get("val_loss") if row.status == DONE else None
        if value is None or not math.isfinite(float(value)):
            failed.setdefault(row.lr, []).append(row.seed)
        else:
            values[row.lr].append(float(value))
    means = {lr: float(np.mean(v)) for lr, v in values.items() if v and lr not in failed}
    choice = LrChoice(
        label, budget, list(candidates), means, {lr: len(v) for lr, v in values.items()}, None,
        seeds=list(seeds), failed=failed,
        complete=finished == len(candidates) * len(seeds),
    )  # fmt: skip
    if len(candidates) == 1:
        choice.chosen = candidates[0]
        return choice
    notes = [f"{lr:g} excluded: failed or NaN on seed(s) {s}" for lr, s in sorted(failed.items())]
    if means:
        best = min(means.values())
        tied = sorted(lr for lr, m in means.items() if m == best)
        choice.chosen = tied[0]
        if len(tied) > 1:
            notes.append(f"tie between {', '.join(f'{lr:g}' for lr in tied)}: the smaller chosen")
        edge = _edge_of_grid(choice.chosen, candidates)
        if edge and choice.complete:
            notes.append(edge)
        if choice.complete:
            choice.edge = grid_edge(choice.chosen, candidates)
    elif choice.complete:
        notes.append("every candidate failed: nothing chosen, the strategy is not reported")
    choice.note = "; ".join(notes)
    return choice


def grid_edge(chosen: float, candidates: Sequence[float]) -> str:
    """ "largest" or "smallest" when `chosen` is that end of a grid of two or more rates
    (the best rate may lie past it), else "". With one candidate nothing was tuned."""
    if len(candidates) < 2:
        return ""
    if chosen == max(candidates):
        return "largest"
    return "smallest" if chosen == min(candidates) else ""


def _edge_of_grid(chosen: float, candidates: Sequence[float]) -> str:
    """A note when `chosen` is the smallest or largest of three or more candidates.

    With two candidates every choice is at an end, so the note would say nothing.
    """
    if len(candidates) < 3:
        return ""
    if chosen == max(candidates):
        return "the largest candidate: a larger rate might do better"
    if chosen == min(candidates):
        return "the smallest candidate: a smaller rate might do better"
    return ""


def _next_rate(candidates: Sequence[float], upwards: bool) -> float:
    """One step past the grid's edge, by the ratio of the two rates nearest that edge."""
    grid = sorted(candidates)
    if upwards:
        ratio = grid[-1] / grid[-2] if len(grid) > 1 else 2.0
        return float(f"{grid[-1] * ratio:.3g}")
    ratio = grid[1] / grid[0] if len(grid) > 1 else 2.0
    return float(f"{grid[0] / ratio:.3g}")


def choose_lr_extending(
    label: str,
    budget: str,
    candidates: Sequence[float],
    seeds: Sequence[int],
    rows: Sequence[RunRow],
    limit: int,
) -> LrChoice:
    """`choose_lr`, and while the finished choice sits at an edge of a grid of two or more
    rates, one more rate past that edge (× or ÷ the grid's ratio), up to `limit` steps on
    each side: the tuning seeds then run the new rate and the choice is made again.

    The returned choice's `candidates` hold the extended grid (the tuning runs to expand);
    it is `complete` only when every rate of that grid has run. A choice still at an edge
    after `limit` steps says so.
    """
    grid = sorted(candidates)
    steps = {True: 0, False: 0}
    while True:
        choice = choose_lr(label, budget, grid, seeds, rows)
        if limit < 1 or len(grid) < 2 or not choice.complete or choice.chosen is None:
            return choice
        upwards = choice.chosen == max(grid)
        if not upwards and choice.chosen != min(grid):
            return choice
        if steps[upwards] >= limit:
            side = "largest" if upwards else "smallest"
            choice.note = "; ".join(
                n for n in (choice.note, f"still the {side} rate after {limit} step(s) past "
                            "the grid (lr_extend)") if n
            )  # fmt: skip
            return choice
        steps[upwards] += 1
        grid = sorted([*grid, _next_rate(grid, upwards)])


class _Run(Protocol):
    """A run spec or a stored row: what places it at a strategy × budget's rate."""

    @property
    def label(self) -> str: ...

    @property
    def budget(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def lr(self) -> float: ...


def at_chosen_rate(
    run: _Run, choices: Mapping[tuple[str, str], LrChoice], tuning_seeds: Collection[int]
) -> bool:
    """Whether a run may enter a reported number, a pilot's sd or a sequential look: at its
    strategy × budget's chosen rate, and never on a tuning seed (that run was part of the
    choice on validation loss, and picked for it)."""
    choice = choices.get((run.label, run.budget))
    return (
        run.seed not in tuning_seeds
        and choice is not None
        and choice.chosen is not None
        and choice.chosen == run.lr
    )


def chosen_rate_rows(
    rows: Iterable[RunRow],
    choices: Mapping[tuple[str, str], LrChoice],
    tuning_seeds: Collection[int],
) -> list[RunRow]:
    """The finished rows at their chosen rate (`at_chosen_rate`), in the order given."""
    return [r for r in rows if r.status == DONE and at_chosen_rate(r, choices, tuning_seeds)]
