"""A user's history as the engine sees it: the bundle's, then the live events it uses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from serving import lookup
from serving.deps import Ctx, DataCaller
from serving.errors import NoModel
from serving.schemas import MAX_ID, ErrorResponse, UserHistoryResponse

router = APIRouter(tags=["users"], responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
    429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})


@router.get("/users/{user_id}", response_model=UserHistoryResponse)
async def get_user(ctx: Ctx, _: DataCaller,
                   user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)]) -> dict:
    """The history GET /recommendations/{user_id} ranks from, oldest first: the bundle's part,
    then live events posted to /events since the bundle's data ends, each marked (404 for a
    user with neither)."""
    recommender = ctx.holder.refresh_items()
    if recommender is None:
        raise NoModel("no model is loaded: histories are read by one")
    return await ctx.pool.run(lookup.user_body, recommender, ctx.store, user_id,
                              ctx.settings.live_history_items)
