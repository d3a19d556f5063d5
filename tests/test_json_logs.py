"""The JSON log writer: every line arrives, in order, written in batches rather than per line."""

from __future__ import annotations

import io
import json
import logging
import queue
import time

from serving.json_logs import JsonFormatter, LineQueueHandler, LineWriter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(stream, interval: float) -> tuple[logging.Logger, LineWriter]:
    lines: queue.SimpleQueue = queue.SimpleQueue()
    handler = LineQueueHandler(lines)
    handler.setFormatter(JsonFormatter())
    writer = LineWriter(lines, stream, interval=interval)
    logger = logging.getLogger(f"test.json_logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, writer


def test_lines_are_json_in_order_with_their_extra_fields():
    stream = CountingStream()
    logger, writer = _logger(stream, interval=0.01)
    writer.start()
    for n in range(5):
        logger.info("request", extra={"route": "/recommendations/{user_id}", "n": n})
    writer.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(5))
    assert all(line["message"] == "request" and line["level"] == "INFO" for line in lines)
    assert lines[0]["route"] == "/recommendations/{user_id}"


def test_many_lines_take_few_writes():
    stream = CountingStream()
    logger, writer = _logger(stream, interval=0.05)
    writer.start()
    for n in range(500):
        logger.info("request", extra={"n": n})
    time.sleep(0.2)  # a few of the writer's passes
    assert len(stream.getvalue().splitlines()) == 500  # all written before any stop
    assert stream.writes < 10  # one write per pass, not one per line
    writer.stop()


def test_stop_writes_what_is_still_queued():
    stream = CountingStream()
    logger, writer = _logger(stream, interval=60.0)  # its own pass would come much later
    writer.start()
    logger.warning("last words", extra={"code": 7})
    writer.stop()
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["message"] == "last words" and line["code"] == 7


def test_a_closed_stream_does_not_break_the_writer():
    stream = CountingStream()
    logger, writer = _logger(stream, interval=0.01)
    writer.start()
    stream.close()
    logger.info("into the void")
    writer.stop()  # no exception: there is nowhere left to report it
