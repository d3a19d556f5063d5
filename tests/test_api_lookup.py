"""GET /items/{item_id} and GET /users/{user_id}: what the engine holds, bundle and live parts
marked, through the same auth and error mapping as the other data routes."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from serving.main import create_app
from serving.service import live_since
from serving.settings import Settings
from serving.testing import copy_models
from tests.keys import ADMIN_KEY, DATA_KEY

HEADERS = {"X-API-Key": DATA_KEY}


@pytest.fixture(scope="module")
def api(models_dir, tmp_path_factory):
    models = copy_models(models_dir, tmp_path_factory.mktemp("lookup") / "models")
    settings = Settings(models_dir=models, api_keys=[DATA_KEY], admin_key=ADMIN_KEY,
                        poll_current_s=0, rate_limit_per_s=1000, rate_limit_burst=1000,
                        live_history_items=3)
    with TestClient(create_app(settings), headers=HEADERS) as client:
        yield client


@pytest.fixture(scope="module")
def model(api):
    return api.app.state.context.holder.current


def category_of(model, row):
    code = model.item_categories[row]
    return model.category_names[code] if code >= 0 else None


def test_a_bundle_item_as_served(api, model):
    row = 5
    body = api.get(f"/items/{model.item_ids[row]}").json()
    assert body == {"item_id": model.item_ids[row], "title": model.titles[row], "text": None,
                    "category": category_of(model, row), "source": "bundle",
                    "updated_at": None, "model_version": "v1"}


def test_a_live_item_then_deleted(api, model):
    put = api.put("/items", json={"items": [{"item_id": "lookup-new", "title": "New glue",
                                             "text": "a strong glue for wood",
                                             "category": "Glues"}]})
    assert put.status_code == 200
    body = api.get("/items/lookup-new").json()
    assert body["source"] == "live" and body["text"] == "a strong glue for wood"
    assert body["title"] == "New glue" and body["category"] == "Glues"
    assert datetime.fromisoformat(body["updated_at"]).tzinfo is not None
    # a bundle item changed by PUT is served from the live copy
    changed = model.item_ids[6]
    api.put("/items", json={"items": [{"item_id": changed, "title": "Renamed", "text": "new"}]})
    assert api.get(f"/items/{changed}").json()["source"] == "live"
    assert api.delete("/items/lookup-new").status_code == 200
    gone = api.get("/items/lookup-new")
    assert gone.status_code == 404 and "lookup-new" in gone.json()["detail"]
    assert api.get("/items/never-heard-of").status_code == 404


def test_a_bundle_user_then_live_events_oldest_first(api, model):
    user = max(model.users, key=lambda u: len(model.users[u].items))
    bundle_items = [model.item_ids[r] for r in model.users[user].items]
    body = api.get(f"/users/{user}").json()
    assert [e["item_id"] for e in body["items"]] == bundle_items
    assert {e["source"] for e in body["items"]} == {"bundle"}
    assert body["total"] == len(bundle_items) and body["model_version"] == "v1"
    first = body["items"][0]
    row = model.users[user].items[0]
    assert first["title"] == model.titles[row] and first["category"] == category_of(model, row)
    assert first["time"] is None and first["type"] is None

    clicked = [model.item_ids[r] for r in (10, 11, 12, 13)]
    stamps = [1_700_000_000 + n for n in range(4)]
    events = [{"event_id": f"lookup-{n}", "user_id": user, "item_id": item, "type": "click",
               "timestamp": stamp}
              for n, (item, stamp) in enumerate(zip(clicked, stamps, strict=True))]
    events.append({"event_id": "lookup-shown", "user_id": user, "items": clicked[:2],
                   "type": "impression", "timestamp": stamps[-1] + 1})
    events.append({"event_id": "lookup-gone", "user_id": user, "item_id": "no-such-item",
                   "type": "purchase", "timestamp": stamps[-1] + 2})
    assert api.post("/events", json={"events": events}).status_code == 200
    body = api.get(f"/users/{user}").json()
    live = [e for e in body["items"] if e["source"] == "live"]
    # the engine's view: the latest live_history_items (3) positive events, oldest first,
    # less those of items it does not serve (the purchase takes a slot, then is skipped);
    # impressions are not part of a history
    assert [e["item_id"] for e in live] == clicked[2:]
    assert [e["type"] for e in live] == ["click"] * 2
    assert [datetime.fromisoformat(e["time"]).timestamp() for e in live] == stamps[2:]
    assert [e["item_id"] for e in body["items"][:-2]] == bundle_items
    assert datetime.fromisoformat(body["last_event_at"]).timestamp() == stamps[-1] + 2
    # exactly the history a recommendation for this user is ranked from
    recent, last = api.app.state.context.store.recent_items(user, 3, live_since(model))
    engine = model.live_history(user, recent, last)
    assert [e["item_id"] for e in body["items"]] == [model.item_ids[r] for r in engine.items]


def test_a_user_known_only_from_live_events(api, model):
    item = model.item_ids[20]
    api.post("/events", json={"events": [
        {"event_id": "only-live-1", "user_id": "only-live", "item_id": item, "type": "click"}]})
    body = api.get("/users/only-live").json()
    assert [(e["item_id"], e["source"]) for e in body["items"]] == [(item, "live")]


def test_unknown_users_are_404(api, model):
    missing = api.get("/users/nobody-at-all")
    assert missing.status_code == 404 and "nobody-at-all" in missing.json()["detail"]
    api.post("/events", json={"events": [{"event_id": "shown-only", "user_id": "just-looked",
                                          "items": model.item_ids[:2], "type": "impression"}]})
    assert api.get("/users/just-looked").status_code == 404  # no history the engine uses


def test_same_auth_and_limits_as_other_data_routes(api, model):
    item = model.item_ids[0]
    user = next(iter(model.users))
    for path in (f"/items/{item}", f"/users/{user}"):
        assert api.get(path, headers={"X-API-Key": ""}).status_code == 401
        assert api.get(path, headers={"X-API-Key": ADMIN_KEY}).status_code == 403
        assert api.get(path).status_code == 200
    assert api.get("/users/" + "u" * 201).status_code == 422  # ids are at most 200 characters


def test_without_a_model_both_say_so(tmp_path):
    settings = Settings(models_dir=tmp_path, poll_current_s=0)
    with TestClient(create_app(settings)) as client:
        for path in ("/items/any", "/users/any"):
            answer = client.get(path)
            assert answer.status_code == 503 and "no model" in answer.json()["detail"]
