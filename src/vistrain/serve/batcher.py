"""Micro-batching: concurrent requests share one model call.

Requests queue their images; one worker takes everything queued (up to ``max_batch`` images), runs
the model once in a single inference thread (ONNX Runtime uses its own threads inside), and hands
each request its rows. Under light load a request runs alone at once; under heavy load batches
form by themselves while the previous batch runs, so no fixed delay is added.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

RunBatch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def record(self, n: int) -> None:
        self.batches += 1
        self.images += n
        self.largest = max(self.largest, n)
        self.sizes[n] = self.sizes.get(n, 0) + 1


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, run_batch: RunBatch, max_batch: int = 16, max_wait_ms: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"max batch {max_batch} must be at least 1")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vistrain-infer")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``k x S x S x 3`` uint8 of one request -> its (logits, feature maps)."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(pixels, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            n = len(jobs[0].pixels)
            if self.max_wait:
                await asyncio.sleep(self.max_wait)
            while n < self.max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                jobs.append(job)
                n += len(job.pixels)
            try:
                logits, feats = await loop.run_in_executor(self._executor, self.run_batch,
                                                           np.concatenate([j.pixels for j in jobs]))
            except Exception as exc:  # noqa: BLE001 -- a failed batch fails its requests, never the worker
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.stats.record(n)
            start = 0
            for j in jobs:
                k = len(j.pixels)
                if not j.future.done():  # the client may have gone away
                    j.future.set_result((logits[start : start + k], feats[start : start + k]))
                start += k
