"""What routes depend on: the app context, the caller's key (auth + rate limit), the model pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from recsys.index import set_search_threads
from recsys.store import EventStore
from serving.auth import ADMIN, DATA, KeyChecker, RateLimiter
from serving.batching import Coalescer
from serving.errors import Overloaded, RateLimited
from serving.event_writer import EventWriter
from serving.metrics import Metrics
from serving.model_holder import ModelHolder
from serving.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="data key for data routes, admin key for /admin")


class ModelPool:
    """A few threads for model work (FAISS, features, LightGBM), with a cap on waiting requests:
    past it a request gets 503 at once instead of queueing into a timeout."""

    def __init__(self, threads: int, max_pending: int) -> None:
        # OpenMP's thread count is per thread: set_search_threads(1) on the event loop's thread
        # left these at one per core (faiss.omp_get_max_threads() gave 2 here), so every
        # batched FAISS search started a team of OpenMP threads that then spin on the cores
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="model",
                                           initializer=set_search_threads, initargs=(1,))
        self.max_pending = max_pending
        self.pending = 0  # touched only on the event loop

    async def run(self, fn, *args):
        if self.pending >= self.max_pending:
            raise Overloaded("server busy: too many requests waiting for the model")
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args))
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class AppContext:
    settings: Settings
    holder: ModelHolder
    store: EventStore
    metrics: Metrics
    pool: ModelPool
    keys: KeyChecker
    limiter: RateLimiter
    batcher: Coalescer
    event_writes: EventWriter
    # requests holding a place per queue, from admission until their response ends
    # (serving.shedding)
    admitted: dict[str, int] = field(default_factory=lambda: {"recommend": 0, "events": 0})


async def get_context(request: Request) -> AppContext:
    # async on purpose: FastAPI runs a plain `def` dependency on a worker thread, a thread hop
    # (and a wait for the GIL behind the model threads) per request for one attribute read
    return request.app.state.context


Ctx = Annotated[AppContext, Depends(get_context)]


def authorize(ctx: AppContext, api_key: str | None, role: str, client_host: str | None) -> str:
    """The caller's key id for `role`, after the key check and the rate limit (AuthError,
    RateLimited). Keyless callers of open data routes share a bucket per client address."""
    caller = ctx.keys.check(api_key, role)
    bucket = caller if caller != "anonymous" else f"ip:{client_host or '?'}"
    wait = ctx.limiter.acquire(f"{role}:{bucket}")
    if wait > 0:
        ctx.metrics.rate_limited.inc()
        raise RateLimited(wait, caller)
    return caller


def _access(role: str):
    async def check(request: Request, ctx: Ctx,
              api_key: Annotated[str | None, Security(api_key_header)] = None) -> str:
        try:
            caller = authorize(ctx, api_key, role,
                               request.client.host if request.client else None)
        except RateLimited as exc:
            request.state.caller = exc.caller  # the access log names who was limited
            raise
        request.state.caller = caller
        return caller
    return check


check_data_caller = _access(DATA)
DataCaller = Annotated[str, Depends(check_data_caller)]
AdminCaller = Annotated[str, Depends(_access(ADMIN))]

__all__ = ["AdminCaller", "AppContext", "Ctx", "DataCaller", "ModelPool",
           "api_key_header", "authorize", "check_data_caller", "get_context"]
