"""The JSON log writer: every line arrives, in order, written in batches rather than per line."""

from __future__ import annotations

import io
import json
import logging
import queue
import time

from serving.json_logs import (
    JsonFormatter,
    LineQueueHandler,
    LineWriter,
    TextFormatter,
    resolve_format,
)


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


def _record(message: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_uvicorn_color_message_is_never_copied_into_a_line():
    record = _record("Started server process [7]",
                     color_message="Started server process [\x1b[36m%d\x1b[0m]", port=8000)
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "\x1b" not in line and "color_message" not in line
        assert "Started server process [7]" in line and "8000" in line
    assert "color_message" not in json.loads(JsonFormatter().format(record))


def test_text_lines_read_as_text_with_their_extra_fields():
    line = TextFormatter().format(_record("request", route="/ready", status=200))
    assert line.endswith("INFO    uvicorn.error: request route=/ready status=200")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_otherwise():
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"
