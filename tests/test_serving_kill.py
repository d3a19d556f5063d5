"""Kill -9 during event ingest (reliability row 17, fast form): a real server on 127.0.0.1 is
SIGKILLed while a client streams events; after a restart every acknowledged event is there,
and resending them counts none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from serving.testing import DATA_KEY, copy_models
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


def test_sigkill_during_ingest_loses_no_acknowledged_event(models_dir, tmp_path, recommender):
    models = copy_models(models_dir, tmp_path / "models")
    store, port = tmp_path / "events.sqlite", free_port()
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": DATA_KEY}
    item = recommender.item_ids[0]
    acked: list[dict] = []
    stop_sending = threading.Event()

    def stream(client: httpx.Client) -> None:
        n = 0
        while not stop_sending.is_set() and n < 100_000:
            batch = [{"event_id": f"kill-{n + j}", "user_id": f"user-{(n + j) % 5}",
                      "item_id": item, "type": "click"} for j in range(5)]
            n += 5
            try:
                r = client.post(f"{url}/events", json={"events": batch}, headers=headers)
            except httpx.HTTPError:
                return  # the server is gone: this batch was never acknowledged
            if r.status_code == 200:
                acked.extend(batch)

    server = start_server(models, store, port)
    try:
        with httpx.Client(timeout=5) as client:
            sender = threading.Thread(target=stream, args=(client,))
            sender.start()
            deadline = time.monotonic() + 30
            while len(acked) < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.send_signal(signal.SIGKILL)  # mid-stream, no chance to flush anything
            server.wait(timeout=10)
            stop_sending.set()
            sender.join(timeout=10)
        assert len(acked) >= 50
    finally:
        stop(server)

    server = start_server(models, store, port)
    try:
        with httpx.Client(timeout=10) as client:
            for start in range(0, len(acked), 500):
                r = client.post(f"{url}/events", json={"events": acked[start:start + 500]},
                                headers=headers)
                chunk = len(acked[start:start + 500])
                assert r.json() == {"accepted": 0, "duplicates": chunk}, "acked event lost"
            body = client.get(f"{url}/recommendations/user-1", headers=headers).json()
            assert body["source"] == "model"  # the replayed clicks are the user's history
    finally:
        stop(server)
