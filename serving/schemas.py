"""Request and response bodies, with explicit limits (they appear in the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from recsys.bundle_versions import VERSION_PATTERN
from recsys.data.schema import EVENT_TYPES
from recsys.data.timestamps import epoch_seconds

MAX_K = 100                 # items one response may hold
MAX_LIST = 1000             # history length, exclusions, events per batch, impression list
MAX_ITEMS_PER_PUT = 100     # items embedded in one PUT (the encoder runs inline)
MAX_TEXT = 10_000           # characters of an item text
MAX_ID = 200                # characters of any id
MAX_TIME_TEXT = 64          # characters of an ISO 8601 timestamp

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)]


def _addressable(value: str) -> str:
    # the per-item routes (/items/{item_id}) carry one path segment: '/' splits it, and
    # clients resolve '.' and '..' away before sending
    if "/" in value or value in {".", ".."}:
        raise ValueError("an item id must be usable in a URL path: no '/', and not '.' or '..'")
    return value


def _no_hash(value: str) -> str:
    # an impression list is stored as one row per item, `EVENT_ID#position`: a client id with
    # '#' could take one of those ids (or an impression could take its), and one event be lost
    if "#" in value:
        raise ValueError("an event id may not contain '#' (impression rows are stored as "
                         "EVENT_ID#position)")
    return value


ItemId = Annotated[Id, AfterValidator(_addressable)]
EventId = Annotated[Id, AfterValidator(_no_hash)]
Source = Literal["model", "popularity", "degraded"]
Diversity = Literal["none", "mmr", "category_cap"]
EventType = Literal[tuple(sorted(EVENT_TYPES))]  # type: ignore[valid-type]
# Read by the importers' rules (recsys.data.timestamps): the unit of an epoch number from its
# magnitude, ISO 8601 text with or without a zone (none: UTC), 1990 to a day from now.
EventTime = Annotated[float, BeforeValidator(epoch_seconds), WithJsonSchema({
    "anyOf": [{"type": "number"}, {"type": "string", "maxLength": MAX_TIME_TEXT}],
    "description": "epoch seconds, milliseconds, microseconds or nanoseconds (the unit judged "
                   "by magnitude) or ISO 8601 text (no zone: UTC); between 1990-01-01 and the "
                   "allowed clock skew from now; default: when received"})]


# Validation errors a request body may cost: each one becomes Python objects in FastAPI, so a
# body of tens of thousands of unknown keys would otherwise hold the event loop for a long time.
MAX_ERRORS = 20
MAX_FIELDS = 16  # fields of an object in a request's list: more than any schema here has


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Body(Strict):
    """A whole request body. (Objects inside its lists are bounded by FewErrors instead: a
    Python check per event cost more than the events' validation itself.)"""

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data):
        # unknown keys: one error for all of them, before pydantic makes one per key
        fields = cls.model_fields
        if isinstance(data, dict) and not fields.keys() >= data.keys():
            unknown = [key for key in data if key not in fields]
            if len(unknown) > 1:
                raise PydanticCustomError(
                    "extra_forbidden", "{count} unknown fields (the first: {first})",
                    {"count": len(unknown), "first": ", ".join(repr(str(k)[:40])
                                                               for k in unknown[:3])})
        return data


def _few_errors(value, handler):
    """A list's errors, bounded: past MAX_ERRORS, one error naming how many and the first."""
    if isinstance(value, list):
        for n, item in enumerate(value):  # an object of many keys would make an error each
            if isinstance(item, dict) and len(item) > MAX_FIELDS:
                raise PydanticCustomError("too_many_fields",
                                          "item {n} has {count} fields (at most {limit})",
                                          {"n": n, "count": len(item), "limit": MAX_FIELDS})
    try:
        return handler(value)
    except ValidationError as exc:
        count = exc.error_count()  # counted in Rust; errors() would build every one in Python
        if count <= MAX_ERRORS or not isinstance(value, list):
            raise
        where, msg = "?", "invalid"
        for n, item in enumerate(value):
            try:
                handler([item])
            except ValidationError as first:
                error = first.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(part) for part in (n, *error["loc"][1:]))
                msg = error["msg"]
                break
        raise PydanticCustomError("too_many_errors",
                                  "{count} errors in this list; the first, at {where}: {msg}",
                                  {"count": count, "where": where, "msg": msg}) from None


FewErrors = WrapValidator(_few_errors)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    reasons: dict | None = None


class RecommendationResponse(BaseModel):
    user_id: str | None = None
    items: list[ScoredItem]
    source: Source = Field(description="model: ranked by the model; popularity: the fallback for "
                                       "users with no history (or no model); degraded: retrieval "
                                       "order, the ranker failed or ran out of time")
    fallback: bool = Field(description="true unless the model ranked this response")
    model_version: str = Field(description='the bundle that answered, "none" without a model')


class HistoryRequest(Body):
    history: Annotated[list[Id], FewErrors] = Field(default_factory=list, max_length=MAX_LIST,
                              description="item ids the visitor interacted with, oldest first")
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: Annotated[list[Id], FewErrors] = Field(default_factory=list, max_length=MAX_LIST)
    categories: Annotated[list[Id], FewErrors] | None = Field(None, max_length=MAX_LIST,
                                        description="only items in these categories")
    exclude_categories: Annotated[list[Id], FewErrors] = Field(default_factory=list,
                                                               max_length=MAX_LIST)
    # JSON booleans only: 0 or "yes" is a client bug that a 422 shows (the GET route's query
    # strings are parsed by FastAPI's own rules instead)
    exclude_seen: StrictBool = True
    diversity: Diversity = "none"
    explain: StrictBool = False


