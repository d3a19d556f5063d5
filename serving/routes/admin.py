"""Admin: load a model version beside the serving one and swap it in (admin key only)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from recsys.errors import BundleError
from serving.deps import AdminCaller, Ctx
from serving.schemas import ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], responses={
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
    404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})


@router.post("/reload", response_model=ReloadResponse)
async def reload(ctx: Ctx, _: AdminCaller, request: ReloadRequest | None = None) -> dict:
    """Load `version` (and make it CURRENT), or reload CURRENT. The new bundle is verified
    (checksums, dimensions) and warmed first; a broken one is refused (409) and the old one
    keeps serving."""
    from recsys.bundle_versions import check_version_name

    version = request.version if request is not None else None
    if version is not None:
        try:
            check_version_name(version)  # before anything touches the filesystem
        except BundleError as exc:
            from serving.errors import BadRequest

            raise BadRequest(str(exc)) from exc
    previous = ctx.holder.current.version if ctx.holder.current is not None else None
    loaded = await run_in_threadpool(ctx.holder.reload, version, promote=version is not None)
    return {"model_version": loaded.version, "previous": previous}
