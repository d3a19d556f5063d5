"""Live state in memory: each user's recent positive events since the bundle, and live clicks per
item (the popularity fallback when no model is loaded). Rebuilt from the event store at start."""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter, OrderedDict


class LiveHistories:
    """Recent (timestamp, item_id) per user, ordered by time, bounded per user and in users (LRU)."""

    def __init__(self, per_user: int = 50, max_users: int = 100_000) -> None:
        self.per_user = per_user
        self.max_users = max_users
        self._users: OrderedDict[str, list[tuple[float, str]]] = OrderedDict()
        self._clicks: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, user_id: str, item_id: str, timestamp: float) -> None:
        with self._lock:
            events = self._users.get(user_id)
            if events is None:
                events = self._users[user_id] = []
                if len(self._users) > self.max_users:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(user_id)
            bisect.insort(events, (timestamp, item_id))  # late events land in their place
            del events[:-self.per_user]
            self._clicks[item_id] += 1

    def recent(self, user_id: str | None, since: float = -math.inf) -> tuple[list[str], float]:
        """Item ids of the user's events after `since`, oldest first, and the last event time."""
        if user_id is None:
            return [], math.nan
        with self._lock:
            events = list(self._users.get(user_id, ()))
        kept = [item for ts, item in events if ts > since]
        return kept, (events[-1][0] if events else math.nan)

    def popular(self, k: int, exclude: set[str] = frozenset()) -> list[tuple[str, int]]:
        with self._lock:
            ranked = sorted(self._clicks.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, n) for item, n in ranked if item not in exclude][:k]

    def forget_item(self, item_id: str) -> None:
        with self._lock:
            self._clicks.pop(item_id, None)

    @property
    def n_users(self) -> int:
        return len(self._users)


__all__ = ["LiveHistories"]
