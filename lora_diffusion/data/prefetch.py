"""Pixels of the coming batches made on worker threads while the GPU runs the current step.

Used when latents cannot all be cached (random crops, ``cache: off``): the batch sequence is a
pure function of (seed, step), so the loop can ask for the next batches ahead of time. PIL's
decode, resize and crop release the GIL, so threads overlap them with the training loop.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Iterable

import torch


def default_workers() -> int:
    """One thread fewer than the CPU cores (the loop needs one), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class Prefetcher:
    """``want(keys)`` starts making samples; ``get(key)`` returns one (made now if it was not wanted)."""

    def __init__(self, make: Callable[[Hashable], torch.Tensor], workers: int) -> None:
        self.make = make
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="lora-diffusion-pixels")
        self.pending: dict[Hashable, Future] = {}

    def want(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            if key not in self.pending:
                self.pending[key] = self.pool.submit(self.make, key)

    def get(self, key: Hashable) -> torch.Tensor:
        future = self.pending.pop(key, None)
        return future.result() if future is not None else self.make(key)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
