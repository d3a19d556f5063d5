"""What `recsys serve` checks before it loads anything: the models folder and the address.

Each refusal is one line (ServeRefused, which the CLI prints as `error: ...`, exit 2), and no
check creates a file or a folder.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from recsys.bundle_versions import CURRENT
from recsys.data.schema import EVENTS_FILE, ITEMS_FILE, META_FILE
from recsys.errors import RecsysError

# Files that make a folder a dataset directory (recsys.data.schema), never a models folder.
DATASET_FILES = (META_FILE, ITEMS_FILE, EVENTS_FILE)


class ServeRefused(RecsysError):
    """`recsys serve` will not start with these arguments."""


def check_models_dir(models: Path, *, wait_for_model: bool) -> None:
    """Refuse a path that is not a models folder holding a model. With `wait_for_model` a
    missing folder, or one without CURRENT yet, is accepted (the server waits for it); a file
    or a dataset directory never is."""
    if models.exists() and not models.is_dir():
        raise ServeRefused(f"{models} is a file, not a models folder")
    if models.is_dir():
        found = [name for name in DATASET_FILES if (models / name).exists()]
        if found:
            raise ServeRefused(
                f"{models} is a dataset directory (it holds {found[0]}), not a models folder: "
                f"train a model from it (recsys train {models} --out MODELS) and serve MODELS")
    if wait_for_model:
        return
    if not models.exists():
        raise ServeRefused(f"{models}: no such folder; train a model into it first "
                           f"(recsys train DATASET --out {models}) or pass --wait-for-model")
    pointer = models / CURRENT
    if not pointer.is_file():
        raise ServeRefused(f"{models} holds no model (no {CURRENT} file); train one "
                           f"(recsys train DATASET --out {models}) or pass --wait-for-model")
    version = pointer.read_text().strip()
    if not version or not (models / version).is_dir():
        raise ServeRefused(f"{models}: {CURRENT} names {version or 'nothing'!r}, which is not "
                           f"a model version there (recsys models list {models})")


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (not listening yet), or ServeRefused naming why not.
    Bound before the model loads, so a taken port is reported at once, not after the load."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeRefused(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    # as uvicorn binds: a port left in TIME_WAIT by the last run is free, one with a listener not
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeRefused(f"port {port} on {host} is in use") from None
        raise ServeRefused(f"cannot listen on {host} port {port}: "
                           f"{exc.strerror or exc}") from None
    return sock


__all__ = ["DATASET_FILES", "ServeRefused", "bind_socket", "check_models_dir"]
