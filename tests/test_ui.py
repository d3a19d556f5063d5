"""The explorer's pages (/ui) in-process: what each shows, who may see and change what, and
that catalogue text is always escaped. tests/test_ui_browser.py drives the same pages in a real
browser."""

from __future__ import annotations

import base64
import json
import re

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from serving.main import create_app
from serving.ui.session import COOKIE
from tests.keys import ADMIN_KEY, DATA_KEY
from tests.ui_browser import (
    HOSTILE_CATEGORY,
    HOSTILE_ITEM,
    HOSTILE_TITLE,
    VISITOR,
    add_hostile_item,
    settings_for,
    two_versions,
)


@pytest.fixture(scope="module")
def app(models_dir, tmp_path_factory):
    models = two_versions(models_dir, tmp_path_factory.mktemp("ui") / "models")
    report = models / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({
        "dataset": "recbole", "split": "test", "model_version": "v1",
        "metrics": {"pipeline": {"ndcg@10": 0.4321, "recall@10": 0.5},
                    "popularity": {"ndcg@10": 0.1, "recall@10": 0.2}}}))
    (report / "metrics.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    application = create_app(settings_for(models))
    with TestClient(application) as seeding:
        add_hostile_item(seeding, application.state.context.holder.current)
        yield application


def browser(app) -> TestClient:
    """A fresh visitor: no cookie yet, redirects not followed."""
    return TestClient(app, follow_redirects=False)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Sign `client` in with `key`; return its session's CSRF token."""
    token = csrf_of(client.get("/ui/login").text)
    answer = client.post("/ui/login", data={"csrf": token, "key": key, "next": "/ui"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui", answer.text
    return csrf_of(client.get("/ui/login").text)


@pytest.fixture
def reader(app):
    client = browser(app)
    client.csrf = sign_in(client, DATA_KEY)
    return client


def texts(html: str, element_id: str) -> list[str]:
    """The link texts (titles) inside the element with `element_id`."""
    start = html.index(f'id="{element_id}"')
    end = html.find("</table>", start) if "<table" in html[start - 30:start] else \
        html.find("</ol>", start)
    return re.findall(r'class="title"[^>]*>([^<]*)<', html[start:end])


def test_root_redirects_to_the_explorer_and_pages_need_a_key(app):
    client = browser(app)
    assert client.get("/").headers["location"] == "/ui"
    for path in ("/ui", "/ui/users?user_id=u1", "/ui/models", "/ui/items/x", "/ui/live"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/ui/login?need=data&next=")
    assert client.get("/ui/static/ui.css").status_code == 200
    # the explorer is no part of the API's schema
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_the_key_is_asked_once_and_kept_as_a_signed_httponly_strict_cookie(app):
    client = browser(app)
    sign_in(client, DATA_KEY)
    cookie = client.cookies.get(COOKIE)
    payload = base64.urlsafe_b64decode(cookie.split(".")[0] + "==").decode()
    assert DATA_KEY not in cookie and DATA_KEY not in payload
    token = csrf_of(client.get("/ui/login").text)
    answer = client.post("/ui/login", data={"csrf": token, "key": DATA_KEY, "next": "/ui"})
    header = answer.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/ui" in header
    # later pages need no key: the session carries the grant
    page = client.get("/ui")
    assert page.status_code == 200 and 'id="model-version">v1<' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # a forged or tampered cookie is no session
    forged = browser(app)
    forged.cookies.set(COOKIE, cookie[:-3] + "AAA", path="/ui")
    assert forged.get("/ui").status_code == 303


def test_sessions_expire_and_the_token_changes_at_sign_in(app, monkeypatch):
    from serving.ui import session as sessions

    client = browser(app)
    before = csrf_of(client.get("/ui/login").text)
    after = sign_in(client, DATA_KEY)
    assert after != before
    assert client.post("/ui/live/click", data={"user_id": VISITOR, "item_id": HOSTILE_ITEM,
                                               "csrf": before}).status_code == 403
    assert client.get("/ui").status_code == 200
    # a cookie the server signed, but whose 8 hours are over
    signer = app.state.ui.signer
    granted = sessions.Session(data="key-0123456789")
    fresh = signer.dump(granted)
    with monkeypatch.context() as past:
        started = sessions.time.time() - sessions.SESSION_S - 1
        past.setattr(sessions.time, "time", lambda: started)
        stale = signer.dump(granted)
    for cookie, status in ((fresh, 200), (stale, 303)):
        visitor = browser(app)
        visitor.cookies.set(COOKIE, cookie, path="/ui")
        assert visitor.get("/ui").status_code == status


def test_make_test_installs_the_browser_when_missing(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    dry = subprocess.run(["make", "-n", "-B", "test"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert "apt-get install -y -qq chromium chromium-driver" in dry
    assert dry.index("chromium-driver") < dry.index("bin/pytest")


def test_a_wrong_key_is_refused_and_redirects_stay_on_this_site(app):
    client = browser(app)
    token = csrf_of(client.get("/ui/login").text)
    answer = client.post("/ui/login", data={"csrf": token, "key": "not-a-key-0123456789"})
    assert answer.status_code == 401 and 'id="login-error"' in answer.text
    assert client.get("/ui").status_code == 303
    answer = client.post("/ui/login", data={"csrf": token, "key": DATA_KEY,
                                            "next": "//evil.example/ui"})
    assert answer.headers["location"] == "/ui"


def test_every_page_shows_catalogue_text_escaped(reader):
    pages = [f"/ui/items/{HOSTILE_ITEM}", f"/ui/users?user_id={VISITOR}&compare=v2",
             "/ui/items?q=glass+beaker", f"/ui/try?item={HOSTILE_ITEM}&q=glass+beaker",
             f"/ui/live?user_id={VISITOR}"]
    for path in pages:
        html = reader.get(path).text
        assert "<script>window" not in html and "<img src=x" not in html, path
        assert str(escape(HOSTILE_TITLE)) in html, path
    item = reader.get(f"/ui/items/{HOSTILE_ITEM}").text
    assert str(escape(HOSTILE_CATEGORY)) in item
    assert "onerror=" not in item.replace("onerror=window.__pwned=2", "").replace(
        "onerror=&#34;window.__pwned=3", "")
    # and in the category filter's options, an attribute value
    assert 'value="&#34;&gt;&lt;img src=x' in reader.get(f"/ui/users?user_id={VISITOR}").text


def test_user_page_history_recommendations_and_reasons(reader, app):
    html = reader.get(f"/ui/users?user_id={VISITOR}").text
    model = app.state.context.holder.current
    history = texts(html, "history")
    assert history[:2] == [model.titles[0], model.titles[1]]
    assert len(history) == 3 and "live (click)" in html
    recommended = texts(html, "recs")
    assert len(recommended) == 10
    assert html.count('class="why"') == 10


def test_filters_change_the_list(reader, app):
    model = app.state.context.holder.current
    user = next(iter(model.users))
    base = reader.get(f"/ui/users?user_id={user}&k=5").text
    assert len(texts(base, "recs")) == 5
    category = model.category_names[int(model.item_categories[model.state.popular_rows_[0]])]
    narrowed = reader.get("/ui/users", params={"user_id": user, "k": 5, "filters": 1,
                                               "exclude_seen": "on", "category": category}).text
    titles = texts(narrowed, "recs")
    assert titles and titles != texts(base, "recs")
    in_category = {model.titles[r] for r in range(len(model.item_ids))
                   if model.item_categories[r] >= 0
                   and model.category_names[int(model.item_categories[r])] == category}
    assert set(titles) <= in_category


def test_compare_two_versions_side_by_side(reader):
    html = reader.get(f"/ui/users?user_id={VISITOR}&compare=v2").text
    overlap = re.search(r'id="overlap">v1 and v2: (\d+) of (\d+) items in common', html)
    assert overlap and int(overlap.group(2)) == 10
    assert 'id="compare-table"' in html and "source degraded" in html  # v2 serves retrieval order
    same = reader.get(f"/ui/users?user_id={VISITOR}&compare=v1").text
    assert "v1 and v1: 10 of 10 items in common" in same
    assert reader.get(f"/ui/users?user_id={VISITOR}&compare=..%2Fx").status_code == 400
    assert reader.get(f"/ui/users?user_id={VISITOR}&compare=v9").status_code == 404


@pytest.mark.parametrize("query,message", [("k=0", "k must be between 1 and 100"),
                                           ("k=abc", "k must be a whole number"),
                                           ("diversity=best", "diversity must be one of")])
def test_bad_controls_are_a_clear_400_page(reader, query, message):
    answer = reader.get(f"/ui/users?user_id={VISITOR}&{query}")
    assert answer.status_code == 400 and message in answer.text
    assert answer.headers["content-type"].startswith("text/html")


def test_unknown_user_and_item(reader):
    html = reader.get("/ui/users?user_id=nobody-at-all").text
    assert 'id="no-history"' in html and "popularity" in html
    answer = reader.get("/ui/items/no-such-item")
    assert answer.status_code == 404 and "unknown item" in answer.text


def test_item_page_search_and_try_it(reader, app):
    model = app.state.context.holder.current
    item = model.item_ids[3]
    html = reader.get(f"/ui/items/{item}").text
    assert f'id="item-title">{model.titles[3]}<' in html.replace("&amp;", "&").replace(
        "&#39;", "'").replace("&#34;", '"')
    assert len(texts(html, "similar")) == 10
    found = reader.get("/ui/items", params={"q": model.titles[3][:12]}).text
    assert model.titles[3][:12] in " ".join(texts(found, "prefix-hits")).replace("&amp;", "&")
    assert texts(found, "semantic-hits")
    tried = reader.get("/ui/try", params=[("item", model.item_ids[0]), ("q", "glass")]).text
    assert len(texts(tried, "recs")) == 10 and 'href="/ui/try?item=' in tried
    more = reader.get("/ui/try", params=[("item", model.item_ids[0]),
                                         ("item", model.item_ids[1])]).text
    assert texts(more, "recs") != texts(tried, "recs")


def test_a_click_needs_the_forms_token_and_is_counted(reader, app):
    store = app.state.context.store
    item = app.state.context.holder.current.item_ids[7]
    before = store.count()
    for fields, headers in (({"user_id": VISITOR, "item_id": item}, {}),
                            ({"user_id": VISITOR, "item_id": item, "csrf": "forged"}, {}),
                            ({"user_id": VISITOR, "item_id": item, "csrf": reader.csrf},
                             {"Origin": "https://evil.example"})):
        answer = reader.post("/ui/live/click", data=fields, headers=headers)
        assert answer.status_code == 403, fields
        assert store.count() == before
    live = reader.get(f"/ui/live?user_id={VISITOR}").text
    count = int(re.search(r'id="live-count">(\d+)<', live).group(1))
    answer = reader.post("/ui/live/click",
                         data={"user_id": VISITOR, "item_id": item, "csrf": reader.csrf})
    assert answer.status_code == 303 and store.count() == before + 1
    after = reader.get(answer.headers["location"]).text
    assert int(re.search(r'id="live-count">(\d+)<', after).group(1)) == count + 1
    assert 'id="posted"' in after
    overview = reader.get("/ui").text
    assert f'id="events-total">{before + 1}<' in overview


def test_promote_and_roll_back_need_the_admin_key(app, reader):
    holder = app.state.context.holder
    refused = reader.post("/ui/models/promote", data={"version": "v2", "csrf": reader.csrf})
    assert refused.status_code == 403 and "admin key" in refused.text
    assert holder.current.version == "v1"
    admin = browser(app)
    token = sign_in(admin, ADMIN_KEY)
    assert admin.post("/ui/models/promote", data={"version": "v2"}).status_code == 403  # no token
    done = admin.post("/ui/models/promote", data={"version": "v2", "csrf": token})
    assert done.status_code == 303 and holder.current.version == "v2"
    assert "now serving v2" in admin.get(done.headers["location"]).text
    back = admin.post("/ui/models/rollback", data={"csrf": token})
    assert back.status_code == 303 and holder.current.version == "v1"
    assert admin.post("/ui/models/promote", data={"version": "../x", "csrf": token}) \
        .status_code == 404


def test_overview_shows_the_report_and_the_servers_rates(reader):
    for user in ("nobody-at-all", VISITOR):  # one fallback, one ranked answer from the API
        assert reader.get(f"/recommendations/{user}",
                          headers={"X-API-Key": DATA_KEY}).status_code == 200
    html = reader.get("/ui").text
    assert 'id="report-metrics"' in html and "0.4321" in html
    assert 'src="/ui/report/metrics.png"' in html
    assert reader.get("/ui/report/metrics.png").status_code == 200
    assert reader.get("/ui/report/report.json").status_code == 404
    assert re.search(r'id="error-rate">\d+\.\d%<', html)
    assert re.search(r'id="fallback-rate">(\d+\.\d)%<', html).group(1) == "50.0"


def test_open_data_on_loopback_still_guards_admin(models_dir, tmp_path):
    models = two_versions(models_dir, tmp_path / "models")
    settings = settings_for(models).model_copy(update={"api_keys": []})
    with TestClient(create_app(settings), follow_redirects=False) as client:
        assert client.get("/ui/models").status_code == 200
        token = csrf_of(client.get("/ui/models").text)
        answer = client.post("/ui/models/promote", data={"version": "v2", "csrf": token})
        assert answer.status_code == 403
        assert client.app.state.context.holder.current.version == "v1"


def test_an_item_id_with_url_characters_has_its_page(reader):
    # "/" is refused in item ids (one rule for every per-item route); "?", "&" and spaces are not
    put = reader.put("/items", headers={"X-API-Key": DATA_KEY}, json={"items": [{
        "item_id": "shelf 7?&", "title": "Seventh shelf", "text": "a shelf for beakers"}]})
    assert put.status_code == 200
    html = reader.get("/ui/items/shelf%207%3F%26").text
    assert 'id="item-title">Seventh shelf<' in html
    assert 'href="/ui/items/shelf%207%3F%26"' in reader.get("/ui/items?q=Seventh").text
