"""Load shedding over a real connection: a refusal closes its connection (a client that retries
at once must reconnect, which waits in the listen backlog) and is counted in /metrics; the
overload benchmark's client follows such a close with a new connection, not an error."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.main import create_app
from serving.settings import Settings
from serving.testing import copy_models
from tests.keys import ADMIN_KEY, DATA_KEY

OVERLOAD = Path(__file__).resolve().parent.parent / "benchmarks" / "overload.py"


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    """uvicorn serving the app on a loopback port with serve's HTTP protocol; yields the app."""
    import uvicorn

    models = copy_models(models_dir, tmp_path_factory.mktemp("shed") / "models")
    settings = Settings(models_dir=models, event_store=models.parent / "events.sqlite",
                        api_keys=[DATA_KEY], admin_key=ADMIN_KEY, poll_current_s=0,
                        max_pending_events=1)
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           http="serving.main:NoDelayHttpToolsProtocol"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield app, sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def _exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send `request`; the response head, and what the connection gives after the response
    (b"" when the server closed it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")  # a keep-alive client's next
        try:
            after = conn.recv(65536)
        except ConnectionResetError:
            after = b""
        return head, after


def _metric(port: int, line_start: str) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := conn.recv(65536):
            text += chunk
    for line in text.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_refusal_closes_its_connection_and_is_counted(server):
    app, port = server
    ctx = app.state.context
    body = b'{"events": []}'
    post = (b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + DATA_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)
    refused_before = _metric(port, "recsys_overloaded_total")
    ctx.event_writes.pending = ctx.event_writes.limit  # as if the store were busy
    try:
        head, after = _exchange(port, post)
    finally:
        ctx.event_writes.pending = 0
    assert head.startswith(b"HTTP/1.1 503")
    assert b"\r\nretry-after: 1" in head.lower() and b"\r\nconnection: close" in head.lower()
    assert after == b""  # closed: the retry needs a new connection
    assert _metric(port, "recsys_overloaded_total") == refused_before + 1
    assert _metric(port, 'recsys_request_seconds_count{method="POST",route="/events",'
                         'status="503"}') >= 1

    head, after = _exchange(port, post)  # room again: served, and the connection stays open
    assert not head.startswith(b"HTTP/1.1 503"), head
    assert after.startswith(b"HTTP/1.1 200")


@pytest.fixture(scope="module")
def overload():
    spec = importlib.util.spec_from_file_location("bench_overload", OVERLOAD)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_overload"] = module  # its client processes' work is found by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_overload"]


