"""Fault injectors shared by the event-store and reliability tests.

A full disk is real here: a child process runs with RLIMIT_FSIZE just above the store's size,
so SQLite's own writes (the WAL frames written at COMMIT) fail as they do on a full disk. The
parent then opens the store without a limit and checks what was acknowledged.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

# room for some commits before the cap is met, far below the 4 MB WAL auto-checkpoint
HEADROOM_BYTES = 200_000
BATCH = 20


def run_with_full_disk(mode: str, store: Path, models: Path | None = None,
                       item_id: str = "item") -> dict:
    """Append event batches to `store` (mode "store": the SqliteEventStore; "server": POST
    /events on the app) in a child whose file-size cap is met after a few commits; then lift
    the cap and resend the first refused batch. Returns what the child saw: the acknowledged
    event ids, every status, and the resend's result."""
    args = [sys.executable, "-c", "from tests.faults import _child; _child()", mode, str(store),
            str(models or ""), item_id]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RECSYS_LOG_LEVEL": "CRITICAL"})
    if done.returncode != 0:
        raise AssertionError(f"full-disk child failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cap_file_size(path: Path) -> None:
    # without this the kernel ends the process with SIGXFSZ instead of failing the write
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    wal = Path(f"{path}-wal")
    largest = max(path.stat().st_size, wal.stat().st_size if wal.exists() else 0)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + HEADROOM_BYTES, hard))


def _lift_cap() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def _batches(item_id: str):
    n = 0
    while n < 40_000:  # the cap is met after about 50 batches
        yield [{"event_id": f"full-{n + j}", "user_id": f"user-{(n + j) % 7}", "item_id": item_id,
                "type": "click"} for j in range(BATCH)]
        n += BATCH


def _child() -> None:
    mode, store_path, models, item_id = sys.argv[1:5]
    store_path = Path(store_path)
    acked, statuses, refused, resend = [], [], None, None
    if mode == "store":
        from recsys.store import Event, StoreUnavailable
        from recsys.store.sqlite import SqliteEventStore

        store = SqliteEventStore(store_path)
        _cap_file_size(store_path)
        for batch in _batches(item_id):
            events = [Event(e["event_id"], e["user_id"], e["item_id"], 1_700_000_000.0, "click")
                      for e in batch]
            try:
                store.append(events)
            except StoreUnavailable as exc:
                statuses.append(str(exc))
                refused = events
                break
            statuses.append("ok")
            acked += [e.event_id for e in events]
        _lift_cap()
        resend = store.append(refused) if refused else None
        store.close()
    else:
        from fastapi.testclient import TestClient

        from serving.main import create_app
        from serving.settings import Settings
        from tests.keys import DATA_KEY

        settings = Settings(models_dir=Path(models), event_store=store_path, api_keys=[DATA_KEY],
                            poll_current_s=0, rate_limit_per_s=100_000,
                            rate_limit_burst=100_000)
        with TestClient(create_app(settings), headers={"X-API-Key": DATA_KEY}) as client:
            _cap_file_size(store_path)
            for batch in _batches(item_id):
                r = client.post("/events", json={"events": batch})
                statuses.append([r.status_code, r.headers.get("Retry-After")])
                if r.status_code == 200:
                    acked += [e["event_id"] for e in batch]
                else:
                    refused = batch
                    break
            _lift_cap()
            if refused:
                resend = client.post("/events", json={"events": refused}).json()
    print(json.dumps({"acked": acked, "statuses": statuses, "resend": resend,
                      "refused": [e["event_id"] if isinstance(e, dict) else e.event_id
                                  for e in refused or []]}))
