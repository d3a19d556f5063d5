"""Recommendations for a known user (live history included) or an anonymous history.

Both go through the coalescer (serving.batching): requests waiting for the model share one
engine call. `GET /recommendations/{user_id}` with a valid query (checked by FastAPI's own
validation, `user_query`) is answered by `fast_path`, in front of FastAPI's middleware stack
(serving.main.RecsysAPI); everything else takes FastAPI's own path."""

from __future__ import annotations

import functools
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, serialize_response
from starlette.datastructures import QueryParams
from starlette.responses import Response

from serving import service
from serving.auth import DATA
from serving.deps import Ctx, DataCaller, authorize
from serving.errors import NoModel, RateLimited
from serving.middleware import record
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
    unknown = sorted(set(request.query_params) - declared_query(route))
    if unknown:
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", unknown[0]),
                                       "msg": "unknown query parameter"}])


router = APIRouter(tags=["recommendations"], dependencies=[Depends(known_query_only)], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
    503: {"model": ErrorResponse}})

QueryId = Annotated[str, Query(min_length=1, max_length=MAX_ID)]
IdList = Annotated[list[QueryId], Query(max_length=MAX_LIST)]
OptionalIdList = Annotated[list[QueryId] | None, Query(max_length=MAX_LIST)]


def declared_query(route: APIRoute) -> set[str]:
    """The query parameter names `route` declares, its dependencies' included."""
    known, dependants = set(), [route.dependant]
    while dependants:
        dependant = dependants.pop()
        known |= {param.alias for param in dependant.query_params}
        dependants += dependant.dependencies
    return known


def user_query(user_id: str, raw: bytes) -> dict | None:
    """The arguments of `GET /recommendations/{user_id}` for the fast path: the query string
    parsed by Starlette and checked by FastAPI's own validation against the route's own
    parameter declarations, as FastAPI does for its path; None when anything is invalid or
    undeclared, which FastAPI then answers (its 422) as always."""
    values = _valid_query(raw)
    if values is None:
        return None
    path, errors = request_params_to_args(_USER_ROUTE.dependant.path_params,
                                          {"user_id": user_id})
    if errors:
        return None
    # fresh lists: the remembered answer is shared by every request with this query string
    return {**path, **{name: list(value) if isinstance(value, list) else value
                       for name, value in values.items()}}


@functools.lru_cache(maxsize=256)
def _valid_query(raw: bytes) -> dict | None:
    # remembered per query string: validating it costs more than the rest of the fast path, and
    # clients repeat a few query strings (the answer depends on the string alone)
    query = QueryParams(raw)
    if not _USER_QUERY.issuperset(query.keys()):
        return None
    values, errors = request_params_to_args(_USER_ROUTE.dependant.query_params, query)
    return None if errors else values


ROUTE = "/recommendations/{user_id}"
_PREFIX = "/recommendations/"


async def fast_path(app, scope, receive, send) -> bool:
    """Answer `GET /recommendations/{user_id}` in its common form here, before FastAPI's
    stack; False (nothing sent) for any other request, which the app then serves as always.

    Every layer of the stack (seven middlewares, the router, the route's parameter solving)
    runs for each request; together with them the event loop spent about ten times the CPU
    per request that uvicorn alone needs, measured at concurrency 32 (docs/benchmarks.md,
    Serving). A request whose path and query `user_query` finds valid, that carries an
    X-API-Key header and no body (none, or Content-Length: 0), on an app with no dependency
    overrides, is answered with the calls FastAPI would make: the same key check and rate
    limit (serving.deps.authorize), the same endpoint, the same response serializer, the
    app's own exception handlers for whatever is raised, and the same latency metric and
    access log line (serving.middleware.record). tests/test_serving_fastpath.py checks both
    give the same status, headers and bytes."""
    path = scope["path"]
    if (scope["method"] != "GET" or not path.startswith(_PREFIX) or scope.get("root_path")
            or app.dependency_overrides):
        return False
    user_id = path[len(_PREFIX):]
    if "/" in user_id:
        return False
    api_key = _header(scope, b"x-api-key")
    if not api_key or _header(scope, b"content-length") not in (None, "0") \
            or _header(scope, b"transfer-encoding") is not None:
        return False
    args = user_query(user_id, scope.get("query_string", b""))
    if args is None:
        return False
    started = time.perf_counter()
    scope["app"] = app
    ctx = app.state.context
    caller = "-"
    try:
        client = scope.get("client")
        caller = authorize(ctx, api_key, DATA, client[0] if client else None)
        result = await recommend_for_user(ctx, caller, **args)
        response = Response(content=await _serialize(result),
                            media_type="application/json")
    except Exception as exc:  # what FastAPI's exception middlewares would answer
        if isinstance(exc, RateLimited):
            caller = exc.caller
        response = await _handler(app, exc)(Request(scope, receive), exc)
    await response(scope, receive, send)
    record(ctx.metrics, "GET", ROUTE, response.status_code, time.perf_counter() - started,
           caller)
    return True


def _handler(app, exc: Exception):
    # the nearest registered class in the exception's MRO, as Starlette looks it up
    for cls in type(exc).__mro__:
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    raise exc


async def _serialize(result: dict) -> bytes:
    route = _USER_ROUTE
    return await serialize_response(
        field=route.response_field, response_content=result,
        include=route.response_model_include, exclude=route.response_model_exclude,
        by_alias=route.response_model_by_alias,
        exclude_unset=route.response_model_exclude_unset,
        exclude_defaults=route.response_model_exclude_defaults,
        exclude_none=route.response_model_exclude_none, dump_json=True)


def _route() -> APIRoute:
    # this module's own route object: its response field is what FastAPI serializes with
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == ROUTE
                and "GET" in r.methods)


def _header(scope, name: bytes) -> str | None:
    # the first one, as Starlette's Headers.get; latin-1, as Starlette decodes header values
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


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


router.add_api_route(ROUTE, recommend_for_user, methods=["GET"],
                     response_model=RecommendationResponse)
_USER_ROUTE = _route()
_USER_QUERY = declared_query(_USER_ROUTE)


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
