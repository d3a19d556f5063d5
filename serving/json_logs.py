"""Structured logs: one JSON object per line, with whatever `extra` fields a call adds."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import time
from logging.handlers import QueueHandler, QueueListener

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


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


def configure(level: str = "INFO") -> None:
    """Send every log record (ours, uvicorn's) to stderr as JSON lines.

    The logging thread (the event loop, for the access line of every request) only formats and
    queues a record; a background thread writes it. A write is a system call that gives up the
    GIL, and getting it back behind busy model threads can take milliseconds."""
    # What a LogRecord gathers that no line here prints (the calling function and line, the
    # thread, process and multiprocessing names): the logging HOWTO's "Optimization" switches.
    # The caller lookup walks the stack on every record, the access line of every request
    # included.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for old in logging.getLogger().handlers:
        listener = getattr(old, "listener", None)
        if listener is not None:  # configured before: stop that writer once, now
            atexit.unregister(listener.stop)
            listener.stop()
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter("%(message)s"))  # already a JSON line
    records: queue.SimpleQueue = queue.SimpleQueue()
    handler = QueueHandler(records)
    handler.setFormatter(JsonFormatter())
    handler.listener = QueueListener(records, stream)
    handler.listener.start()
    atexit.register(handler.listener.stop)  # flush what is queued when the process exits
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log says more, as JSON


__all__ = ["JsonFormatter", "configure"]
