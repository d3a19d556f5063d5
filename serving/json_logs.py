"""The server's console: one line per log record, JSON (with whatever `extra` fields a call adds)
for log collectors or plain text for a person at a terminal, and no third-party progress bars."""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
import time

# uvicorn's `color_message` repeats the message with ANSI colour codes: never copied into a line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "color_message"}
FORMATS = ("auto", "text", "json")

# How often the writer thread wakes to write what is queued. Waking it for every line (the
# standard QueueListener) costs server CPU on every request: each access line wakes a thread
# that then has to win the GIL from the event loop and the model thread. Lines reach stderr at
# most this late; everything queued is still written when the process exits.
FLUSH_S = 0.05


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`2026-12-07 06:12:13 INFO serving.model_holder: message key=value ...`, for a person."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = [f"{key}={value}" for key, value in record.__dict__.items()
                  if key not in _STANDARD and not key.startswith("_")]
        if extras:
            line += " " + " ".join(extras)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str, stream=None) -> str:
    """"text" or "json": auto is text when `stream` (stderr) is a terminal, JSON otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def silence_progress_bars() -> None:
    """Turn off the tqdm bars of Hugging Face libraries (a "Loading weights" bar when an encoder
    loads): written straight to stderr with carriage returns, they break a JSON line stream.
    The environment covers libraries not imported yet, and worker processes."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


class LineQueueHandler(logging.Handler):
    """Formats a record where it is logged and queues the line (no copy of the record, no
    wake-up of the writer: `LineWriter` collects lines on its own clock)."""

    def __init__(self, lines: queue.SimpleQueue) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.put(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)


class LineWriter:
    """A thread that writes every queued line to `stream` each `interval` seconds, in one
    write, and once more when stopped."""

    def __init__(self, lines: queue.SimpleQueue, stream, interval: float = FLUSH_S) -> None:
        self.lines = lines
        self.stream = stream
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()  # lines queued after the thread's last pass

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        waiting = []
        try:
            while True:
                waiting.append(self.lines.get_nowait())
        except queue.Empty:
            pass
        if not waiting:
            return
        try:
            self.stream.write("\n".join(waiting) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to report it
            pass


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record (ours, uvicorn's) to stderr, one line each: `fmt` is json, text
    or auto (resolve_format), and third-party progress bars are turned off.

    The logging thread (the event loop, for the access line of every request) only formats and
    queues a line; a background thread writes the queued lines together (FLUSH_S). A write is
    a system call that gives up the GIL, and getting it back behind busy model threads can
    take milliseconds."""
    # What a LogRecord gathers that no line here prints (the calling function and line, the
    # thread, process and multiprocessing names): the logging HOWTO's "Optimization" switches.
    # The caller lookup walks the stack on every record, the access line of every request
    # included.
    fmt = resolve_format(fmt)
    silence_progress_bars()
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for old in logging.getLogger().handlers:
        writer = getattr(old, "writer", None)
        if writer is not None:  # configured before: stop that writer once, now
            atexit.unregister(writer.stop)
            writer.stop()
    lines: queue.SimpleQueue = queue.SimpleQueue()
    handler = LineQueueHandler(lines)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.writer = LineWriter(lines, sys.stderr)
    handler.writer.start()
    atexit.register(handler.writer.stop)  # write what is queued when the process exits
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log says more
    logging.captureWarnings(True)  # a library's warning is a line too, not raw text between lines


__all__ = ["FLUSH_S", "FORMATS", "JsonFormatter", "LineQueueHandler", "LineWriter",
           "TextFormatter", "configure", "resolve_format", "silence_progress_bars"]
