"""The recommendation explorer: web pages under /ui, served by the API's own app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from serving.ui.routes import PageRefused, SignInNeeded, refused, router, sign_in_needed

STATIC = Path(__file__).resolve().parent / "static"


def install(app: FastAPI) -> None:
    """Add the explorer's pages, its static files and the `/` redirect to `app`."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_exception_handler(PageRefused, refused)
    app.add_exception_handler(SignInNeeded, sign_in_needed)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)


__all__ = ["install"]
