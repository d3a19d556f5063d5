"""A query parameter the recommendations routes do not declare is refused with a 422 naming it,
on the plain fast path and on FastAPI's path alike (schemathesis' negative mode asks this)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.main import create_app
from serving.settings import Settings
from serving.testing import copy_models
from tests.keys import DATA_KEY


@pytest.fixture(scope="module")
def api(models_dir, tmp_path_factory):
    models = copy_models(models_dir, tmp_path_factory.mktemp("query") / "models")
    settings = Settings(models_dir=models, api_keys=[DATA_KEY], poll_current_s=0,
                        rate_limit_per_s=1000, rate_limit_burst=1000)
    with TestClient(create_app(settings), headers={"X-API-Key": DATA_KEY}) as client:
        yield client


@pytest.mark.parametrize("query,name", [("k=5&exlude=1", "exlude"), ("=3", ""),
                                        ("k=5&diversity=mmr&limit=2", "limit")])
def test_an_undeclared_query_parameter_is_named_in_a_422(api, query, name):
    user = next(iter(api.app.state.context.holder.current.users))
    response = api.get(f"/recommendations/{user}?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", name]


def test_declared_parameters_are_still_served(api):
    user = next(iter(api.app.state.context.holder.current.users))
    response = api.get(f"/recommendations/{user}?k=3&exclude=x&exclude_seen=false")
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 3
