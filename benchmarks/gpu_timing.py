"""The benchmarks' one way to time a GPU call: synchronised, repeated, warm-up runs dropped, median."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_gpu_seconds(fn: Callable[[], object], runs: int = 25, skip: int = 5) -> float:
    """Median wall seconds of ``fn()`` over ``runs`` synchronised calls, the first ``skip`` not counted."""
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[skip:])
