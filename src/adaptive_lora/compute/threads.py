"""Thread-count helpers for code that must not fight the training loop for cores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run CPU LAPACK calls (SVD, QR) on one thread, then restore the thread count.

    Matrices of this size gain little from threads, and MKL's OpenMP threads can
    stall by orders of magnitude when another process shares the cores (a
    96×32 SVD took 0.27 s instead of 0.1 ms on a busy 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
