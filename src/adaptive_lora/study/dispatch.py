"""Which queued run a free worker takes next.

Before training, every run on one model and one data split measures the same validation
and test loss, and the first run of a split to measure it keeps it for the rest
(`loss_cache`). Two runs of one split started side by side both measure it. With per-seed
splits the queue lists a seed's strategies one after the other, so a study with two
workers started every pair on one split and paid for those losses twice: about 4 of a run's
11 minutes at the controlled map's Gemma-3 stage (300 test items, AVX512-bf16 EPYC).

So a free worker takes the first queued run whose split no running run shares, and the
head of the queue when every queued run shares a running run's split (one split for the
whole study, or the last seed's runs). What a run computes never depends on which worker
takes it or when: this changes the order runs start in, not their numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from adaptive_lora.data.splits import order_seed
from adaptive_lora.study.spec import RunSpec


def split_key(spec: RunSpec) -> tuple[str, int]:
    """What a run's untrained losses are shared by: its group (model × task × size) and
    the seed of its split's order (the data seed, or with `per_seed` one of its run seed)."""
    return spec.group, order_seed(spec.config.data, spec.seed)


def take_next(queue: deque[RunSpec], running: Iterable[RunSpec]) -> RunSpec:
    """Remove and return the run a free worker should start (`queue` must not be empty)."""
    busy = {split_key(spec) for spec in running}
    if busy:
        for position, spec in enumerate(queue):
            if split_key(spec) not in busy:
                del queue[position]
                return spec
    return queue.popleft()
