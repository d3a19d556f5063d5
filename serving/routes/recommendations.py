"""Recommendations for a known user (live history included) or an anonymous history.

Both go through the coalescer (serving.batching): requests waiting for the model share one
engine call."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from serving import service
from serving.deps import Ctx, DataCaller
from serving.errors import NoModel
from serving.schemas import (
    MAX_ID,
    MAX_K,
    MAX_LIST,
    Diversity,
    ErrorResponse,
    HistoryRequest,
    RecommendationResponse,
)


def known_query_only(request: Request) -> None:
    """Refuse a query parameter the route does not declare (a misspelt `exlude=` would otherwise
    be ignored silently): 422 naming it, as for any other invalid query."""
    route = request.scope.get("route")
    if route is None:
        return
    known, dependants = set(), [route.dependant]
    while dependants:
        dependant = dependants.pop()
        known |= {param.alias for param in dependant.query_params}
        dependants += dependant.dependencies
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", unknown[0]),
                                       "msg": "unknown query parameter"}])


router = APIRouter(tags=["recommendations"], dependencies=[Depends(known_query_only)], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
    503: {"model": ErrorResponse}})

QueryId = Annotated[str, Query(min_length=1, max_length=MAX_ID)]
IdList = Annotated[list[QueryId], Query(max_length=MAX_LIST)]
OptionalIdList = Annotated[list[QueryId] | None, Query(max_length=MAX_LIST)]


async def recommend_for_user(
        ctx: Ctx, _: DataCaller,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        exclude: IdList = [],  # noqa: B006
        categories: OptionalIdList = None,
        exclude_categories: IdList = [],  # noqa: B006
        exclude_seen: bool = True, diversity: Diversity = "none", explain: bool = False) -> dict:
    """Top-k items for a user. Unknown users and users with no history get the popularity
    fallback (`source: popularity`); events posted to /events count at once."""
    if ctx.holder.current is None:
        _refuse_model_filters(categories, exclude_categories, diversity)
        return _count(ctx, "user", await ctx.pool.run(service.no_model_popular, ctx.store,
                                                      user_id, k, exclude))
    filters = service.make_filters(exclude=exclude, categories=categories,
                                   exclude_categories=exclude_categories,
                                   exclude_seen=exclude_seen, diversity=diversity)
    result = await ctx.batcher.submit(service.RecommendJob(k, filters, explain, user_id=user_id))
    return _count(ctx, "user", result)


router.add_api_route("/recommendations/{user_id}", recommend_for_user, methods=["GET"],
                     response_model=RecommendationResponse)


@router.post("/recommendations", response_model=RecommendationResponse)
async def recommend_for_history(ctx: Ctx, _: DataCaller, request: HistoryRequest) -> dict:
    """Top-k items for an anonymous visitor, from the item ids they interacted with."""
    if ctx.holder.current is None:
        _refuse_model_filters(request.categories, request.exclude_categories, request.diversity)
        return _count(ctx, "history", await ctx.pool.run(
            service.no_model_popular, ctx.store, None, request.k, request.exclude))
    filters = service.make_filters(exclude=request.exclude, categories=request.categories,
                                   exclude_categories=request.exclude_categories,
                                   exclude_seen=request.exclude_seen, diversity=request.diversity)
    result = await ctx.batcher.submit(service.RecommendJob(request.k, filters, request.explain,
                                                           history=request.history))
    return _count(ctx, "history", result)


def _refuse_model_filters(categories, exclude_categories, diversity: str) -> None:
    """Without a model the fallback ranks live clicks, which carry no categories: filters it
    cannot apply are refused (503, as the model is missing), never silently dropped."""
    asked = [name for name, value in (("categories", categories is not None),
                                      ("exclude_categories", bool(exclude_categories)),
                                      ("diversity", diversity != "none")) if value]
    if asked:
        raise NoModel(f"no model is loaded: {', '.join(asked)} cannot apply without one (the "
                      "popularity fallback knows no categories); retry without them, or once "
                      "/ready is 200")


def _count(ctx, route: str, result: dict) -> dict:
    ctx.metrics.count_response(route, result["source"])
    if result["fallback"]:
        reason = "no_model" if result["model_version"] == service.NO_MODEL else result["source"]
        ctx.metrics.fallbacks.labels(reason=reason).inc()
    return result
