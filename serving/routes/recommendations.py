"""Recommendations for a known user (live history included) or an anonymous history.

Both go through the coalescer (serving.batching): requests waiting for the model share one
engine call. `GET /recommendations/{user_id}` with a plain query string skips FastAPI's
per-request parameter solving (`UserRoute`); everything else takes FastAPI's own path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.routing import APIRoute, serialize_response
from starlette.responses import Response

from serving import service
from serving.deps import Ctx, DataCaller, check_data_caller, get_context
from serving.schemas import (MAX_ID, MAX_K, MAX_LIST, Diversity, ErrorResponse, HistoryRequest,
                             RecommendationResponse)

router = APIRouter(tags=["recommendations"], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
    503: {"model": ErrorResponse}})

IdList = Annotated[list[Annotated[str, Query(min_length=1, max_length=MAX_ID)]],
                   Query(max_length=MAX_LIST)]


_FLAGS = {b"true": True, b"false": False}
_DIVERSITY = {b"none": "none", b"mmr": "mmr", b"category_cap": "category_cap"}


def plain_query(raw: bytes) -> dict | None:
    """The arguments of a query string in the plainest form (`k=10&explain=false`: each of k,
    exclude_seen, diversity, explain at most once, canonical values, nothing to decode), or
    None for anything else, which FastAPI then parses and validates as it always does."""
    args: dict = {}
    if not raw:
        return args
    if b"%" in raw or b"+" in raw:
        return None
    for part in raw.split(b"&"):
        name, equals, value = part.partition(b"=")
        key = name.decode("ascii", "replace")
        if not equals or key in args:
            return None
        if name == b"k":
            if not (value.isdigit() and value[:1] != b"0" and len(value) <= 3
                    and int(value) <= MAX_K):
                return None
            args[key] = int(value)
        elif name in (b"exclude_seen", b"explain"):
            if value not in _FLAGS:
                return None
            args[key] = _FLAGS[value]
        elif name == b"diversity":
            if value not in _DIVERSITY:
                return None
            args[key] = _DIVERSITY[value]
        else:
            return None
    return args


class UserRoute(APIRoute):
    """The route of `recommend_for_user`, with a fast path for its common form.

    FastAPI solves the eight parameters and two dependencies of this route anew on every
    request, which measured about 0.2 ms of CPU, more than the rest of the HTTP layer. A request
    whose query string `plain_query` understands, that carries an X-API-Key header and meets no
    dependency override is answered here with the same calls FastAPI would make: the same
    dependencies (context, key check, rate limit), the same endpoint, the same response
    serializer; errors raised on the way reach the same exception handlers. Any other request
    takes FastAPI's path. tests/test_serving_fastpath.py checks both give the same status,
    headers and bytes."""

    async def handle(self, scope, receive, send) -> None:
        args = plain_query(scope.get("query_string", b"")) if scope["method"] == "GET" else None
        user_id = scope.get("path_params", {}).get("user_id")
        api_key = _header(scope, b"x-api-key")
        app = scope.get("app")
        if (args is None or not user_id or len(user_id) > MAX_ID or not api_key
                or getattr(app, "dependency_overrides", None)):
            await super().handle(scope, receive, send)
            return
        request = Request(scope, receive)
        ctx = await get_context(request)
        caller = await check_data_caller(request, ctx, api_key)
        result = await recommend_for_user(ctx, caller, user_id, exclude=[], categories=None,
                                          exclude_categories=[], **args)
        content = await serialize_response(
            field=self.response_field, response_content=result,
            include=self.response_model_include, exclude=self.response_model_exclude,
            by_alias=self.response_model_by_alias,
            exclude_unset=self.response_model_exclude_unset,
            exclude_defaults=self.response_model_exclude_defaults,
            exclude_none=self.response_model_exclude_none, dump_json=True)
        await Response(content=content, media_type="application/json")(scope, receive, send)


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


router.add_api_route("/recommendations/{user_id}", recommend_for_user, methods=["GET"],
                     response_model=RecommendationResponse, route_class_override=UserRoute)


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
