"""The live state offline: batch scoring applies the API's item changes and live events as the
server does, a resumed run scores the state its first attempt read, and retraining takes the
items added and deleted through the API (issue 20, item 1)."""

from __future__ import annotations

import math
import shutil
import sys
import time
import types
from collections import Counter
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from fastapi.testclient import TestClient

from recsys.batch import batch_score
from recsys.cli import main as cli
from recsys.live_state import LIVE_HISTORY_ITEMS, LiveSnapshot, apply_snapshot
from recsys.recommender import Recommender
from recsys.store import Event
from recsys.store.sqlite import SqliteEventStore
from serving.main import create_app
from serving.settings import Settings
from serving.testing import copy_models

LIVE_USER = "only-live-visitor"


def app_on(models):
    return TestClient(create_app(Settings(models_dir=models, poll_current_s=0)))


def users_file(path, users):
    pl.DataFrame({"user_id": users}).write_parquet(path)
    return path


def lists(out) -> dict[str, list[str]]:
    frame = pl.read_parquet(out).sort("user_id", "rank")
    return {u: g["item_id"].to_list() for (u,), g in frame.group_by("user_id", maintain_order=True)}


@pytest.fixture
def live_models(models_dir, recommender, tmp_path):
    """A copy of the models, its server having taken a live-only user's clicks, a new item and
    a deletion through the API; returns what a test needs to compare with."""
    models = copy_models(models_dir, tmp_path / "models")
    bundle_users = sorted(recommender.users)
    users = users_file(tmp_path / "users.parquet", bundle_users + [LIVE_USER])
    # the item the bundle alone recommends most: the deletion must be what keeps it out
    assert batch_score(models, users, tmp_path / "bundle.parquet", k=10, progress=False,
                       live=False)["live_store"] is None
    before = lists(tmp_path / "bundle.parquet")
    doomed = Counter(i for items in before.values() for i in items).most_common(1)[0][0]
    clicked = [i for i in recommender.item_ids[:40] if i != doomed][::10]
    now = time.time()
    with app_on(models) as client:
        new_item = {"item_id": "api-new-item", "title": "New",
                    "text": recommender.titles[recommender.item_rows[clicked[0]]] or "new item"}
        assert client.put("/items", json={"items": [new_item]}).status_code == 200
        events = [{"event_id": f"live-{n}", "user_id": LIVE_USER, "item_id": item,
                   "type": "click", "timestamp": now - 10 + n} for n, item in enumerate(clicked)]
        assert client.post("/events", json={"events": events}).json()["accepted"] == len(events)
        assert client.delete(f"/items/{doomed}").status_code == 200
        answer = client.get(f"/recommendations/{LIVE_USER}", params={"k": 10}).json()
    return {"models": models, "users": users, "doomed": doomed, "before": before,
            "answer": answer, "clicked": clicked}


def test_a_deleted_item_never_comes_out_of_batch_score(live_models, tmp_path):
    out = tmp_path / "recs.parquet"
    summary = batch_score(live_models["models"], live_models["users"], out, k=10,
                          progress=False)
    assert summary["live_store"]["store"].endswith("events.sqlite")
    assert summary["live_store"]["item_changes"] == 2
    doomed = live_models["doomed"]
    assert sum(doomed in items for items in live_models["before"].values()) > 1
    assert doomed not in set(pl.read_parquet(out)["item_id"].to_list())
    # --no-live scores the bundle alone, deleted item included
    alone = tmp_path / "alone.parquet"
    batch_score(live_models["models"], live_models["users"], alone, k=10, progress=False,
                live=False)
    assert lists(alone) == live_models["before"]


