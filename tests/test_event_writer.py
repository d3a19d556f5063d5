"""Group commit of POST /events batches (serving.event_writer): batches that wait while a write
runs go to the store together, in one call, and each request gets its own events' flags."""

from __future__ import annotations

import asyncio
import threading

import pytest

from recsys.store import Event, StoreUnavailable
from recsys.store.sqlite import SqliteEventStore
from serving.errors import Overloaded
from serving.event_writer import EventWriter


def _events(*ids: str) -> list[Event]:
    return [Event(i, "u1", "item1", 1_700_000_000.0, "click", None, None) for i in ids]


class GatedStore:
    """A store whose first append waits until the test opens the gate; records each call."""

    def __init__(self, path) -> None:
        self.store = SqliteEventStore(path)
        self.gate = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_call = 0  # this call (1 = the first) raises as a full disk would

    def append(self, events):
        self.calls.append([e.event_id for e in events])
        if len(self.calls) == 1:
            self.gate.wait(10)
        if len(self.calls) == self.fail_call:
            raise StoreUnavailable("events could not be stored (disk full)")
        return self.store.append(events)


def test_batches_waiting_for_a_write_are_written_together(tmp_path):
    store = GatedStore(tmp_path / "events.sqlite")

    async def main():
        writer = EventWriter(store.append, limit=8)
        first = asyncio.ensure_future(writer.write(_events("a")))
        await asyncio.sleep(0.05)  # the first write runs (held at the gate)
        later = [asyncio.ensure_future(writer.write(_events(*ids)))
                 for ids in (["b", "c"], ["a", "d"], ["d"])]
        await asyncio.sleep(0.05)
        assert writer.pending == 4
        store.gate.set()
        answers = [await first] + [await f for f in later]
        writer.close()
        return answers, writer.pending

    answers, pending = asyncio.run(main())
    assert store.calls == [["a"], ["b", "c", "a", "d", "d"]]  # one write for the three waiting
    # each request its own flags; an id already stored, or earlier in the same write, is old
    assert answers == [[True], [True, True], [False, True], [False]]
    assert pending == 0
    assert store.store.count() == 4
    store.store.close()


def test_a_failed_write_fails_every_request_in_it_and_the_next_write_works(tmp_path):
    store = GatedStore(tmp_path / "events.sqlite")

    async def main():
        writer = EventWriter(store.append, limit=8)
        first = asyncio.ensure_future(writer.write(_events("a")))
        await asyncio.sleep(0.05)
        store.fail_call = 2
        failing = [asyncio.ensure_future(writer.write(_events(i))) for i in ("b", "c")]
        await asyncio.sleep(0.05)
        store.gate.set()
        assert await first == [True]
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        after = await writer.write(_events("b"))
        writer.close()
        return outcomes, after

    outcomes, after = asyncio.run(main())
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert after == [True]  # "b" was not stored by the failed write: nothing acked was lost
    assert store.store.count() == 2
    store.store.close()


def test_past_the_limit_a_write_is_refused_at_once(tmp_path):
    store = GatedStore(tmp_path / "events.sqlite")

    async def main():
        writer = EventWriter(store.append, limit=2)
        held = [asyncio.ensure_future(writer.write(_events(i))) for i in ("a", "b")]
        await asyncio.sleep(0.05)
        assert writer.full
        with pytest.raises(Overloaded):
            await writer.write(_events("c"))
        store.gate.set()
        await asyncio.gather(*held)
        assert not writer.full
        writer.close()

    asyncio.run(main())
    assert store.store.count() == 2
    store.store.close()
