"""Load shedding: a request whose work queue is full gets its 503 before any other work.

One rule (`check`), two places that apply it. Under `recsys serve` (uvicorn with httptools) the
HTTP protocol refuses from its parser callbacks (`refusing_protocol`): no ASGI task, no
middleware, no key check, and a refused POST's body is dropped as it arrives, never buffered
or parsed. Any other server (and the test client) meets the same rule at the top of the ASGI
app (`serve`). A request admitted to the recommendation or event queue holds a place from its
admission until its response ends, so the caps bound all the work the server has taken on,
including requests still being parsed and validated, not only those that reached the queue
(the routes keep their own caps too).
"""

from __future__ import annotations

import json
import time

from serving.middleware import record

_BODY = json.dumps({"detail": "server busy: too many requests waiting; retry shortly"}).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode()),
            (b"retry-after", b"1")]
# a key of the ASGI scope: the queue whose place the HTTP protocol took for this request
ADMITTED = "recsys.admitted"


def check(ctx, method: str, path: str) -> tuple[str | None, str | None]:
    """(the counted queue the request would take a place in, or None; the route label to refuse
    it under when its queue is full now, or None to serve it)."""
    if path.startswith("/recommendations"):
        if ctx.holder.current is not None:
            full = ctx.batcher.pending >= ctx.batcher.max_pending
        else:
            full = ctx.pool.pending >= ctx.pool.max_pending
        if full or ctx.admitted["recommend"] >= ctx.settings.max_pending:
            return "recommend", ("/recommendations" if path == "/recommendations"
                                 else "/recommendations/{user_id}")
        return "recommend", None
    if path == "/events" and method == "POST":
        if ctx.event_writes.full or ctx.admitted["events"] >= ctx.event_writes.limit:
            return "events", "/events"
        return "events", None
    if path.startswith(("/items", "/users/")) and ctx.pool.pending >= ctx.pool.max_pending:
        return None, "overloaded"
    return None, None


def refused(ctx, method: str, route: str, started: float) -> None:
    """Count a refusal: the overload counter, the latency metric and the access log line."""
    ctx.metrics.overloaded.inc()
    record(ctx.metrics, method, route, 503, time.perf_counter() - started, "-")


async def serve(app, scope, receive, send, call) -> None:
    """Run `call` (the app's own handling) for an HTTP request unless its queue is full (then
    503 with Retry-After: 1), holding its place in the queue until `call` returns."""
    ctx = getattr(app.state, "context", None)
    queue = scope.get(ADMITTED)  # the protocol checked it already, and took its place
    if queue is None and ctx is not None:
        started = time.perf_counter()
        queue, route = check(ctx, scope["method"], scope["path"])
        if route is not None:
            await _refuse(ctx, scope, receive, send, route, started)
            return
        if queue is not None:
            ctx.admitted[queue] += 1
    try:
        await call(scope, receive, send)
    finally:
        if queue is not None:
            ctx.admitted[queue] -= 1


async def _refuse(ctx, scope, receive, send, route: str, started: float) -> None:
    closing = ctx.settings.refusal_close
    if closing and scope["method"] in ("POST", "PUT", "PATCH"):
        # read the rest of the body first: closing a socket with unread bytes sends a reset,
        # which can destroy the 503 before the client has read it
        await _drain(receive)
    headers = _HEADERS + [(b"connection", b"close")] if closing else _HEADERS
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _BODY})
    refused(ctx, scope["method"], route, started)


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def refusing_protocol(base: type) -> type:
    """uvicorn's httptools protocol class `base`, refusing a request whose queue is full from
    its parser callbacks: the 503 is written when the request's last byte has arrived (its
    body bytes dropped on the way), before any ASGI task exists. A request it admits goes on
    to the app as usual, its place taken (`ADMITTED`)."""
    import httptools

    class Refusing(base):
        _refusal: tuple | None = None  # (context, method, route, started) of the request
        _dropping = False  # the request being read is refused: its body bytes are dropped
        _context_app = None  # the app whose state holds the context, under uvicorn's wrappers

        def on_headers_complete(self) -> None:
            ctx = self._context()
            if ctx is not None and (self.cycle is None or self.cycle.response_complete) \
                    and not self.parser.should_upgrade():
                started = time.perf_counter()
                method = self.parser.get_method().decode("ascii")
                path = httptools.parse_url(self.url).path.decode("latin-1")
                queue, route = check(ctx, method, path)
                if route is not None:
                    self._refusal, self._dropping = (ctx, method, route, started), True
                    if self.expect_100_continue:
                        self._refuse(closing=True)  # the client waits for us before its body
                    return
                if queue is not None:
                    ctx.admitted[queue] += 1
                    self.scope[ADMITTED] = queue
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._dropping:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._dropping:
                super().on_message_complete()
                return
            self._dropping = False
            if self._refusal is not None:
                self._refuse(self._refusal[0].settings.refusal_close
                             or not self.parser.should_keep_alive())

        def _refuse(self, closing: bool) -> None:
            ctx, method, route, started = self._refusal
            self._refusal = None
            head = [b"HTTP/1.1 503 Service Unavailable\r\n"]
            for name, value in [*self.server_state.default_headers, *_HEADERS]:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"connection: close\r\n\r\n" if closing else b"\r\n")
            self.transport.write(b"".join(head) + _BODY)
            self.server_state.total_requests += 1
            if closing:
                self.transport.close()
            else:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)
            refused(ctx, method, route, started)

        def _context(self):
            if self._context_app is None:
                app = self.app
                while not hasattr(app, "state") and hasattr(app, "app"):
                    app = app.app  # uvicorn's proxy-headers middleware, and the like
                self._context_app = app
            return getattr(getattr(self._context_app, "state", None), "context", None)

    Refusing.__name__ = Refusing.__qualname__ = f"Refusing{base.__name__}"
    return Refusing


__all__ = ["ADMITTED", "check", "refusing_protocol", "serve"]