def test_a_live_only_user_gets_the_same_list_from_batch_and_the_api(live_models, tmp_path):
    answer = live_models["answer"]
    assert answer["source"] == "model" and len(answer["items"]) == 10
    out = tmp_path / "recs.parquet"
    summary = batch_score(live_models["models"], live_models["users"], out, k=10,
                          progress=False, store=f"sqlite:///{live_models['models']}/events.sqlite")
    rows = pl.read_parquet(out).filter(pl.col("user_id") == LIVE_USER).sort("rank")
    assert rows["item_id"].to_list() == [item["item_id"] for item in answer["items"]]
    assert rows["score"].to_list() == pytest.approx([item["score"] for item in answer["items"]],
                                                    rel=1e-5, abs=1e-5)
    assert summary["live_store"]["live_users"] == 1
    assert summary["sources"].get("popularity", 0) == 0   # not even the live-only user
    assert not set(live_models["clicked"]) & set(rows["item_id"].to_list())  # seen: excluded


def test_a_resumed_run_scores_the_state_its_first_attempt_read(live_models, tmp_path,
                                                               monkeypatch):
    import recsys.batch as batch

    models, users = live_models["models"], live_models["users"]
    out = tmp_path / "recs.parquet"
    real, calls = batch.score_chunk, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "score_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        batch_score(models, users, out, k=10, chunk_size=8, progress=False)
    assert not out.exists()
    # meanwhile the live user clicks on, and another item is deleted
    store = SqliteEventStore(models / "events.sqlite")
    first = store.count()
    store.append([Event(f"later-{n}", LIVE_USER, item, time.time(), "click")
                  for n, item in enumerate(live_models["answer"]["items"][i]["item_id"]
                                           for i in range(3))])
    store.close()
    monkeypatch.setattr(batch, "score_chunk", real)
    summary = batch_score(models, users, out, k=10, chunk_size=8, progress=False)
    assert summary["resumed_chunks"] == 2
    assert summary["live_store"]["events_seq"] == first   # the first attempt's state
    assert lists(out)[LIVE_USER] == [i["item_id"] for i in live_models["answer"]["items"]]
    # a new run (not a resume) reads the store as it is now
    fresh = batch_score(models, users, tmp_path / "fresh.parquet", k=10, progress=False)
    assert fresh["live_store"]["events_seq"] == first + 3
    assert lists(tmp_path / "fresh.parquet")[LIVE_USER] != lists(out)[LIVE_USER]


