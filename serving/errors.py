"""Domain errors mapped to HTTP status in one place: bad input 400/422, unknown 404, refused
bundle 409, rate limit 429, not ready / overloaded / store down 503, anything else 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recsys.errors import BundleError, DataError, NotFoundError, RecsysError
from recsys.store import StoreUnavailable
from serving.auth import AuthError, retry_after_header

log = logging.getLogger(__name__)


class Overloaded(RecsysError):
    """More requests waiting for the model than the server accepts: try again shortly."""


class RateLimited(RecsysError):
    def __init__(self, wait_s: float, caller: str = "-") -> None:
        super().__init__(f"rate limit exceeded: retry in {wait_s:.2f}s")
        self.wait_s = wait_s
        self.caller = caller


class NoModel(RecsysError):
    """The route needs a model and none is loaded."""


class BadRequest(RecsysError):
    """Input that passed the schema but makes no sense (names the field)."""


def _json(status: int, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError):
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return _json(exc.status, str(exc), headers)

    @app.exception_handler(RateLimited)
    async def _rate(request: Request, exc: RateLimited):
        return _json(429, str(exc), {"Retry-After": retry_after_header(exc.wait_s)})

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        request.app.state.context.metrics.overloaded.inc()
        return _json(503, str(exc) or "server busy", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # name the field, never echo the (possibly huge) input back
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type")}
                  for e in exc.errors()[:20]]
        return _json(422, errors)

    @app.exception_handler(RecsysError)
    async def _domain(request: Request, exc: RecsysError):
        if isinstance(exc, NotFoundError):
            return _json(404, str(exc))
        if isinstance(exc, BundleError):
            return _json(409, str(exc))
        if isinstance(exc, (StoreUnavailable, NoModel)):
            return _json(503, str(exc), {"Retry-After": "5"})
        if isinstance(exc, (DataError, BadRequest)):
            return _json(400, str(exc))
        log.error("unexpected domain error: %s", exc)
        return _json(500, "internal error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal error")


__all__ = ["BadRequest", "NoModel", "Overloaded", "RateLimited", "install"]
