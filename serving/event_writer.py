"""Group commit for POST /events: the event batches waiting for the store are written together.

The store makes each write durable before it returns (SQLite: one fsync per transaction), so
writing each request's batch on its own caps ingest at one request per fsync, and many threads
queueing on the store's lock take the event loop's GIL too. Here one thread writes: whatever
arrived while a write was running goes into the next one, a single `store.append` call (one
transaction), and each request gets back its own events' "new or duplicate" flags. The more
requests wait, the more each fsync carries, so goodput holds under load instead of falling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from recsys.store import Event
from serving.errors import Overloaded


class EventWriter:
    """Writes event batches through `append` (the store's), one write at a time, each write
    taking every batch that waits. `limit` caps the batches waiting or being written: past it a
    request gets 503 at once (`pending` and `full` are touched only on the event loop)."""

    def __init__(self, append: Callable[[Sequence[Event]], list[bool]], limit: int) -> None:
        self.append = append
        self.limit = limit
        self.pending = 0
        self._waiting: list[tuple[list[Event], asyncio.Future]] = []
        self._writing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="events")

    @property
    def full(self) -> bool:
        return self.pending >= self.limit

    async def write(self, events: list[Event]) -> list[bool]:
        """Store `events` durably (with other requests' batches); per event, True when it was
        new, False for an id already stored. Raises what the store raises: nothing is acked."""
        if self.full:
            raise Overloaded("server busy: too many event batches waiting for the store")
        self.pending += 1
        try:
            written = asyncio.get_running_loop().create_future()
            self._waiting.append((events, written))
            if not self._writing:
                self._start()
            return await written
        finally:
            self.pending -= 1

    def _start(self) -> None:
        batches, self._waiting = self._waiting, []
        self._writing = True
        rows = [event for events, _ in batches for event in events]
        done = asyncio.get_running_loop().run_in_executor(self._executor, self.append, rows)
        done.add_done_callback(lambda future: self._written(batches, future))

    def _written(self, batches, done: asyncio.Future) -> None:
        self._writing = False
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        flags = None if error is not None else done.result()
        start = 0
        for events, written in batches:
            if not written.done():  # a request cancelled meanwhile: its events are stored
                if error is not None:
                    written.set_exception(error)
                else:
                    written.set_result(flags[start:start + len(events)])
            start += len(events)
        if self._waiting:
            self._start()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


__all__ = ["EventWriter"]
