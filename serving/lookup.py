"""What the engine holds about one item or one user, as response bodies (GET /items/{item_id},
GET /users/{user_id}): the bundle's part and the live part, each marked.

Runs on the model pool; reads one Recommender (one model version) and the event store.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from recsys.errors import NotFoundError
from recsys.recommender import Recommender
from recsys.store import EventStore
from serving.schemas import MAX_LIST
from serving.service import live_since

BUNDLE = "bundle"
LIVE = "live"


def item_body(recommender: Recommender, store: EventStore, item_id: str) -> dict:
    """The item as served now; NotFoundError for an unknown or deleted one."""
    row = recommender.item_rows.get(item_id)
    if row is None:
        raise NotFoundError(f"unknown item {item_id!r}")
    stored = store.item(item_id)
    live = stored is not None and not stored.deleted
    return {"item_id": item_id, "title": recommender.titles[row],
            "text": stored.text if live else None, "category": _category(recommender, row),
            "source": LIVE if live else BUNDLE,
            "updated_at": _utc(stored.updated) if live else None,
            "model_version": recommender.version}


def user_body(recommender: Recommender, store: EventStore, user_id: str,
              live_items: int) -> dict:
    """The user's history as `service` builds it for a recommendation (the bundle's, then the
    live events it takes; items no longer served are skipped, as there); NotFoundError for a
    user with neither."""
    base = recommender.users.get(user_id)
    recent, last_live = store.recent_events(user_id, live_items, live_since(recommender))
    entries = [_entry(recommender, row, BUNDLE, None, None)
               for row in (base.items if base is not None else [])]
    entries += [_entry(recommender, recommender.item_rows[item], LIVE, kind, stamp)
                for item, stamp, kind in recent if item in recommender.item_rows]
    if not entries:
        raise NotFoundError(f"unknown user {user_id!r}: no history in the bundle and no live "
                            "events")
    # a bundle made from order-only data keeps sequence numbers, not calendar times
    bundle_last = base.last_time if base is not None and recommender.real_time else math.nan
    times = [t for t in (bundle_last, last_live) if t is not None and math.isfinite(t)]
    return {"user_id": user_id, "items": entries[-MAX_LIST:], "total": len(entries),
            "last_event_at": _utc(max(times)) if times else None,
            "model_version": recommender.version}


def _entry(recommender: Recommender, row: int, source: str, kind: str | None,
           stamp: float | None) -> dict:
    return {"item_id": recommender.item_ids[row], "title": recommender.titles[row],
            "category": _category(recommender, row), "source": source, "type": kind,
            "time": None if stamp is None else _utc(stamp)}


def _category(recommender: Recommender, row: int) -> str | None:
    code = int(recommender.item_categories[row])
    return recommender.category_names[code] if code >= 0 else None


def _utc(epoch_seconds: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(epoch_seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):  # beyond what a datetime holds
        return None


__all__ = ["BUNDLE", "LIVE", "item_body", "user_body"]
