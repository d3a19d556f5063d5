"""The fast path of GET /recommendations/{user_id} (serving.routes.recommendations.fast_path)
answers exactly as FastAPI's own path does: the same status, headers and bytes, the same
metrics; and what it does not understand it leaves to FastAPI."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from serving.main import create_app
from serving.routes import recommendations
from serving.routes.recommendations import user_query
from serving.settings import Settings
from serving.testing import copy_models
from tests.keys import ADMIN_KEY, DATA_KEY

HEADERS = {"X-API-Key": DATA_KEY}


def _settings(models, **overrides) -> Settings:
    # a generous ranker deadline: on a busy machine a prediction past the default 200 ms turns
    # one of the two answers compared into the degraded retrieval order, which is not a path
    # difference (the deadline has its own tests in test_reliability.py)
    values = dict(models_dir=models, api_keys=[DATA_KEY], admin_key=ADMIN_KEY, poll_current_s=0,
                  rate_limit_per_s=1000, rate_limit_burst=1000, ranker_timeout_ms=5000)
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def models(models_dir, tmp_path_factory):
    return copy_models(models_dir, tmp_path_factory.mktemp("fastpath") / "models")


class Paths:
    """Counts the requests the fast path answered, and can switch it off."""

    def __init__(self, monkeypatch) -> None:
        self.fast = 0
        self.enabled = True

        def counted(user_id: str, raw: bytes):
            args = user_query(user_id, raw) if self.enabled else None
            self.fast += args is not None
            return args
        monkeypatch.setattr(recommendations, "user_query", counted)


def _raw(response) -> tuple:
    return response.status_code, response.headers.raw, response.content


def _both(client, paths: Paths, url: str, headers=None) -> tuple[tuple, tuple]:
    paths.enabled = True
    fast = _raw(client.get(url, headers=headers))
    paths.enabled = False
    slow = _raw(client.get(url, headers=headers))
    paths.enabled = True
    return fast, slow


def test_the_fast_path_answers_byte_for_byte_as_fastapi(models, monkeypatch):
    paths = Paths(monkeypatch)
    with TestClient(create_app(_settings(models)), headers=HEADERS) as client:
        model = client.app.state.context.holder.current
        users = sorted(model.users, key=lambda u: (-len(model.users[u].items), u))[:3]
        queries = ["", "?k=5", "?k=100", "?k=1&explain=true", "?exclude_seen=false&k=7",
                   "?diversity=mmr&k=4", "?diversity=category_cap", "?explain=false&k=3"]
        fast_before = paths.fast
        for user in users + ["someone-never-seen"]:
            for query in queries:
                fast, slow = _both(client, paths, f"/recommendations/{user}{query}")
                assert fast == slow, (user, query)
                assert fast[0] == 200
        assert paths.fast - fast_before == 4 * len(queries)
        for key, status in (("wrong-key-0123456789", 401), (ADMIN_KEY, 403)):
            fast, slow = _both(client, paths, f"/recommendations/{users[0]}?k=5",
                               {"X-API-Key": key})
            assert fast == slow and fast[0] == status
        metrics = client.get("/metrics").text
        line = [m for m in metrics.splitlines() if m.startswith("recsys_request_seconds_count")
                and 'route="/recommendations/{user_id}"' in m and 'status="200"' in m]
        assert line and float(line[0].rsplit(" ", 1)[1]) == 2 * 4 * len(queries)


def test_the_fast_path_validates_as_fastapi_and_leaves_it_the_invalid(models, monkeypatch):
    paths = Paths(monkeypatch)
    with TestClient(create_app(_settings(models)), headers=HEADERS) as client:
        user = sorted(client.app.state.context.holder.current.users)[0]
        for query, status in (("?k=0", 422), ("?k=101", 422), ("?k=05", 200), ("?k=abc", 422),
                              ("?k=5&k=6", 200), ("?exclude=item1", 200), ("?explain=True", 200),
                              ("?explain=1", 200), ("?diversity=other", 422), ("?x=1", 422),
                              ("?k=%35", 200), ("?k", 422), ("?k=5&", 200),
                              ("?exclude=a&exclude=b&categories=c", 200), ("?exclude=", 422),
                              ("?categories=" + "c" * 201, 422), ("?exclude_categories=c", 200)):
            before = paths.fast
            fast, slow = _both(client, paths, f"/recommendations/{user}{query}")
            assert fast == slow and fast[0] == status, query
            # what FastAPI's validation accepts is answered fast; the rest FastAPI refuses
            assert paths.fast == before + (status == 200), query
        before = paths.fast
        fast, slow = _both(client, paths, f"/recommendations/{'u' * 201}")
        assert fast == slow and fast[0] == 422 and paths.fast == before
        fast, slow = _both(client, paths, f"/recommendations/{user}", {"X-API-Key": ""})
        assert fast == slow and fast[0] == 401


def test_a_get_with_an_empty_body_is_fast_and_one_with_a_body_is_not(models, monkeypatch):
    # clients that send "Content-Length: 0" on a GET (the benchmark's does) take the fast path
    paths = Paths(monkeypatch)
    with TestClient(create_app(_settings(models)), headers=HEADERS) as client:
        user = sorted(client.app.state.context.holder.current.users)[0]
        url = f"/recommendations/{user}?k=5"
        before = paths.fast
        fast, slow = _both(client, paths, url, {"Content-Length": "0"})
        assert fast == slow and fast[0] == 200 and paths.fast == before + 1
        before = paths.fast
        answer = client.request("GET", url, content=b"{}")
        assert answer.status_code == 200 and paths.fast == before


def test_the_fast_path_logs_each_request_as_the_middleware_does(models, monkeypatch, caplog):
    paths = Paths(monkeypatch)
    with TestClient(create_app(_settings(models)), headers=HEADERS) as client:
        user = sorted(client.app.state.context.holder.current.users)[0]
        lines = {}
        for enabled in (True, False):
            paths.enabled = enabled
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="recsys.access"):
                for key in (DATA_KEY, "wrong-key-0123456789"):
                    client.get(f"/recommendations/{user}?k=5", headers={"X-API-Key": key})
            lines[enabled] = [(r.method, r.route, r.status, r.caller) for r in caplog.records
                              if r.name == "recsys.access"]
        assert lines[True] == lines[False]
        assert [line[2] for line in lines[True]] == [200, 401]
        assert lines[True][0][1] == "/recommendations/{user_id}"
        assert lines[True][0][3].startswith("key-") and lines[True][1][3] == "-"


def test_rate_limit_and_no_model_answer_as_fastapi(models, tmp_path, monkeypatch):
    paths = Paths(monkeypatch)
    answers = {}
    for enabled in (True, False):
        paths.enabled = enabled
        limited = _settings(models, rate_limit_per_s=0.001, rate_limit_burst=2)
        with TestClient(create_app(limited), headers=HEADERS) as client:
            answers[enabled] = [_raw(client.get("/recommendations/someone?k=3"))
                                for _ in range(3)]
        empty = tmp_path / f"empty-{enabled}"
        empty.mkdir()
        with TestClient(create_app(_settings(empty)), headers=HEADERS) as client:
            answers[enabled].append(_raw(client.get("/recommendations/someone?k=3")))
    # the wait in a 429 is the bucket's refill time left, which moves with the clock
    assert [_timeless(a) for a in answers[True]] == [_timeless(a) for a in answers[False]]
    assert [a[0] for a in answers[True]] == [200, 200, 429, 200]
    assert b'"model_version":"none"' in answers[True][3][2]


def _timeless(answer: tuple) -> tuple:
    status, headers, body = answer
    # the refill time left is whole seconds rounded up, so it too moves with the clock
    # (999 against 1000): compared as present, not by value
    headers = [(k, b"N" if k == b"retry-after" else v) for k, v in headers
               if k != b"content-length"]
    return status, headers, re.sub(rb"retry in [0-9.]+s", b"retry in Ns", body)


def test_user_query_is_fastapis_validation():
    assert user_query("u1", b"") == {"user_id": "u1", "k": 10, "exclude": [],
                                     "categories": None, "exclude_categories": [],
                                     "exclude_seen": True, "diversity": "none", "explain": False}
    first = user_query("u1", b"k=7&explain=true&exclude=a&exclude=b")
    assert first["exclude"] == ["a", "b"]
    first["exclude"].append("changed by a caller")  # validation is remembered per query string
    assert user_query("u2", b"k=7&explain=true&exclude=a&exclude=b")["exclude"] == ["a", "b"]
    for user, raw in (("u1", b"k=0"), ("u1", b"k=1000"), ("u1", b"k=1e1"), ("u1", b"other=1"),
                      ("u1", b"diversity="), ("u1", b"exclude="), ("", b""), ("u" * 201, b"")):
        assert user_query(user, raw) is None, (user, raw)
