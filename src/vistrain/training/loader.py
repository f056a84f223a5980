"""Batches prepared in background threads while the network trains on the current one.

Cropping, resizing and jittering a batch takes ~0.1-0.2 s per 32 images here, against ~3 s for the
training step on 2 CPU cores: done in line it would be ~5-20% of the epoch spent waiting for data,
and one worker thread hides it. A GPU step is ~20x shorter (an H100 waited for data ~75% of each
epoch with one worker), so CUDA training uses several workers. Each batch draws from its own
seeded generator and batches are yielded in order, so the batches are the same for any number of
workers. PIL's resize and torch's kernels release the GIL, so the threads overlap with the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Iterate ``make(0) .. make(n - 1)`` in order, computed ``ahead`` batches in advance by ``workers``
    threads (``make`` must not depend on the order of calls when ``workers`` > 1).

    ``wait_seconds`` is the time the consumer spent blocked on data (the share to keep small).
    """

    def __init__(self, make: Callable[[int], T], n: int, ahead: int = 2, workers: int = 1):
        if ahead < 1:
            raise ValueError(f"ahead={ahead}: prefetch at least one batch")
        if workers < 1:
            raise ValueError(f"workers={workers}: at least one worker thread")
        self.make, self.n, self.workers = make, n, workers
        self.ahead = max(ahead, workers + 1)  # every worker busy, and one batch ready
        self.wait_seconds = 0.0

    def __iter__(self) -> Iterator[T]:
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vistrain-batches")
        pending: list[Future] = []
        try:
            for i in range(min(self.ahead, self.n)):
                pending.append(pool.submit(self.make, i))
            for i in range(self.n):
                t = time.perf_counter()
                batch = pending.pop(0).result()
                self.wait_seconds += time.perf_counter() - t
                if i + self.ahead < self.n:
                    pending.append(pool.submit(self.make, i + self.ahead))
                yield batch
        finally:
            # Ctrl-C or an error in the step: drop queued batches instead of finishing them.
            pool.shutdown(wait=True, cancel_futures=True)