def test_batch_score_store_options_are_checked(live_models, tmp_path, capsys):
    users, models = str(live_models["users"]), str(live_models["models"])
    out = tmp_path / "r.parquet"
    assert cli(["batch-score", models, users, "--out", str(out), "--store",
                str(tmp_path / "nowhere.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --store ") and "nowhere.sqlite" in err
    assert not (tmp_path / "nowhere.sqlite").exists() and not out.exists()
    assert cli(["batch-score", models, users, "--out", str(out), "--store",
                str(models), "--no-live"]) == 2


def test_the_ray_engine_applies_the_same_live_state(live_models, tmp_path, monkeypatch):
    from tests.test_ray_cluster import FakeRay

    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    batch_score(live_models["models"], live_models["users"], local, k=10, progress=False)
    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    monkeypatch.setitem(sys.modules, "ray.data", types.ModuleType("ray.data"))
    summary = batch_score(live_models["models"], live_models["users"], on_ray, k=10,
                          progress=False, engine="ray")
    assert summary["live_store"]["item_changes"] == 2
    assert lists(on_ray) == lists(local)
    assert live_models["doomed"] not in set(pl.read_parquet(on_ray)["item_id"].to_list())


def test_the_snapshot_answers_as_the_store_does(tmp_path):
    store = SqliteEventStore(tmp_path / "ev.sqlite")
    types = ["click", "impression", "purchase", "view", "add_to_cart"]
    store.append([Event(f"e{n}", f"u{n % 3}", f"i{n % 7}", 1_000.0 + (n * 37) % 50,
                        types[n % len(types)]) for n in range(400)])
    snapshot = LiveSnapshot.read(store)
    for user in ("u0", "u1", "u2", "nobody"):
        for limit in (1, 5, LIVE_HISTORY_ITEMS):
            for since in (-math.inf, 1_020.0, 2_000.0):
                mine, theirs = snapshot.recent_items(user, limit, since), \
                    store.recent_items(user, limit, since)
                assert mine[0] == theirs[0], (user, limit, since)
                assert mine[1] == theirs[1] or (math.isnan(mine[1]) and math.isnan(theirs[1]))
    # bounded by a sequence number: as a store holding only the events up to it
    early = SqliteEventStore(tmp_path / "early.sqlite")
    early.append([event for _, event in store.events()][:10])
    bounded = LiveSnapshot.read(store, events_seq=10)
    assert bounded.events_seq == 10
    for user in ("u0", "u1", "u2"):
        assert bounded.recent_items(user, 50, -math.inf) == early.recent_items(user, 50, -math.inf)
    assert bounded.recent_items("u0", 50, -math.inf) != snapshot.recent_items("u0", 50, -math.inf)
    early.close()
    store.close()


def test_the_server_default_history_length_is_the_shared_one():
    assert Settings.model_fields["live_history_items"].default == LIVE_HISTORY_ITEMS


# -- retraining with the items added and deleted through the API ------------------------------
START = datetime(2018, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def base_models(tmp_path_factory, movielens_dataset):
    """A bundle trained on the first 60% of the MovieLens fixture (events an hour apart), and
    the rest as events for the API."""
    root = tmp_path_factory.mktemp("live-retrain")
    events = pl.read_parquet(movielens_dataset / "events.parquet").sort("timestamp", "event_id")
    events = events.with_columns(pl.Series(
        "timestamp", [START + timedelta(hours=i) for i in range(events.height)]
    ).dt.cast_time_unit("us"))
    cut = int(events.height * 0.6)
    base = root / "base"
    base.mkdir()
    shutil.copy(movielens_dataset / "items.parquet", base)
    shutil.copy(movielens_dataset / "dataset.json", base)
    events[:cut].write_parquet(base / "events.parquet")
    from training.pipeline import train

    train(base, root / "models", version="base", log=lambda _: None)
    return root / "models", events[cut:]


def test_an_item_added_through_the_api_and_clicked_is_in_the_retrained_bundle(base_models,
                                                                              tmp_path):
    source, new = base_models
    models = copy_models(source, tmp_path / "models")
    base = Recommender.load(models)
    doomed = new["item_id"].value_counts(sort=True)["item_id"][0]  # clicked in the new log too
    first = new["timestamp"].min()
    clickers = new["user_id"].unique(maintain_order=True).to_list()[:8]
    added = [{"event_id": f"api-click-{n}", "user_id": user, "item_id": "api-film",
              "type": "click", "timestamp": (first + timedelta(minutes=n + 1)).timestamp()}
             for n, user in enumerate(clickers)]
    logged = [{"event_id": r["event_id"], "user_id": r["user_id"], "item_id": r["item_id"],
               "type": r["type"], "timestamp": r["timestamp"].timestamp()}
              for r in new.iter_rows(named=True)]
    with app_on(models) as client:
        assert client.put("/items", json={"items": [{
            "item_id": "api-film", "title": "A new film",
            "text": "A heist comedy set in Paris"}]}).status_code == 200
        assert client.delete(f"/items/{doomed}").status_code == 200
        for start in range(0, len(logged), 500):
            assert client.post("/events", json={"events": logged[start:start + 500]}
                               ).status_code == 200
        assert client.post("/events", json={"events": added}).json()["accepted"] == 8

    export = tmp_path / "export"
    assert cli(["events", "export", str(models), "--out", str(export)]) == 0
    changes = pl.read_parquet(export / "item_changes.parquet")
    assert changes.select("item_id", "deleted").rows() == [("api-film", False), (doomed, True)]
    from training.retrain import retrain

    record = retrain(models, export, promote="always", version="r1", log=lambda _: None)
    report = record["data"]["new_log"]
    assert report["unknown_items_dropped"] == 0
    assert report["deleted_items_dropped"] == int((new["item_id"] == doomed).sum())
    assert report["items"]["added"] == 1 and report["items"]["deleted"] == 1
    assert report["new_events"] == new.height + 8 - report["deleted_items_dropped"]

    retrained = Recommender.load(models / "r1")
    assert "api-film" in retrained.item_rows and doomed not in retrained.item_ids
    assert "api-film" not in base.item_rows
    merged = pl.read_parquet(models / "datasets" / "r1" / "events.parquet")
    assert merged.filter(pl.col("item_id") == "api-film").height == 8
    assert merged.filter(pl.col("item_id") == doomed).height == 0
    assert retrained.state.clicks_[retrained.item_rows["api-film"]] > 0   # its clicks count
    # and the deleted item never comes out of the retrained bundle
    users = users_file(tmp_path / "users.parquet", sorted(retrained.users)[:50])
    out = tmp_path / "recs.parquet"
    batch_score(models, users, out, k=20, progress=False, live=False)
    assert doomed not in set(pl.read_parquet(out)["item_id"].to_list())


def test_batch_and_the_api_agree_on_a_real_time_bundle_after_its_clock_moved(base_models,
                                                                             tmp_path):
    """Live events much later than the bundle's data move its clock (item age, recency): batch
    scoring must measure from the same moment as the server that took them in."""
    source, new = base_models
    models = copy_models(source, tmp_path / "models")
    bundle = Recommender.load(models)
    known = sorted(bundle.users)[0]
    clicked = new["item_id"].unique(maintain_order=True).to_list()[:4]
    now = time.time()
    with app_on(models) as client:
        assert client.put("/items", json={"items": [{
            "item_id": "api-film", "title": "A new film",
            "text": bundle.titles[bundle.item_rows[clicked[0]]]}]}).status_code == 200
        events = [{"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": "click",
                   "timestamp": now - 60 + n} for user in (LIVE_USER, known)
                  for n, item in enumerate(clicked)]
        assert client.post("/events", json={"events": events}).status_code == 200
        answers = {user: client.get(f"/recommendations/{user}", params={"k": 10}).json()
                   for user in (LIVE_USER, known)}
        holder = client.app.state.context.holder
        server_clock = holder.clock.now(holder.current)
        assert holder.current.clock() == bundle.clock()   # the served Recommender is unchanged
    store = SqliteEventStore(models / "events.sqlite")
    assert server_clock == pytest.approx(now - 57, abs=1e-5)   # the latest event posted
    assert LiveSnapshot.read(store).now(apply_snapshot(bundle, LiveSnapshot.read(store))) == \
        pytest.approx(server_clock, abs=1e-5)
    assert bundle.clock() < now - 365 * 86400   # the bundle's own clock is left where it was
    store.close()
    users = users_file(tmp_path / "users.parquet", [LIVE_USER, known])
    out = tmp_path / "recs.parquet"
    summary = batch_score(models, users, out, k=10, progress=False)
    assert summary["sources"] == dict(Counter(answer["source"] for answer in answers.values()))
    frame = pl.read_parquet(out)
    for user, answer in answers.items():
        rows = frame.filter(pl.col("user_id") == user).sort("rank")
        assert rows["item_id"].to_list() == [item["item_id"] for item in answer["items"]], user
        assert rows["score"].to_list() == pytest.approx(
            [item["score"] for item in answer["items"]], rel=1e-5, abs=1e-5), user


def test_a_bad_item_changes_file_is_refused_by_file_row_and_column(tmp_path):
    from recsys.errors import DataError
    from recsys.store.export import ITEM_CHANGES_SCHEMA
    from training.retrain import read_export

    export = tmp_path / "export"
    export.mkdir()
    with pytest.raises(DataError, match="events.parquet"):
        read_export(export)
    pl.DataFrame({"event_id": ["e"]}).write_parquet(export / "events.parquet")
    assert read_export(export) == (export / "events.parquet", None)   # a click log alone
    stamp = datetime(2020, 1, 1, tzinfo=UTC)
    pl.DataFrame({"item_id": ["a", "b"], "title": ["A", ""], "text": ["an item", ""],
                  "category": [None, None], "deleted": [False, False],
                  "updated_at": [stamp, stamp], "seq": [1, 2]},
                 schema=ITEM_CHANGES_SCHEMA).write_parquet(export / "item_changes.parquet")
    with pytest.raises(DataError) as bad:
        read_export(export)
    assert "item_changes.parquet" in str(bad.value) and "row 1" in str(bad.value) and \
        "text" in str(bad.value)
    pl.DataFrame({"item_id": ["a"]}).write_parquet(export / "item_changes.parquet")
    with pytest.raises(DataError, match="title"):
        read_export(export)


def test_a_store_url_is_printed_without_its_password():
    from recsys.store.export import shown

    assert shown("postgresql://bob:secret@db:5432/recsys") == "postgresql://bob:***@db:5432/recsys"
    assert shown("postgresql://db/recsys") == "postgresql://db/recsys"
    assert shown("sqlite:///srv/models/events.sqlite") == "sqlite:///srv/models/events.sqlite"


def test_item_changes_apply_to_the_catalogue_last_change_winning():
    from recsys.store.export import ITEM_CHANGES_SCHEMA
    from training.retrain import apply_item_changes

    old = datetime(2019, 1, 1, tzinfo=UTC)
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"],
                          "text": ["a text", "b text", "c text"], "category": ["x", "y", None],
                          "created_at": [old, old, old]}).with_columns(
        pl.col("created_at").dt.cast_time_unit("us"))
    at = [datetime(2020, 1, d, tzinfo=UTC) for d in range(1, 6)]
    changes = pl.DataFrame({
        "item_id": ["a", "n", "b", "gone", "gone"], "title": ["A2", "N", "", "G", ""],
        "text": ["a new text", "n text", "", "g text", ""],
        "category": ["x", "z", None, None, None],
        "deleted": [False, False, True, False, True], "updated_at": at, "seq": [1, 2, 3, 4, 5]},
        schema=ITEM_CHANGES_SCHEMA)
    catalogue, deleted, report = apply_item_changes(items, changes)
    assert catalogue.schema == items.schema
    rows = {r["item_id"]: r for r in catalogue.iter_rows(named=True)}
    assert sorted(rows) == ["a", "c", "n"]
    assert rows["a"]["text"] == "a new text" and rows["a"]["created_at"] == old  # kept
    assert rows["n"]["created_at"] == at[1] and rows["n"]["category"] == "z"
    assert sorted(deleted.to_list()) == ["b", "gone"]
    assert report == {"added": 1, "changed": 1, "deleted": 1}


def test_an_item_added_to_a_catalogue_without_creation_times_gets_one():
    """The added item's `created_at` is what keeps it new for the next model (no events yet),
    so a catalogue without the column gets it, null for the items it had."""
    from recsys.store.export import ITEM_CHANGES_SCHEMA
    from training.retrain import apply_item_changes

    items = pl.DataFrame({"item_id": ["a"], "title": ["A"], "text": ["a text"],
                          "category": ["x"]})
    at = datetime(2020, 1, 2, tzinfo=UTC)
    changes = pl.DataFrame({
        "item_id": ["n"], "title": ["N"], "text": ["n text"], "category": [None],
        "deleted": [False], "updated_at": [at], "seq": [1]}, schema=ITEM_CHANGES_SCHEMA)
    catalogue, _, _ = apply_item_changes(items, changes)
    created = dict(catalogue.select("item_id", "created_at").iter_rows())
    assert created == {"a": None, "n": at}
