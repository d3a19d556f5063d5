"""Builds the FastAPI app (`create_app`) and runs it (`run`, what `recsys serve` calls).

The model, the event store and the live state are opened in the lifespan handler, never at
import time; a corrupt event store stops the start with a clear error.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from recsys.store import EventStore, open_store
from serving import errors, service, shedding
from serving.auth import KeyChecker, RateLimiter
from serving.batching import Coalescer
from serving.deps import AppContext, ModelPool
from serving.event_writer import EventWriter
from serving.metrics import Metrics
from serving.middleware import ServingMiddleware
from serving.model_holder import Loader, ModelHolder
from serving.preflight import ServeRefused, bind_socket, check_models_dir
from serving.routes import admin, events, health, items, recommendations, users
from serving.settings import Settings, get_settings
from serving.ui import install as install_explorer

log = logging.getLogger(__name__)

DESCRIPTION = """Personalised recommendations for catalogues whose items have text.

Every recommendation response names the `model_version` that produced it and its `source`:
`model`, `popularity` (fallback for unknown users, empty histories, or no model) or `degraded`
(the ranker failed or ran out of time: retrieval order). Data routes need a data key in
`X-API-Key`; `/admin` routes need the admin key; `/live`, `/ready`, `/health` and `/metrics` are
open."""


class RecsysAPI(FastAPI):
    """FastAPI, with load shedding (serving.shedding) and the recommendations fast path
    (serving.routes.recommendations.fast_path) tried before its middleware stack."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            await shedding.serve(self, scope, receive, send, self._answer)
        else:
            await super().__call__(scope, receive, send)

    async def _answer(self, scope, receive, send) -> None:
        if not await recommendations.fast_path(self, scope, receive, send):
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, loader: Loader | None = None,
               store: EventStore | None = None) -> FastAPI:
    """The app. `loader` replaces `Recommender.load` and `store` the SQLite store (tests)."""
    settings = (settings or get_settings()).check_secure()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from recsys.index import set_search_threads

        set_search_threads(1)  # one OpenMP thread per search: the pool gives the parallelism
        event_store, scratch = store, None
        if event_store is None:
            location = settings.store_location()
            if location is None:
                scratch = tempfile.TemporaryDirectory(prefix="recsys-events-")
                location = str(Path(scratch.name) / "events.sqlite")
                log.warning("no models folder (yet) and no RECSYS_STORE: events are kept "
                            "in %s only while the server runs", location)
            event_store = open_store(location)  # EventStoreError stops the start
        holder = ModelHolder(settings.models_dir, store=event_store, threads=1,
                             ranker_timeout_s=settings.ranker_timeout_ms / 1000.0,
                             compiled_ranker=settings.compiled_ranker,
                             load_encoder=settings.load_encoder, loader=loader,
                             on_change=metrics.model_loaded, on_refused=metrics.model_refused)
        holder.load_current(waiting=settings.wait_for_model)
        holder.start_polling(settings.poll_current_s)
        holder.start_following(settings.follow_store_s)
        pool = ModelPool(settings.model_threads, settings.max_pending)
        batcher = Coalescer(pool.executor, max_running=settings.model_threads,
                            max_batch=settings.batch_max, max_pending=settings.max_pending,
                            run=partial(service.answer_batch, holder=holder, store=event_store,
                                        live_items=settings.live_history_items))
        batcher.batch_sizes = metrics.recommend_batch.observe
        event_writes = EventWriter(event_store.append, settings.max_pending_events)
        app.state.context = AppContext(
            settings=settings, holder=holder, store=event_store, metrics=metrics,
            pool=pool, keys=KeyChecker(settings.api_keys, settings.admin_key),
            limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
            batcher=batcher, event_writes=event_writes)
        try:
            yield
        finally:
            holder.close()
            pool.close()
            event_writes.close()
            if store is None:
                event_store.close()
            if scratch is not None:
                scratch.cleanup()

    app = RecsysAPI(title="recsys", version="1", description=DESCRIPTION, lifespan=lifespan)
    for router in (recommendations.router, items.router, users.router, events.router,
                   health.router, admin.router):
        app.include_router(router)
    install_explorer(app)
    errors.install(app)
    app.add_middleware(ServingMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    return app


def run(models: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000,
        log_format: str | None = None, wait_for_model: bool = False) -> None:
    """Serve `models` (a models directory with CURRENT) until interrupted.

    Everything that can be refused is refused before the model loads, in one line each: a bad
    RECSYS_* value, a path that is no models folder (serving.preflight), a port in use."""
    import uvicorn

    from serving import json_logs

    update: dict = {"models_dir": Path(models), "host": host, "port": port}
    if log_format is not None:
        update["log_format"] = log_format
    if wait_for_model:
        update["wait_for_model"] = True
    settings = get_settings().model_copy(update=update)
    settings.check_secure()
    check_models_dir(settings.models_dir, wait_for_model=settings.wait_for_model)
    if settings.wait_for_model and settings.poll_current_s <= 0:
        raise ServeRefused("--wait-for-model needs RECSYS_POLL_CURRENT_S above 0 (it is how "
                           "the server notices the model)")
    sock = bind_socket(host, port)
    try:
        location = settings.store_location()
        if location is not None:
            open_store(location).close()  # corrupt or unreachable: one clear line, exit 2
        settings.log_format = json_logs.resolve_format(settings.log_format)
        json_logs.configure(settings.log_level, settings.log_format)
        options = dict(log_config=None, access_log=False, timeout_graceful_shutdown=10,
                       http=_http_protocol())
        if settings.workers == 1:
            # uvicorn listens on the socket bound above: the address was ours before the load
            server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
            log.info("listening on http://%s:%d (Ctrl+C to stop)", host, port)
            try:
                server.run(sockets=[sock])
            except KeyboardInterrupt:
                pass
            if not server.started:
                raise SystemExit(3)  # the app did not start (logged): uvicorn.run's exit code
            return
    finally:
        sock.close()
    # worker processes rebuild the settings from the environment: hand them what the CLI said.
    # uvicorn binds the address in this process, before any worker loads the model.
    os.environ.update({"RECSYS_MODELS_DIR": str(Path(models).resolve()), "RECSYS_HOST": host,
                       "RECSYS_PORT": str(port), "RECSYS_LOG_FORMAT": settings.log_format,
                       "RECSYS_WAIT_FOR_MODEL": str(settings.wait_for_model).lower()})
    uvicorn.run("serving.main:worker_app", factory=True, workers=settings.workers, host=host,
                port=port, **options)


def _no_delay(protocol: type) -> type:
    """uvicorn's HTTP/1.1 protocol `protocol` with TCP_NODELAY on every connection. With several
    workers uvicorn's shared listening socket is made without IPPROTO_TCP, so asyncio does not
    set it, and Nagle's algorithm with delayed ACKs then adds ~40 ms to each response on a
    keep-alive connection (measured: p50 52 ms instead of 6 ms at concurrency 1)."""

    class NoDelay(protocol):
        def connection_made(self, transport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    NoDelay.__name__ = NoDelay.__qualname__ = f"NoDelay{protocol.__name__}"
    return NoDelay


def _http_protocol() -> str:
    """httptools (C) parses HTTP when installed; h11 (pure Python, about a quarter of the event
    loop's time per request in a py-spy profile under load) otherwise. (uvicorn likewise runs
    on uvloop when it is installed.)"""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "serving.main:NoDelayH11Protocol"
    return "serving.main:NoDelayHttpToolsProtocol"


def __getattr__(name: str):
    # built on first use, so importing serving.main does not import uvicorn
    if name == "NoDelayH11Protocol":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return _no_delay(H11Protocol)
    if name == "NoDelayHttpToolsProtocol":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return _no_delay(shedding.refusing_protocol(HttpToolsProtocol))
    raise AttributeError(name)


def worker_app() -> FastAPI:
    """The app of one worker process (`RECSYS_WORKERS` > 1)."""
    from serving import json_logs

    settings = get_settings()
    json_logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)


__all__ = ["create_app", "run", "worker_app"]
