"""One item as served, similar items, and cold-start item changes: PUT embeds and serves at
once, DELETE retires."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Query

from recsys.store import StoredItem
from serving import lookup, service
from serving.deps import Ctx, DataCaller
from serving.errors import NoModel
from serving.schemas import (
    MAX_ID,
    MAX_K,
    DeletedResponse,
    ErrorResponse,
    ItemResponse,
    ItemsRequest,
    ItemsResponse,
    RecommendationResponse,
)

router = APIRouter(tags=["items"], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
    429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})


@router.get("/items/{item_id}", response_model=ItemResponse)
async def get_item(ctx: Ctx, _: DataCaller,
                   item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)]) -> dict:
    """The item as served now: from the bundle, or added or changed by PUT /items (404 for an
    unknown or deleted item)."""
    recommender = ctx.holder.refresh_items()
    if recommender is None:
        raise NoModel("no model is loaded: items are served by one")
    return await ctx.pool.run(lookup.item_body, recommender, ctx.store, item_id)


@router.get("/items/{item_id}/similar", response_model=RecommendationResponse)
async def similar_items(ctx: Ctx, _: DataCaller,
                        item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
                        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> dict:
    """Items whose text embeds closest to this one (404 for an unknown or deleted item)."""
    recommender = ctx.holder.refresh_items()
    if recommender is None:
        raise NoModel("no model is loaded: similar items need one")
    return await ctx.pool.run(service.similar, recommender, item_id, k)


@router.put("/items", response_model=ItemsResponse)
async def put_items(ctx: Ctx, _: DataCaller, request: ItemsRequest) -> dict:
    """Add or change items: their text is embedded now and they are retrievable at once."""
    recommender = ctx.holder.current
    if recommender is None:
        raise NoModel("no model is loaded: new items need its encoder")
    latest = {item.item_id: item for item in request.items}  # the last of repeated ids wins
    items = list(latest.values())

    def embed_and_store() -> list[StoredItem]:
        encoder = ctx.holder.encoder(recommender)
        # no progress bar: the server's stderr is its log stream
        vectors = encoder.encode([item.text for item in items], show_progress=False)
        fingerprint = recommender.manifest.get("encoder", {}).get("fingerprint", "")
        now = time.time()
        stored = [StoredItem(i.item_id, i.title, i.text, i.category, vectors[j], fingerprint,
                             False, now) for j, i in enumerate(items)]
        ctx.store.put_items(stored)  # durable first: a restart, or another replica, serves them too
        ctx.holder.apply_item_changes()
        return stored

    await ctx.pool.run(embed_and_store)
    ctx.metrics.items_changed.labels(action="upsert").inc(len(items))
    return {"upserted": len(items), "model_version": recommender.version}


@router.delete("/items/{item_id}", response_model=DeletedResponse)
async def delete_item(ctx: Ctx, _: DataCaller,
                      item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)]) -> dict:
    """Stop serving an item (404 if it is not served now)."""
    recommender = ctx.holder.apply_item_changes()  # an item another replica added just now
    if recommender is None:
        raise NoModel("no model is loaded")
    if item_id not in recommender.item_rows:
        from recsys.errors import NotFoundError

        raise NotFoundError(f"unknown item {item_id!r}")

    def retire() -> None:
        ctx.store.put_items([StoredItem(item_id, "", "", None, None, "", True, time.time())])
        ctx.holder.apply_item_changes()

    await ctx.pool.run(retire)
    ctx.metrics.items_changed.labels(action="delete").inc()
    return {"deleted": item_id, "model_version": recommender.version}
