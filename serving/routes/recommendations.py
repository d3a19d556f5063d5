"""Recommendations for a known user (live history included) or an anonymous history.

Both go through the coalescer (serving.batching): requests waiting for the model share one
engine call."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from serving import service
from serving.deps import Ctx, DataCaller
from serving.schemas import (MAX_ID, MAX_K, MAX_LIST, Diversity, ErrorResponse, HistoryRequest,
                             RecommendationResponse)

router = APIRouter(tags=["recommendations"], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
    503: {"model": ErrorResponse}})

IdList = Annotated[list[Annotated[str, Query(min_length=1, max_length=MAX_ID)]],
                   Query(max_length=MAX_LIST)]


@router.get("/recommendations/{user_id}", response_model=RecommendationResponse)
async def recommend_for_user(
        ctx: Ctx, _: DataCaller,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        exclude: Annotated[list[str], Query(max_length=MAX_LIST)] = [],  # noqa: B006
        categories: Annotated[list[str] | None, Query(max_length=MAX_LIST)] = None,
        exclude_categories: Annotated[list[str], Query(max_length=MAX_LIST)] = [],  # noqa: B006
        exclude_seen: bool = True, diversity: Diversity = "none", explain: bool = False) -> dict:
    """Top-k items for a user. Unknown users and users with no history get the popularity
    fallback (`source: popularity`); events posted to /events count at once."""
    if ctx.holder.current is None:
        return _count(ctx, "user", await ctx.pool.run(service.no_model_popular, ctx.store,
                                                      user_id, k, exclude))
    filters = service.make_filters(exclude=exclude, categories=categories,
                                   exclude_categories=exclude_categories,
                                   exclude_seen=exclude_seen, diversity=diversity)
    result = await ctx.batcher.submit(service.RecommendJob(k, filters, explain, user_id=user_id))
    return _count(ctx, "user", result)


@router.post("/recommendations", response_model=RecommendationResponse)
async def recommend_for_history(ctx: Ctx, _: DataCaller, request: HistoryRequest) -> dict:
    """Top-k items for an anonymous visitor, from the item ids they interacted with."""
    if ctx.holder.current is None:
        return _count(ctx, "history", await ctx.pool.run(
            service.no_model_popular, ctx.store, None, request.k, request.exclude))
    filters = service.make_filters(exclude=request.exclude, categories=request.categories,
                                   exclude_categories=request.exclude_categories,
                                   exclude_seen=request.exclude_seen, diversity=request.diversity)
    result = await ctx.batcher.submit(service.RecommendJob(request.k, filters, request.explain,
                                                           history=request.history))
    return _count(ctx, "history", result)


def _count(ctx, route: str, result: dict) -> dict:
    ctx.metrics.responses.labels(route=route, source=result["source"]).inc()
    if result["fallback"]:
        reason = "no_model" if result["model_version"] == service.NO_MODEL else result["source"]
        ctx.metrics.fallbacks.labels(reason=reason).inc()
    return result
