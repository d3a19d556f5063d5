"""Kill -9 during event ingest (reliability row 17): a real server on 127.0.0.1 is SIGKILLed
while a client streams events, 2 cycles here and 20 in the slow test; after a restart every
acknowledged event is there once, and resending everything counts none twice."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serving.testing import copy_models
from tests.keys import DATA_KEY
from tests.processes import free_port

START_TIMEOUT_S = 90


def start_server(models, store, port) -> subprocess.Popen:
    env = {**os.environ, "RECSYS_EVENT_STORE": str(store), "RECSYS_API_KEYS": DATA_KEY,
           "RECSYS_POLL_CURRENT_S": "0", "RECSYS_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", str(models), "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not become ready")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    process.stderr.close()


def stream(url: str, item: str, prefix: str, acked: list, sent: list, stop_sending) -> None:
    """POST batches of 5 events until told to stop or the server is gone; a batch counts as
    acknowledged only on a 200."""
    n = 0
    with httpx.Client(timeout=5, headers={"X-API-Key": DATA_KEY}) as client:
        while not stop_sending.is_set() and n < 100_000:
            batch = [{"event_id": f"{prefix}-{n + j}", "user_id": f"user-{(n + j) % 5}",
                      "item_id": item, "type": "click"} for j in range(5)]
            n += 5
            sent.extend(batch)
            try:
                r = client.post(f"{url}/events", json={"events": batch})
            except httpx.HTTPError:
                return  # the server is gone: this batch was never acknowledged
            if r.status_code == 200:
                acked.extend(batch)


def kill_cycles(models, tmp_path, recommender, cycles: int) -> dict:
    """Row 17: start the server, stream events, SIGKILL it after a random number of
    acknowledged batches, `cycles` times; then every acknowledged event must be stored once,
    and resending everything ever sent must add only the events never stored."""
    store, port = tmp_path / "events.sqlite", free_port()
    url = f"http://127.0.0.1:{port}"
    item = recommender.item_ids[0]
    rng = random.Random(17)
    acked: list[dict] = []
    sent: list[dict] = []
    for cycle in range(cycles):
        server = start_server(models, store, port)  # also the restart after the last kill
        try:
            stop_sending = threading.Event()
            sender = threading.Thread(target=stream, args=(url, item, f"kill{cycle}", acked, sent,
                                                           stop_sending))
            before = len(acked)
            wanted = before + 5 * rng.randint(4, 60)
            sender.start()
            deadline = time.monotonic() + 30
            while len(acked) < wanted and time.monotonic() < deadline:
                time.sleep(0.005)
            server.send_signal(signal.SIGKILL)  # mid-stream, no chance to flush anything
            server.wait(timeout=10)
            stop_sending.set()
            sender.join(timeout=10)
            assert len(acked) > before, f"cycle {cycle}: nothing acknowledged"
        finally:
            stop(server)

    server = start_server(models, store, port)
    try:
        ids = stored_ids(store)
        assert len(ids) == len(set(ids)), "an event stored twice"
        lost = {e["event_id"] for e in acked} - set(ids)
        assert not lost, f"acknowledged but lost: {sorted(lost)[:5]}"
        unacked_stored = len(ids) - len(acked)
        with httpx.Client(timeout=10, headers={"X-API-Key": DATA_KEY}) as client:
            accepted = duplicates = 0
            for start in range(0, len(sent), 500):  # every retry a client could make
                r = client.post(f"{url}/events", json={"events": sent[start:start + 500]})
                assert r.status_code == 200
                accepted += r.json()["accepted"]
                duplicates += r.json()["duplicates"]
            assert duplicates == len(ids)  # everything stored, acknowledged or not, seen as a retry
            body = client.get(f"{url}/recommendations/user-1").json()
            assert body["source"] == "model"  # the replayed clicks are the user's history
        ids = stored_ids(store)
        assert sorted(ids) == sorted({e["event_id"] for e in sent})  # retries not counted twice
    finally:
        stop(server)
    return {"cycles": cycles, "acknowledged": len(acked), "sent": len(sent), "lost": len(lost),
            "stored_twice": 0, "stored_without_ack": unacked_stored,
            "accepted_on_resend": accepted}


def stored_ids(store) -> list[str]:
    with sqlite3.connect(store) as db:
        return [row[0] for row in db.execute("SELECT event_id FROM events")]


def test_sigkill_during_ingest_loses_no_acknowledged_event(models_dir, tmp_path, recommender):
    kill_cycles(copy_models(models_dir, tmp_path / "models"), tmp_path, recommender, cycles=2)


@pytest.mark.slow
def test_sigkill_during_ingest_20_cycles(models_dir, tmp_path, recommender):
    totals = kill_cycles(copy_models(models_dir, tmp_path / "models"), tmp_path, recommender,
                         cycles=20)
    print("row 17 totals:", json.dumps(totals))
