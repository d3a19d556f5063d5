"""Liveness, readiness, health and Prometheus metrics (no key needed)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Response

from serving.deps import Ctx
from serving.schemas import HealthResponse, ReadyResponse
from serving.service import NO_MODEL

router = APIRouter(tags=["health"])

# the folders of an absolute path (a bundle's, the models folder's): its last part stays
_FOLDERS = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"]+/)*")


def without_paths(reason: str | None) -> str | None:
    """`reason` with the folders of absolute paths removed: /ready needs no key, and where the
    server keeps its files is not for everyone to read (the log has the full reason)."""
    return None if reason is None else _FOLDERS.sub("", reason)


@router.get("/live")
async def live() -> dict:
    """The process is up (it may still have no model)."""
    return {"live": True}


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(ctx: Ctx, response: Response) -> dict:
    """200 once a model is loaded; 503 without one (recommendations then fall back to live
    popularity and say so)."""
    recommender = ctx.holder.current
    if recommender is None:
        response.status_code = 503
        return {"ready": False, "model_version": NO_MODEL,
                "reason": without_paths(ctx.holder.last_error)}
    return {"ready": True, "model_version": recommender.version, "reason": None}


@router.get("/health", response_model=HealthResponse)
async def health(ctx: Ctx) -> dict:
    """The model serving now, and how far behind the live store this replica is."""
    recommender = ctx.holder.current
    store = ctx.holder.store_lag() if ctx.holder.store is not None else None
    if recommender is None:
        return {"status": "no_model", "model_version": NO_MODEL, "source": "popularity",
                "store": store}
    return {"status": "ok", "model_version": recommender.version, "source": "model",
            "store": store}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
async def metrics(ctx: Ctx) -> Response:
    data, content_type = ctx.metrics.render()
    return Response(data, media_type=content_type)
