"""Coalescing: requests that arrive while the model threads are busy leave together, as one batch.

The engine is batch-first (one numpy pass over 8 requests costs far less than 8 passes). There
is no timer: a request that finds a free model thread starts at once, alone; only requests that
would have queued anyway are grouped, so batching never adds latency to a lone request. What a
batch means is up to the `run` function (serving.service.answer_batch keeps every request's
own user, k and filters, and answers the whole batch with one model version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from serving.errors import Overloaded


class Coalescer:
    """Queues jobs and runs them in batches on the model pool's threads.

    `run(jobs)` returns one answer per job, a value or the exception that job raised. At most
    `max_running` batches run at once (one per model thread); jobs arriving meanwhile wait and
    leave together, at most `max_batch` per batch. With `max_pending` jobs waiting or running,
    the next gets 503 at once, as the pool's own cap gives for other model work.
    """

    def __init__(self, executor, *, max_running: int, max_batch: int, max_pending: int,
                 run: Callable[[Sequence[Any]], list]) -> None:
        self.executor = executor
        self.max_running = max_running
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.run = run
        self.batch_sizes: Callable[[int], None] = lambda size: None  # metrics hook
        self._waiting: list[tuple[Any, asyncio.Future]] = []
        self._running = 0           # batches on the threads
        self._in_batches = 0        # jobs in those batches

    @property
    def pending(self) -> int:
        return len(self._waiting) + self._in_batches

    async def submit(self, job):
        if self.pending >= self.max_pending:
            raise Overloaded("server busy: too many requests waiting for the model")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((job, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and self._running < self.max_running:
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
            self._running += 1
            self._in_batches += len(batch)
            self.batch_sizes(len(batch))
            try:
                submitted = self.executor.submit(self.run, [job for job, _ in batch])
            except RuntimeError as exc:  # the pool is shut down: the server is stopping
                self._deliver(batch, [exc] * len(batch))
                continue
            done = asyncio.wrap_future(submitted)
            done.add_done_callback(lambda finished, batch=batch: self._finish(finished, batch))

    def _finish(self, finished: asyncio.Future, batch) -> None:
        error = finished.exception() if not finished.cancelled() else asyncio.CancelledError()
        self._deliver(batch, [error] * len(batch) if error is not None else finished.result())
        self._start()

    def _deliver(self, batch, answers) -> None:
        self._running -= 1
        self._in_batches -= len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the client went away
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)


__all__ = ["Coalescer"]
