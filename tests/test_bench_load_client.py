"""The serving benchmark's load client counts what the server answered: responses split across
reads, several in one read, and a server that drops a connection mid-run (an error, not a
short count). Its numbers are the throughput target's evidence (docs/benchmarks.md, Serving)."""

import asyncio
import importlib.util
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parent.parent / "benchmarks" / "serving.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serving", SERVING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def response(n: int) -> bytes:
    body = b'{"items":[],"source":"model","n":%d}' % n
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" \
        % (len(body), body)


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def answering(reader, writer, *, split: bool, drop_after: int | None = None):
    """Answers each request; with `split`, every response leaves in 3-byte pieces."""
    answered = 0
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if drop_after is not None and answered == drop_after:
                writer.close()
                return
            data = response(answered)
            pieces = [data[i:i + 3] for i in range(0, len(data), 3)] if split else [data]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
            answered += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def run_load(bench, handler, concurrency: int, seconds: float):
    async def main():
        server, port = await serve(handler)
        async with server:
            return await bench.load(port, lambda n: bench._request("GET", f"/r/{n}"),
                                    concurrency, seconds, warmup_s=0.1)
    return asyncio.run(main())


@pytest.mark.parametrize("split", [False, True])
def test_every_response_is_counted(bench, split):
    result = run_load(bench, lambda r, w: answering(r, w, split=split), 4, 0.4)
    assert result["requests"] > 20
    assert result["statuses"] == {"200": result["requests"]}
    assert result["sources"] == {"model": result["requests"]}
    assert result["answered"] >= result["requests"]
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_two_responses_in_one_read_are_both_counted(bench):
    """The client sends one request at a time per connection, so two responses in one read
    only happen when the server sends an extra one; the client must count both, not hang."""
    async def doubled(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response(0) + response(1))
        await answering(reader, writer, split=False)

    result = run_load(bench, doubled, 1, 0.3)
    assert result["answered"] >= 2


def test_a_dropped_connection_fails_the_run(bench):
    with pytest.raises(ConnectionError):
        run_load(bench, lambda r, w: answering(r, w, split=False, drop_after=3), 2, 1.0)