class EventIn(Strict):
    """One event about one item (click, view, purchase, rating, a single impression...)."""

    event_id: EventId = Field(description="unique id: a retry with the same id is stored once")
    user_id: Id
    type: EventType
    item_id: Id
    timestamp: EventTime | None = None
    request_id: Id | None = Field(None, description="the recommendation response this belongs to")
    value: float | None = Field(None, allow_inf_nan=False)


class ShownListIn(Strict):
    """An impression of a whole list: stored as one event per item (`EVENT_ID#position`),
    grouped by `request_id` (default: the event id)."""

    event_id: EventId = Field(description="unique id: a retry with the same id is stored once")
    user_id: Id
    type: Literal["impression"]
    items: Annotated[list[Id], FewErrors] = Field(min_length=1, max_length=MAX_LIST,
                                                  description="the list shown, in order")
    timestamp: EventTime | None = None
    request_id: Id | None = None


class EventsRequest(Body):
    events: Annotated[list[EventIn | ShownListIn], FewErrors] = Field(min_length=1,
                                                                      max_length=MAX_LIST)


class EventsResponse(BaseModel):
    accepted: int = Field(description="events stored now (durable before this response)")
    duplicates: int = Field(description="events whose id was already stored (not counted twice)")


class ItemIn(Strict):
    item_id: ItemId
    title: str = Field("", max_length=MAX_TEXT)
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="what the encoder reads")
    category: Id | None = None


class ItemsRequest(Body):
    items: Annotated[list[ItemIn], FewErrors] = Field(min_length=1, max_length=MAX_ITEMS_PER_PUT)


class ItemsResponse(BaseModel):
    upserted: int
    model_version: str


class DeletedResponse(BaseModel):
    deleted: str
    model_version: str


Origin = Literal["bundle", "live"]


class ItemResponse(BaseModel):
    """One item as it is served now."""

    item_id: str
    title: str
    text: str | None = Field(description="what the encoder read, for items added or changed by "
                                         "PUT /items; null for the bundle's items (a bundle "
                                         "keeps no item text)")
    category: str | None
    source: Origin = Field(description="bundle: from the model bundle; live: added or changed by "
                                       "PUT /items since")
    updated_at: datetime | None = Field(description="when PUT /items last changed it (live "
                                                    "items only)")
    model_version: str


class HistoryEntry(BaseModel):
    item_id: str
    title: str
    category: str | None
    source: Origin = Field(description="bundle: the training data; live: an event posted to "
                                       "/events since")
    type: str | None = Field(description="the live event's type (click, purchase...); null for "
                                         "bundle entries, which keep order, not events")
    time: datetime | None = Field(description="when the live event happened; null for bundle "
                                              "entries")


class UserHistoryResponse(BaseModel):
    """A user's history as the engine reads it for their recommendations."""

    user_id: str
    items: list[HistoryEntry] = Field(max_length=MAX_LIST, description=(
        f"oldest first: the bundle's history, then the live events it uses (positive events "
        f"since the bundle's data ends, at most RECSYS_LIVE_HISTORY_ITEMS); the latest "
        f"{MAX_LIST} when longer"))
    total: int = Field(ge=0, description="entries in the whole history")
    last_event_at: datetime | None = Field(description="the user's latest event of any kind, "
                                                       "bundle or live")
    model_version: str


class StoreLag(BaseModel):
    reachable: bool = Field(description="the last check of the live store worked")
    seconds_since_sync: float | None = Field(
        description="since this replica last read the store's item changes (None: never)")
    item_changes_behind: int = Field(
        description="item changes in the store (as last read) this replica has not applied")
    error: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "no_model"]
    model_version: str
    source: Literal["model", "popularity"] = Field(
        description="what recommendations come from now: the model, or (without one) the "
                    "popularity of live events")
    store: StoreLag | None = Field(None, description="how far behind the live store this "
                                   "replica is (other replicas' item changes)")


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str
    reason: str | None = None


class ReloadRequest(Body):
    version: str | None = Field(None, pattern=VERSION_PATTERN.pattern,
                                description="version to load and make CURRENT; "
                                            "default: reload whatever CURRENT names")


class ReloadResponse(BaseModel):
    model_version: str
    previous: str | None


class ErrorResponse(BaseModel):
    detail: str | list


__all__ = ["DeletedResponse", "Diversity", "ErrorResponse", "EventId", "EventIn", "EventsRequest",
           "EventsResponse", "HealthResponse", "HistoryEntry", "HistoryRequest", "Id", "ItemId",
           "ItemIn", "ItemResponse", "ItemsRequest", "ItemsResponse", "MAX_ID",
           "MAX_ITEMS_PER_PUT", "MAX_K", "MAX_LIST", "MAX_TEXT", "Origin", "ReadyResponse",
           "RecommendationResponse", "ReloadRequest", "ReloadResponse", "ScoredItem",
           "ShownListIn", "Source", "StoreLag", "UserHistoryResponse"]
