"""What the live store says about recent activity, for the explorer: events per day, clicks of
each item per day and who clicked it last.

The store's interface reads events in arrival order from a sequence number, so the digest
reads only what arrived since the last page view (the first view reads the whole store once).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from recsys.store import POSITIVE_TYPES, EventStore

RECENT_CLICKERS = 10
DAY_S = 86400


@dataclass(frozen=True)
class Click:
    user_id: str
    type: str
    timestamp: float


class Activity:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._seq = 0
        self._lock = threading.Lock()
        self.events_by_day: Counter[int] = Counter()
        self.clicks_by_item_day: dict[str, Counter[int]] = {}
        self.recent_clickers: dict[str, deque[Click]] = {}

    def update(self) -> Activity:
        """Read the events stored since the last call (blocking: run it on the model pool)."""
        with self._lock:
            for seq, event in self.store.events(self._seq):
                day = int(event.timestamp // DAY_S)
                self.events_by_day[day] += 1
                if event.type in POSITIVE_TYPES:
                    self.clicks_by_item_day.setdefault(event.item_id, Counter())[day] += 1
                    self.recent_clickers.setdefault(
                        event.item_id, deque(maxlen=RECENT_CLICKERS)).append(
                            Click(event.user_id, event.type, event.timestamp))
                self._seq = seq
        return self

    def events_today(self, now: float | None = None) -> int:
        return self.events_by_day.get(int((now or time.time()) // DAY_S), 0)

    def item_days(self, item_id: str) -> list[tuple[int, int]]:
        """(day number since 1970, clicks) for each day the item was clicked, oldest first."""
        return sorted(self.clicks_by_item_day.get(item_id, Counter()).items())

    def item_clickers(self, item_id: str) -> list[Click]:
        """The latest users who clicked the item, newest first."""
        return sorted(self.recent_clickers.get(item_id, ()), key=lambda c: -c.timestamp)


__all__ = ["Activity", "Click", "DAY_S"]
