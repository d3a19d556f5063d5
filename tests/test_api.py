"""The HTTP API against the fixture bundle, through FastAPI's TestClient (in-process)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.main import create_app
from serving.settings import Settings
from serving.testing import copy_models
from tests.keys import ADMIN_KEY, DATA_KEY

SNAPSHOT = Path(__file__).parent / "openapi_snapshot.json"
HEADERS = {"X-API-Key": DATA_KEY}


@pytest.fixture(scope="module")
def api(models_dir, tmp_path_factory):
    models = copy_models(models_dir, tmp_path_factory.mktemp("api") / "models")
    settings = Settings(models_dir=models, api_keys=[DATA_KEY], admin_key=ADMIN_KEY,
                        poll_current_s=0, rate_limit_per_s=1000, rate_limit_burst=1000)
    with TestClient(create_app(settings), headers=HEADERS) as client:
        yield client


@pytest.fixture(scope="module")
def model(api):
    return api.app.state.context.holder.current


def test_known_user_gets_model_recommendations_with_version(api, model):
    user = max(model.users, key=lambda u: len(model.users[u].items))
    body = api.get(f"/recommendations/{user}", params={"k": 5}).json()
    assert body["source"] == "model" and body["fallback"] is False
    assert body["model_version"] == "v1" and body["user_id"] == user
    assert len(body["items"]) == 5
    seen = {model.item_ids[r] for r in model.users[user].items}
    assert not seen & {i["item_id"] for i in body["items"]}  # exclude_seen by default
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_gets_popularity_fallback(api, model):
    body = api.get("/recommendations/someone-never-seen", params={"k": 4}).json()
    assert body["source"] == "popularity" and body["fallback"] is True
    expected = [model.item_ids[r] for r in model.state.popular_rows_[:4]]
    assert [i["item_id"] for i in body["items"]] == expected


def test_anonymous_history_and_filters(api, model):
    history = [model.item_ids[r] for r in model.users[next(iter(model.users))].items]
    excluded = model.item_ids[model.state.popular_rows_[0]]
    body = api.post("/recommendations", json={"history": history, "k": 8, "exclude": [excluded],
                                              "diversity": "category_cap",
                                              "explain": True}).json()
    assert body["source"] == "model" and body["user_id"] is None
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 8 and excluded not in ids and not set(ids) & set(history)
    assert all(i["reasons"] is not None for i in body["items"])
    category = model.category_names[0]
    body = api.post("/recommendations", json={"history": history, "k": 5,
                                              "categories": [category]}).json()
    for item in body["items"]:
        assert model.category_names[model.item_categories[model.item_rows[item["item_id"]]]] \
            == category
    empty = api.post("/recommendations", json={"history": [], "k": 3}).json()
    assert empty["source"] == "popularity" and len(empty["items"]) == 3


def test_similar_items_and_unknown_item(api, model):
    item = model.item_ids[0]
    body = api.get(f"/items/{item}/similar", params={"k": 3}).json()
    assert len(body["items"]) == 3 and item not in [i["item_id"] for i in body["items"]]
    assert body["model_version"] == "v1"
    missing = api.get("/items/no-such-item/similar")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]


def test_click_event_changes_the_next_recommendation(api, model):
    """A new user has no history (popularity); one click later the model ranks for them."""
    user = "fresh-user-1"
    assert api.get(f"/recommendations/{user}").json()["source"] == "popularity"
    clicked = model.item_ids[7]
    r = api.post("/events", json={"events": [
        {"event_id": "click-1", "user_id": user, "item_id": clicked, "type": "click"},
        {"event_id": "imp-1", "user_id": user, "items": model.item_ids[:3], "type": "impression"}]})
    assert r.status_code == 200 and r.json() == {"accepted": 4, "duplicates": 0}
    body = api.get(f"/recommendations/{user}").json()
    assert body["source"] == "model"
    assert clicked not in [i["item_id"] for i in body["items"]]  # seen now, so excluded
    again = api.post("/events", json={"events": [
        {"event_id": "click-1", "user_id": user, "item_id": clicked, "type": "click"}]}).json()
    assert again == {"accepted": 0, "duplicates": 1}


def test_put_item_is_retrievable_at_once_and_delete_stops_it(api, model):
    text = model.titles[3] + " refill pack, same product family"
    r = api.put("/items", json={"items": [{"item_id": "cold-1", "title": "Cold start item",
                                           "text": text, "category": "brand-new-category"}]})
    assert r.status_code == 200 and r.json()["upserted"] == 1
    similar = api.get(f"/items/{model.item_ids[3]}/similar", params={"k": 5}).json()
    assert "cold-1" in [i["item_id"] for i in similar["items"]]
    body = api.post("/recommendations", json={"history": [model.item_ids[3]], "k": 20}).json()
    assert "cold-1" in [i["item_id"] for i in body["items"]]
    only_new = api.post("/recommendations", json={"history": [model.item_ids[3]], "k": 5,
                                                  "categories": ["brand-new-category"]}).json()
    assert [i["item_id"] for i in only_new["items"]] == ["cold-1"]
    assert api.delete("/items/cold-1").status_code == 200
    body = api.post("/recommendations", json={"history": [model.item_ids[3]], "k": 50}).json()
    assert "cold-1" not in [i["item_id"] for i in body["items"]]
    assert api.get("/items/cold-1/similar").status_code == 404
    assert api.delete("/items/cold-1").status_code == 404


def test_health_ready_live_metrics(api):
    assert api.get("/live").json() == {"live": True}
    assert api.get("/ready").json()["ready"] is True
    health = api.get("/health").json()
    assert {k: health[k] for k in ("status", "model_version", "source")} == \
        {"status": "ok", "model_version": "v1", "source": "model"}
    assert health["store"]["reachable"] is True and health["store"]["item_changes_behind"] == 0
    assert 0 <= health["store"]["seconds_since_sync"] < 5
    api.get("/recommendations/metrics-user")
    text = api.get("/metrics").text
    assert 'recsys_model_info{version="v1"} 1.0' in text
    assert 'recsys_request_seconds_bucket{le="0.005",method="GET",' \
           'route="/recommendations/{user_id}",status="200"}' in text
    assert 'recsys_fallbacks_total{reason="popularity"}' in text
    assert "recsys_events_ingested_total" in text


def test_openapi_matches_snapshot(api):
    """The public contract changes only on purpose: regenerate with RECSYS_UPDATE_SNAPSHOT=1."""
    schema = api.get("/openapi.json").json()
    if os.environ.get("RECSYS_UPDATE_SNAPSHOT") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    assert schema == json.loads(SNAPSHOT.read_text())
    assert api.get("/docs").status_code == 200


def test_cold_start_items_survive_reload_and_restart(api, model):
    text = model.titles[5] + " (new edition)"
    assert api.put("/items", json={"items": [{"item_id": "cold-2", "text": text}]}
                   ).status_code == 200
    reloaded = api.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert reloaded.status_code == 200
    similar = api.get(f"/items/{model.item_ids[5]}/similar", params={"k": 5}).json()
    assert "cold-2" in [i["item_id"] for i in similar["items"]]
    assert api.app.state.context.holder.current.item_ids.count("cold-2") == 1
    settings = api.app.state.context.settings
    with TestClient(create_app(settings), headers=HEADERS) as restarted:
        similar = restarted.get(f"/items/{model.item_ids[5]}/similar", params={"k": 5}).json()
        assert "cold-2" in [i["item_id"] for i in similar["items"]]
        assert restarted.delete("/items/cold-2").status_code == 200


def test_two_replicas_sharing_the_store_see_each_others_events_and_items(api, model):
    """What `RECSYS_WORKERS` > 1 relies on: the store, not process memory, is the live state."""
    settings = api.app.state.context.settings
    with TestClient(create_app(settings), headers=HEADERS) as other:
        user = "replica-user"
        assert other.get(f"/recommendations/{user}").json()["source"] == "popularity"
        api.post("/events", json={"events": [{"event_id": "replica-click", "user_id": user,
                                              "item_id": model.item_ids[9], "type": "click"}]})
        assert other.get(f"/recommendations/{user}").json()["source"] == "model"
        assert other.post("/events", json={"events": [{
            "event_id": "replica-click", "user_id": user, "item_id": model.item_ids[9],
            "type": "click"}]}).json() == {"accepted": 0, "duplicates": 1}
        text = model.titles[11] + " (replica edition)"
        api.put("/items", json={"items": [{"item_id": "replica-item", "text": text}]})
        # the follower checks the store every RECSYS_FOLLOW_STORE_S; the wait is generous because
        # applying the item encodes its text, which a loaded CI machine can make slow
        deadline = time.monotonic() + 20.0
        while "replica-item" not in [i["item_id"] for i in other.get(
                f"/items/{model.item_ids[11]}/similar", params={"k": 5}).json()["items"]]:
            assert time.monotonic() < deadline, "the item added on one replica is not served"
            time.sleep(0.02)
        assert other.delete("/items/replica-item").status_code == 200
        deadline = time.monotonic() + 20.0
        while api.get("/items/replica-item/similar").status_code != 404:
            assert time.monotonic() < deadline, "the item deleted on one replica is still served"
            time.sleep(0.02)