def test_the_overload_client_reconnects_after_connection_close(overload):
    """Every other response refuses and closes, as the server does: the client must count both
    kinds, reconnect at once and finish without an error."""
    refusal = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nretry-after: 1\r\n"
               b"connection: close\r\n\r\n{}")
    served = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    answered = [0]

    async def handler(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                answered[0] += 1
                if answered[0] % 2:
                    writer.write(refusal)
                    await writer.drain()
                    writer.close()
                    return
                writer.write(served)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await overload.ramp_level(port, lambda n: b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
                                             4, 0.4, 0.05)

    level = asyncio.run(main())
    assert level["reconnects"] > 10
    assert level["share_503"] > 0.2 and level["goodput_rps"] > 0
    assert level["other_statuses"] == {}
    assert level["p99_503_with_reconnect_ms"] >= level["p99_503_ms"] > 0


def test_the_overload_client_can_honour_retry_after(overload):
    """`--honour-retry-after` (the second table): a client waits as the 503 says; by default it
    retries at once."""
    refusal = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nretry-after: 0.2\r\n\r\n{}"

    async def handler(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(refusal)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main(honour):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await overload.ramp_level(port, lambda n: b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
                                             2, 0.5, 0.0, honour)

    assert asyncio.run(main(True))["requests"] <= 2 * 4  # at most one per 0.2 s per client
    assert asyncio.run(main(False))["requests"] > 50


def test_a_refused_upload_is_read_before_its_connection_closes(server):
    """Closing with body bytes still arriving would reset the connection, and a reset can
    destroy the 503 before the client reads it: the refusal reads the body first."""
    app, port = server
    ctx = app.state.context
    body = b'{"events": [' + b" " * 600_000 + b"]}"
    ctx.event_writes.pending = ctx.event_writes.limit
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
            time.sleep(0.3)  # the server has seen the headers long before the rest arrives
            conn.sendall(body[1000:])
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    finally:
        ctx.event_writes.pending = 0
    assert data.startswith(b"HTTP/1.1 503"), data[:100]


def _post_events(body: bytes, key: str = DATA_KEY) -> bytes:
    return (b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-API-Key: "
            + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


class AppCalls:
    """Counts the requests that reach the ASGI app (serving.shedding.serve)."""

    def __init__(self, monkeypatch) -> None:
        from serving import shedding

        self.count = 0
        serve = shedding.serve

        async def counted(*args):
            self.count += 1
            await serve(*args)
        monkeypatch.setattr(shedding, "serve", counted)


def test_the_protocol_refuses_before_the_app_and_never_parses_the_body(server, monkeypatch):
    app, port = server
    ctx = app.state.context
    calls = AppCalls(monkeypatch)
    ctx.event_writes.pending = ctx.event_writes.limit
    try:
        started = time.perf_counter()
        head, _ = _exchange(port, _post_events(b"{not json", key="wrong-key-0123456789"))
        elapsed = time.perf_counter() - started
    finally:
        ctx.event_writes.pending = 0
    assert head.startswith(b"HTTP/1.1 503") and b"\r\nretry-after: 1" in head.lower()
    assert calls.count == 0  # refused in the HTTP protocol: no ASGI task, no body parsing
    assert elapsed < 0.5
    head, _ = _exchange(port, _post_events(b"{not json"))
    # with room the app parses it (and the keep-alive GET /live that _exchange sends next)
    assert head.startswith(b"HTTP/1.1 422") and calls.count == 2
    assert ctx.admitted == {"recommend": 0, "events": 0}  # every place given back


def test_requests_still_in_the_stack_hold_their_place(server):
    """The cap counts admitted requests until their response ends, not only those that reached
    the store's queue: with every place held, the next one is refused."""
    app, port = server
    ctx = app.state.context
    body = b'{"events": []}'
    ctx.admitted["events"] = ctx.event_writes.limit
    try:
        head, _ = _exchange(port, _post_events(body))
    finally:
        ctx.admitted["events"] = 0
    assert head.startswith(b"HTTP/1.1 503")
    assert not _exchange(port, _post_events(body))[0].startswith(b"HTTP/1.1 503")


def test_a_refusal_can_keep_its_connection_open(server):
    app, port = server
    ctx = app.state.context
    ctx.settings.refusal_close = False
    ctx.event_writes.pending = ctx.event_writes.limit
    try:
        head, after = _exchange(port, _post_events(b'{"events": []}'))
    finally:
        ctx.event_writes.pending = 0
        ctx.settings.refusal_close = True
    assert head.startswith(b"HTTP/1.1 503") and b"connection: close" not in head.lower()
    assert after.startswith(b"HTTP/1.1 200")  # the next request on the same connection: served


def test_under_a_burst_refusals_are_fast_503s_and_admitted_posts_are_stored(server, monkeypatch):
    app, port = server
    ctx = app.state.context
    calls = AppCalls(monkeypatch)
    append = ctx.event_writes.append

    def slow_append(events):
        time.sleep(0.3)
        return append(events)
    monkeypatch.setattr(ctx.event_writes, "append", slow_append)
    before = ctx.store.count()
    results = []

    def post(n):
        body = b'{"events": [{"event_id": "burst-%d-%d", "user_id": "u", "item_id": "i", ' \
               b'"type": "click"}]}' % (time.monotonic_ns(), n)
        started = time.perf_counter()
        head, _ = _exchange(port, _post_events(body))
        results.append((int(head.split(b" ", 2)[1]), time.perf_counter() - started,
                        b"\r\nretry-after: 1" in head.lower()))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(status for status, _, _ in results)
    assert len(results) == 12 and set(statuses) == {200, 503}, statuses
    refusals = [r for r in results if r[0] == 503]
    assert all(retry for _, _, retry in refusals)
    assert max(elapsed for _, elapsed, _ in refusals) < 0.25  # not queued behind the store
    assert ctx.store.count() - before == statuses.count(200)  # every 200 stored, no 503
    # the refused never reached the app; each served POST did, and the GET /live after it
    assert calls.count == 2 * statuses.count(200)
    assert ctx.admitted == {"recommend": 0, "events": 0}


def test_the_overload_ramp_serves_with_the_servers_default_caps(overload):
    defaults = Settings.model_fields
    assert overload.DEFAULT_CAPS == {
        "RECSYS_MAX_PENDING": str(defaults["max_pending"].default),
        "RECSYS_MAX_PENDING_EVENTS": str(defaults["max_pending_events"].default)}


def test_the_overload_ramp_can_split_its_clients_over_processes(overload):
    """Two client processes: their measurements are joined into one level, and the event ids
    they send stay unique across them."""
    seen: list[bytes] = []

    async def handler(reader, writer):
        try:
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def make(n):
        return b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % n

    ready = threading.Event()
    port = []

    def serve():
        async def main():
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            async with server:
                await asyncio.sleep(3)
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)
    level = overload.run_level(port[0], make, 6, 0.5, 0.05, False, 2, None)
    thread.join(timeout=10)
    assert level["client_processes"] == 2 and level["goodput_rps"] > 0
    assert level["requests"] > 20 and level["other_statuses"] == {}
    paths = [head.split(b" ", 2)[1] for head in seen]
    assert len(paths) == len(set(paths))  # no request number sent twice
