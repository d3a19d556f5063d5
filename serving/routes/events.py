"""POST /events: stored durably before the answer, then reflected in the user's next request."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from recsys.store import Event
from serving.deps import Ctx, DataCaller
from serving.schemas import ErrorResponse, EventsRequest, EventsResponse, ShownListIn

router = APIRouter(tags=["events"], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
    503: {"model": ErrorResponse}})


@router.post("/events", response_model=EventsResponse)
async def post_events(ctx: Ctx, _: DataCaller, request: EventsRequest) -> dict:
    """One or many events (click, impression with its shown list, view, purchase...).

    Acknowledged only once durable; an event id already stored is not counted again; an event
    stamped more than the allowed skew in the future is refused (422), and so is its batch.
    """
    now = time.time()
    horizon = now + ctx.settings.future_skew_s
    events: list[Event] = []
    for n, e in enumerate(request.events):
        stamp = now if e.timestamp is None else e.timestamp
        if stamp > horizon:
            ctx.metrics.events_rejected.labels(reason="future").inc()
            raise RequestValidationError([{
                "loc": ("body", "events", n, "timestamp"), "type": "value_error",
                "msg": f"timestamp is more than {ctx.settings.future_skew_s:.0f}s in the "
                       "future (the allowed clock skew)"}])
        if isinstance(e, ShownListIn):  # an impression list: one row per item shown, one request id
            for position, item in enumerate(e.items):
                events.append(Event(f"{e.event_id}#{position}", e.user_id, item, stamp, e.type,
                                    e.request_id or e.event_id, float(position)))
        else:
            events.append(Event(e.event_id, e.user_id, e.item_id, stamp, e.type, e.request_id,
                                e.value))
    # durable before the answer (with other requests' batches: serving.event_writer); the
    # user's next request reads them from the store
    new = await ctx.event_writes.write(events)  # raises -> 503, nothing acked
    for event, is_new in zip(events, new, strict=True):
        if not is_new:
            continue
        ctx.metrics.events_ingested.labels(type=event.type).inc()
        ctx.holder.clock.observe(event.timestamp)
    duplicates = len(new) - sum(new)
    if duplicates:
        ctx.metrics.events_duplicate.inc(duplicates)
    return {"accepted": sum(new), "duplicates": duplicates}
