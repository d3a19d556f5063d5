"""Two `recsys serve` replicas on one real PostgreSQL database and one models folder: what one
takes in, the other serves (issue 20's Must show), and reliability rows 17 and 19 on PostgreSQL
(SIGKILL a replica during ingest; stop the database during ingest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from recsys.bundle_versions import set_current
from serving.testing import copy_bundle, copy_models
from tests.keys import DATA_KEY
from tests.processes import free_port, stop_group

START_TIMEOUT_S = 120
HEADERS = {"X-API-Key": DATA_KEY}


class Replica:
    """One `recsys serve` process on 127.0.0.1 (its log in a file: a pipe nobody reads would
    fill up and stall the server while the database is down and every write logs an error)."""

    def __init__(self, models: Path, store_url: str, log: Path, **env: str) -> None:
        self.models, self.store_url, self.log, self.env = models, store_url, log, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Replica:
        env = {**os.environ, "RECSYS_STORE": self.store_url, "RECSYS_API_KEYS": DATA_KEY,
               "RECSYS_LOG_LEVEL": "WARNING", "RECSYS_RATE_LIMIT_PER_S": "10000",
               "RECSYS_RATE_LIMIT_BURST": "10000", **self.env}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recsys.cli", "serve", str(self.models), "--host",
                 "127.0.0.1", "--port", str(self.port)], env=env, stdout=log, stderr=log,
                start_new_session=True)
        return self

    def wait_ready(self) -> Replica:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)  # by pid, no chance to flush anything
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process)


@pytest.fixture
def models(models_dir, tmp_path) -> Path:
    return copy_models(models_dir, tmp_path / "models")


@pytest.fixture
def replicas(models, postgres_url, tmp_path):
    pair = [Replica(models, postgres_url, tmp_path / f"replica-{n}.log").start() for n in "ab"]
    try:
        yield [r.wait_ready() for r in pair]
    finally:
        for replica in pair:
            replica.stop()


def items_of(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def until(check, timeout: float, every: float = 0.02) -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        time.sleep(every)
    return time.monotonic() - started


def test_two_replicas_share_clicks_items_and_promotions(replicas, models, recommender):
    a, b = replicas
    with httpx.Client(headers=HEADERS, timeout=10) as client:
        health = client.get(f"{b.url}/health").json()["store"]
        assert health["reachable"] and health["item_changes_behind"] == 0

        # a click posted to A changes B's answer for that user within 1 s
        user = sorted(recommender.users)[0]
        before = items_of(client.get(f"{b.url}/recommendations/{user}").json())
        clicked = before[0]  # seen items are excluded, so B must drop it once it sees the click
        r = client.post(f"{a.url}/events", json={"events": [
            {"event_id": "replica-click-1", "user_id": user, "item_id": clicked,
             "type": "click"}]})
        assert r.json() == {"accepted": 1, "duplicates": 0}
        assert until(lambda: clicked not in items_of(
            client.get(f"{b.url}/recommendations/{user}").json()), timeout=1.0) < 1.0

        # an item added on A is served by B (its vector comes from the store: B never embeds it)
        text = recommender.titles[3] + " (a new edition, sold by replica A)"
        r = client.put(f"{a.url}/items", json={"items": [  # A loads its encoder first
            {"item_id": "replica-new", "title": "New on A", "text": text}]}, timeout=120)
        assert r.status_code == 200, r.text
        until(lambda: client.get(f"{b.url}/items/replica-new").status_code == 200, timeout=1.0)
        similar = client.get(f"{b.url}/items/{recommender.item_ids[3]}/similar",
                             params={"k": 50}).json()
        assert "replica-new" in items_of(similar)
        assert client.get(f"{b.url}/health").json()["store"]["item_changes_behind"] == 0

        # deleted on B: gone from both
        assert client.delete(f"{b.url}/items/replica-new").status_code == 200
        assert client.get(f"{b.url}/items/replica-new").status_code == 404
        until(lambda: client.get(f"{a.url}/items/replica-new").status_code == 404, timeout=1.0)
        for replica in (a, b):
            similar = client.get(f"{replica.url}/items/{recommender.item_ids[3]}/similar",
                                 params={"k": 50}).json()
            assert "replica-new" not in items_of(similar)

        # a promotion reaches both within 5 s with the default poll interval
        copy_bundle(models, "v1", "v2")
        set_current(models, "v2")
        for replica in (a, b):
            # until() calls the check within this iteration, so the loop variable is current
            url = f"{replica.url}/recommendations/{user}"
            until(lambda: client.get(url).json()["model_version"] == "v2",  # noqa: B023
                  timeout=5.0, every=0.1)


class Ingest:
    """A client streaming batches of events with ids to one replica, remembering which were
    acknowledged (200) and which were ever sent."""

    def __init__(self, url: str, item: str, prefix: str) -> None:
        self.url, self.item, self.prefix = url, item, prefix
        self.acked: list[dict] = []
        self.sent: list[dict] = []
        self.statuses: list[int] = []
        self.n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(headers=HEADERS, timeout=5) as client:
            while not self._stop.is_set():
                batch = [{"event_id": f"{self.prefix}-{self.n + j}",
                          "user_id": f"user-{(self.n + j) % 5}", "item_id": self.item,
                          "type": "click"} for j in range(5)]
                self.n += 5
                self.sent.extend(batch)
                try:
                    r = client.post(f"{self.url}/events", json={"events": batch})
                except httpx.HTTPError:
                    self.statuses.append(0)
                    time.sleep(0.01)
                    continue  # the server is gone: never acknowledged
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.acked.extend(batch)

    def __enter__(self) -> Ingest:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def stored_ids(store_url: str) -> list[str]:
    with psycopg.connect(store_url) as db:
        return [row[0] for row in db.execute("SELECT event_id FROM recsys_events")]


def kill_cycles(models, store_url, tmp_path, recommender, cycles: int) -> None:
    """Row 17 on PostgreSQL: SIGKILL replica A mid-ingest `cycles` times (restarting it), while
    B stays up on the same database; no acknowledged event lost, none stored twice."""
    item = recommender.item_ids[0]
    a = Replica(models, store_url, tmp_path / "a.log").start()
    b = Replica(models, store_url, tmp_path / "b.log").start()
    acked, sent = [], []
    try:
        b.wait_ready()
        for cycle in range(cycles):
            a.wait_ready()
            with Ingest(a.url, item, f"kill{cycle}") as ingest:
                until(lambda: len(ingest.acked) >= 50, timeout=30, every=0.01)
                a.kill()
            acked += ingest.acked
            sent += ingest.sent
            a.start()
        a.wait_ready()
        ids = stored_ids(store_url)
        assert len(ids) == len(set(ids)), "an event stored twice"
        lost = {e["event_id"] for e in acked} - set(ids)
        assert not lost, f"acknowledged but lost: {sorted(lost)[:5]}"
        with httpx.Client(headers=HEADERS, timeout=10) as client:
            for start in range(0, len(sent), 500):  # every retry, on the replica that stayed up
                r = client.post(f"{b.url}/events", json={"events": sent[start:start + 500]})
                assert r.status_code == 200
        ids = stored_ids(store_url)
        assert sorted(ids) == sorted({e["event_id"] for e in sent})  # retries not counted twice
    finally:
        a.stop()
        b.stop()


def test_sigkill_a_replica_during_ingest_loses_nothing(models, postgres_url, tmp_path,
                                                        recommender):
    kill_cycles(models, postgres_url, tmp_path, recommender, cycles=2)


@pytest.mark.slow
def test_sigkill_a_replica_during_ingest_20_cycles(models, postgres_url, tmp_path, recommender):
    kill_cycles(models, postgres_url, tmp_path, recommender, cycles=20)


def test_database_stopped_during_ingest(models, tmp_path, recommender):
    """Row 19 on PostgreSQL: while the database is down, writes get 503 (never a 200 for an
    event not stored), recommendations still answer, /health says so; when it is back the
    replica takes writes again and every acknowledged event is stored."""
    from tests.postgres_server import TempPostgres, binaries

    if binaries() is None:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin")
    database = TempPostgres()  # its own server: it is stopped mid-test
    database.start()
    replica = Replica(models, database.url(), tmp_path / "replica.log").start()
    user = sorted(recommender.users)[0]
    try:
        replica.wait_ready()
        with httpx.Client(headers=HEADERS, timeout=10) as client, \
                Ingest(replica.url, recommender.item_ids[0], "down") as ingest:
            until(lambda: len(ingest.acked) >= 50, timeout=30, every=0.01)
            database.stop()
            until(lambda: 503 in ingest.statuses, timeout=10)
            during = client.get(f"{replica.url}/recommendations/{user}")
            assert during.status_code == 200 and during.json()["source"] == "model"
            until(lambda: not client.get(f"{replica.url}/health").json()["store"]["reachable"],
                  timeout=5)
            outage_statuses = len(ingest.statuses)
            database.start()
            until(lambda: ingest.statuses[-1:] == [200] and len(ingest.statuses) >
                  outage_statuses, timeout=15)
            until(lambda: client.get(f"{replica.url}/health").json()["store"]["reachable"],
                  timeout=5)
        assert 503 in ingest.statuses and set(ingest.statuses) <= {200, 503}
        ids = set(stored_ids(database.url()))
        lost = {e["event_id"] for e in ingest.acked} - ids
        assert not lost, f"acknowledged but lost: {sorted(lost)[:5]}"
    finally:
        replica.stop()
        database.remove()
