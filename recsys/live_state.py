"""The live state applied to a bundle: item changes and each user's live events, by one set of
rules that the server and batch scoring both call, so the two give the same answer.

The server reads the store as requests come; batch scoring reads it once into a `LiveSnapshot`
(events and item changes up to a recorded sequence number) so a resumed run sees what the
first attempt saw.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recsys.recommender import History, Recommender
from recsys.store import HISTORY_WINDOW, EventStore, StoredItem, recent_positive

# How many of a user's latest events extend their history (the server's `live_history_items`).
LIVE_HISTORY_ITEMS = 50

Encode = Callable[[list[str]], np.ndarray]


class RecentItems(Protocol):
    """What a user's live history is read from: the store itself, or a snapshot of it."""

    def recent_items(self, user_id: str, limit: int, since: float) -> tuple[list[str], float]: ...


def live_since(recommender: Recommender) -> float:
    """Live events after the bundle's data end extend its histories; earlier ones it already has."""
    cutoff = recommender.state.cutoff_
    if recommender.real_time and cutoff is not None:
        return cutoff.timestamp()
    return -math.inf


def live_history(recommender: Recommender, events: RecentItems, user_id: str,
                 limit: int = LIVE_HISTORY_ITEMS) -> History:
    """The user's bundle history followed by their live positive events since the bundle's data
    end (a user known only from live events gets those alone, and so the model's list)."""
    recent, last = events.recent_items(user_id, limit, live_since(recommender))
    return recommender.live_history(user_id, recent, last)


def latest_changes(changes: Sequence[tuple[int, StoredItem]]) -> list[StoredItem]:
    """The last change of each item, in the order those last changes were made."""
    latest: dict[str, StoredItem] = {}
    for _, item in changes:   # in sequence order, so the last change of an item wins
        latest.pop(item.item_id, None)
        latest[item.item_id] = item
    return list(latest.values())


def apply_item_changes(recommender: Recommender, changes: Sequence[tuple[int, StoredItem]],
                       encode: Encode) -> Recommender:
    """`recommender` serving the items these changes add or change and never the ones they
    delete. `encode` embeds the text of items whose stored vector another encoder made."""
    latest = latest_changes(changes)
    live = [i for i in latest if not i.deleted]
    if live:
        recommender = recommender.with_items(
            [i.item_id for i in live], [i.title for i in live], [i.category for i in live],
            vectors_for(recommender, live, encode), now=max(i.updated for i in live))
    return recommender.without_items([i.item_id for i in latest if i.deleted])


def vectors_for(recommender: Recommender, items: Sequence[StoredItem],
                encode: Encode) -> np.ndarray:
    """Stored vectors where this bundle's encoder made them, new embeddings otherwise."""
    dim = recommender.item_vectors.shape[1]
    fingerprint = recommender.manifest.get("encoder", {}).get("fingerprint", "")
    vectors = np.zeros((len(items), dim), dtype=np.float32)
    stale = []
    for j, item in enumerate(items):
        if item.vector is not None and item.encoder == fingerprint and item.vector.size == dim:
            vectors[j] = item.vector
        else:
            stale.append(j)
    if stale:
        vectors[stale] = encode([items[j].text for j in stale])
    return vectors


def bundle_encoder(recommender: Recommender) -> Encode:
    """Embeds with the bundle's own encoder, loaded only if an item needs it."""
    loaded = []

    def encode(texts: list[str]) -> np.ndarray:
        if not loaded:
            from recsys.encoder import Encoder
            from recsys.errors import BundleError

            if recommender.path is None:
                raise BundleError("this model has no bundle directory to load an encoder from")
            loaded.append(Encoder.load(recommender.path / "encoder", device="cpu"))
        return loaded[0].encode(texts, show_progress=False)

    return encode


@dataclass
class LiveSnapshot:
    """The store's events and item changes up to `events_seq` and `items_seq`, read once.

    `recent_items` keeps the store's contract (`EventStore.recent_items`): among the user's
    latest HISTORY_WINDOW x limit events, the positive ones after `since`, oldest first.
    """

    events_seq: int = 0
    items_seq: int = 0
    item_changes: list[tuple[int, StoredItem]] = field(default_factory=list)
    latest_event_s: float = -math.inf
    _by_user: dict[str, list[tuple[int, int, str, str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, store: EventStore, *, events_seq: int | None = None,
             items_seq: int | None = None) -> LiveSnapshot:
        """Everything stored now, or up to the given sequence numbers (a resumed run's)."""
        if items_seq is None:
            items_seq = store.items_seq()
        changes = [(seq, item) for seq, item in store.items() if seq <= items_seq]
        snapshot = cls(items_seq=items_seq, item_changes=changes)
        last = 0
        for seq, event in store.events():
            if events_seq is not None and seq > events_seq:
                break
            last = seq
            ts_us = int(round(event.timestamp * 1_000_000))
            snapshot._by_user.setdefault(event.user_id, []).append(
                (ts_us, seq, event.item_id, event.type))
            snapshot.latest_event_s = max(snapshot.latest_event_s, event.timestamp)
        snapshot.events_seq = last if events_seq is None else events_seq
        return snapshot

    def recent_items(self, user_id: str, limit: int, since: float) -> tuple[list[str], float]:
        # newest first, a later arrival first among equal times: the stores' own order
        latest = sorted(self._by_user.get(user_id, ()), reverse=True)[:HISTORY_WINDOW * limit]
        events, last = recent_positive([(item, type_, ts_us) for ts_us, _, item, type_ in latest],
                                       limit, since)
        return [item for item, _, _ in events], last

    @property
    def users(self) -> int:
        return len(self._by_user)

    def now(self, recommender: Recommender) -> float:
        """The data clock of a server that has taken in these events: the later of the latest
        stored event and the bundle's data end."""
        return max(self.latest_event_s, recommender.clock())


def apply_snapshot(recommender: Recommender, snapshot: LiveSnapshot,
                   encode: Encode | None = None) -> Recommender:
    """The bundle as a server that has taken in everything in `snapshot` serves it: the item
    changes applied. Its data clock is `snapshot.now(recommender)`, passed as `now`."""
    return apply_item_changes(recommender, snapshot.item_changes,
                              encode or bundle_encoder(recommender))


class LiveClock:
    """The data clock of a serving process: the latest live event time it has taken in.

    Time features (item age, idleness, user recency) are measured from the data's own clock:
    the later of this and the bundle's data end (`now`). The server owns one clock across model
    swaps and passes `now` to each `Recommender` call, so the shared Recommender never changes
    after load.
    """

    def __init__(self) -> None:
        self._latest = -math.inf
        self._lock = threading.Lock()

    def observe(self, epoch_seconds: float) -> None:
        """Advance the clock to a live event's time (never backwards)."""
        if math.isfinite(epoch_seconds):
            with self._lock:
                self._latest = max(self._latest, float(epoch_seconds))

    def now(self, recommender: Recommender) -> float:
        return max(self._latest, recommender.clock())


__all__ = ["LIVE_HISTORY_ITEMS", "LiveClock", "LiveSnapshot", "apply_item_changes",
           "apply_snapshot", "bundle_encoder", "latest_changes", "live_history", "live_since",
           "vectors_for"]
