"""ASGI middleware: body-size limit (413 before reading more), latency metrics, access log.

Plain ASGI rather than BaseHTTPMiddleware: it adds microseconds, not a task per request.
"""

from __future__ import annotations

import json
import logging
import time

from serving.metrics import Metrics

access_log = logging.getLogger("recsys.access")
log = logging.getLogger(__name__)


class ServingMiddleware:
    def __init__(self, app, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_tracking(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _too_large(send_tracking, self.max_body_bytes)
        else:
            body, too_large = await _read_limited(receive, self.max_body_bytes) \
                if scope["method"] in ("POST", "PUT", "PATCH") else (None, False)
            if too_large:
                await _too_large(send_tracking, self.max_body_bytes)
            else:
                replay = _replay(body, receive) if body is not None else receive
                try:
                    await self.app(scope, replay, send_tracking)
                except Exception:  # noqa: BLE001
                    # answered here, not re-raised: an exception leaving the app makes the
                    # server close the connection, resetting the client's next request on it
                    log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                    if status.get("sent"):
                        raise
                    await _internal_error(send_tracking)
        route = scope.get("route")
        record(self.metrics, scope["method"], getattr(route, "path", None) or "unmatched",
               status["code"], time.perf_counter() - started,
               (scope.get("state") or {}).get("caller", "-"))


def record(metrics: Metrics, method: str, route: str, status: int, elapsed_s: float,
           caller: str) -> None:
    """A request's latency metric and access log line (here, on the recommendations fast path
    serving.routes.recommendations.fast_path, and for the refusals of serving.shedding)."""
    metrics.observe_request(route, method, status, elapsed_s)
    access_log.info("request", extra={"method": method, "route": route, "status": status,
                                      "ms": round(elapsed_s * 1000, 2), "caller": caller})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_limited(receive, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True  # stop reading: memory stays flat whatever the client sends
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive):
    sent = {"done": False}

    async def replay():
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _internal_error(send) -> None:
    payload = b'{"detail":"internal error"}'
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def _too_large(send, limit: int) -> None:
    payload = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


__all__ = ["ServingMiddleware", "record"]
