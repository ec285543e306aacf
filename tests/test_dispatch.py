"""Which queued run a free worker takes: two runs of one data split do not start side by
side while a run of another split waits (each split's untrained losses measured once)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import yaml

from adaptive_lora.study.dispatch import split_key, take_next
from adaptive_lora.study.spec import load_study


def _queue(tmp_path: Path, **data) -> deque:
    """The pending runs of a two-strategy, four-seed study, in the study's own order."""
    spec = {
        "name": "dispatch",
        "model": "smollm2-135m",
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4, **data},
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay"],
        "seeds": "1..4",
        "out": str(tmp_path / "out"),
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return deque(load_study(path, check_sources=False).runs)


def _rounds(queue: deque, workers: int) -> list[list]:
    """The runs each round starts when every run takes the same time."""
    rounds = []
    while queue:
        running: list = []
        while queue and len(running) < workers:
            running.append(take_next(queue, running))
        rounds.append(running)
    return rounds


def test_per_seed_splits_start_side_by_side_only_across_seeds(tmp_path):
    queue = _queue(tmp_path, split="per_seed")
    # The study's order pairs one seed's strategies: popping from the left would start
    # each pair on one split, measuring its untrained losses twice.
    order = list(queue)
    assert [(s.strategy, s.seed) for s in order[:2]] == [("uniform", 1), ("linear_decay", 1)]
    assert split_key(order[0]) == split_key(order[1])
    rounds = _rounds(queue, workers=2)
    started = [[(s.strategy, s.seed) for s in r] for r in rounds]
    assert started == [
        [("uniform", 1), ("uniform", 2)],
        [("linear_decay", 1), ("linear_decay", 2)],
        [("uniform", 3), ("uniform", 4)],
        [("linear_decay", 3), ("linear_decay", 4)],
    ]
    for side_by_side in rounds:
        assert len({split_key(s) for s in side_by_side}) == len(side_by_side)
    assert sorted(s.run_id for r in rounds for s in r) == sorted(s.run_id for s in order)


def test_one_split_for_every_run_keeps_the_studys_order(tmp_path):
    queue = _queue(tmp_path, split="train_first")
    order = [s.run_id for s in queue]
    assert len({split_key(s) for s in queue}) == 1
    assert [s.run_id for r in _rounds(queue, workers=2) for s in r] == order


def test_a_worker_freed_beside_a_running_split_takes_the_next_other_split(tmp_path):
    queue = _queue(tmp_path, split="per_seed")
    first = queue.popleft()  # uniform seed 1, still running
    taken = take_next(queue, [first])
    assert (taken.strategy, taken.seed) == ("uniform", 2)
    assert (queue[0].strategy, queue[0].seed) == ("linear_decay", 1)  # waits, in its place
    # With nothing running, or only the running split's runs left, the head is taken.
    assert take_next(queue, []).seed == 1
    last = deque([s for s in queue if s.seed == 4])
    assert take_next(last, [last[0]]) is not None and len(last) == 1
