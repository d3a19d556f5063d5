"""The explorer's pages under /ui: server-rendered HTML over the same engine the API serves.

Data pages need what the data routes need (a data key, unless data is open); promote and roll
back need the admin key. The key is asked once and kept as a grant in the signed session
cookie (serving.ui.session); every form that changes state carries the session's CSRF token.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from recsys.bundle_versions import check_version_name, rollback
from recsys.errors import NotFoundError, RecsysError
from recsys.store import Event
from serving import lookup, service
from serving.auth import ADMIN, DATA, AuthError
from serving.deps import AppContext
from serving.errors import Overloaded
from serving.schemas import MAX_ID, MAX_K
from serving.ui import views
from serving.ui.activity import DAY_S, Activity
from serving.ui.session import COOKIE, SESSION_S, Session, SessionSigner, csrf_ok

HERE = Path(__file__).resolve().parent
MAX_QUERY = 200           # characters of a search query
MAX_TRY_ITEMS = 50        # items picked on the Try it page
DIVERSITY = ("none", "mmr", "category_cap")
HISTORY_SHOWN = 50        # latest history entries listed on the user page
MODELS = "models"         # the Models page: shown to data and admin sessions alike

templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                        autoescape=select_autoescape(default=True, default_for_string=True),
                        trim_blocks=True, lstrip_blocks=True)
templates.filters["when"] = lambda s: views.day_text(s) if s is not None else "\u2014"
templates.filters["pct"] = lambda x: "\u2014" if x is None else f"{100 * x:.1f}%"
templates.filters["num"] = lambda x: "\u2014" if not isinstance(x, (int, float)) else (
    f"{x:.4f}" if isinstance(x, float) and not float(x).is_integer() else f"{x:,.0f}")

router = APIRouter(prefix="/ui", include_in_schema=False)

# Nothing on these pages is loaded from elsewhere, and nothing inline runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


class PageRefused(Exception):
    """A page answered with a message instead (bad input, unknown id, no key): status + text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SignInNeeded(Exception):
    def __init__(self, role: str) -> None:
        super().__init__(role)
        self.role = role


@dataclass
class Visitor:
    request: Request
    ctx: AppContext
    session: Session
    new_session: bool

    @property
    def can_read(self) -> bool:
        return self.ctx.keys.open_data or self.session.data is not None

    @property
    def is_admin(self) -> bool:
        return self.session.admin is not None


def _ui_state(request: Request):
    """The explorer's per-app helpers, made on first use (the settings arrive in the lifespan)."""
    state = getattr(request.app.state, "ui", None)
    if state is None:
        ctx = request.app.state.context
        state = request.app.state.ui = _UiState(SessionSigner(ctx.settings), Activity(ctx.store),
                                                views.OtherVersions(), views.TitleIndex())
    return state


@dataclass
class _UiState:
    signer: SessionSigner
    activity: Activity
    other_versions: views.OtherVersions
    titles: views.TitleIndex


def visitor(request: Request, need: str | None = DATA) -> Visitor:
    ctx: AppContext = request.app.state.context
    state = _ui_state(request)
    session = state.signer.load(request.cookies.get(COOKIE))
    current = Visitor(request, ctx, session or Session(), session is None)
    if need == DATA and not current.can_read:
        raise SignInNeeded(DATA)
    if need == MODELS and not (current.can_read or current.is_admin):
        raise SignInNeeded(DATA)
    if need == ADMIN and not current.is_admin:
        raise SignInNeeded(ADMIN)
    if need is not None:
        caller = current.session.data or current.session.admin or \
            f"ip:{request.client.host if request.client else '?'}"
        wait = ctx.limiter.acquire(f"ui:{caller}")
        if wait > 0:
            ctx.metrics.rate_limited.inc()
            raise PageRefused(429, f"too many requests: try again in {math.ceil(wait)} s")
    return current


def page(v: Visitor, template: str, status: int = 200, **values) -> HTMLResponse:
    html = templates.get_template(template).render(
        nav=template.split(".")[0], can_read=v.can_read, is_admin=v.is_admin,
        signed_in=v.session.data is not None or v.is_admin, csrf=v.session.csrf,
        open_data=v.ctx.keys.open_data, **values)
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    if v.new_session:
        _set_cookie(v, response)
    return response


def _set_cookie(v: Visitor, response: Response) -> None:
    response.set_cookie(COOKIE, _ui_state(v.request).signer.dump(v.session), max_age=SESSION_S,
                        path="/ui", httponly=True, samesite="strict",
                        secure=v.request.url.scheme == "https")


async def form(v: Visitor) -> dict[str, str]:
    """The posted form's fields, after the cross-site checks: the session's CSRF token and,
    when the browser sends one, an Origin of this site."""
    request = v.request
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        raise PageRefused(415, "forms are posted as application/x-www-form-urlencoded")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PageRefused(403, "refused: the form was posted from another site")
    try:
        fields = parse_qs((await request.body()).decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PageRefused(400, "the form could not be read") from None
    values = {name: items[-1] for name, items in fields.items()}
    if v.new_session or not csrf_ok(v.session, values.get("csrf")):
        raise PageRefused(403, "refused: the form's security token is missing or stale "
                               "(reload the page and try again)")
    return values


def _redirect(url: str, v: Visitor | None = None) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    if v is not None:
        _set_cookie(v, response)
    return response


def _model(ctx: AppContext):
    recommender = ctx.holder.refresh_items()
    if recommender is None:
        raise PageRefused(503, f"no model is loaded ({ctx.holder.last_error or 'not yet'})")
    return recommender


async def _run(ctx: AppContext, fn, *args):
    try:
        return await ctx.pool.run(fn, *args)
    except Overloaded as exc:
        raise PageRefused(503, str(exc)) from None


def _text(request: Request, name: str, limit: int = MAX_ID) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > limit:
        raise PageRefused(400, f"{name} is longer than {limit} characters")
    return value


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageRefused(400, f"{name} must be a whole number, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise PageRefused(400, f"{name} must be between {low} and {high}, got {value}")
    return value


# -- pages ------------------------------------------------------------------------------------
@router.get("")
async def overview(request: Request) -> Response:
    v = visitor(request)
    ctx = v.ctx
    state = _ui_state(request)
    activity = await _run(ctx, state.activity.update)
    recommender = ctx.holder.current
    total = await _run(ctx, ctx.store.count)
    return page(v, "overview.html",
                model=views.model_summary(recommender) if recommender is not None else None,
                not_ready=ctx.holder.last_error, events_total=total,
                events_today=activity.events_today(),
                rates=views.server_rates(ctx.metrics),
                report=views.latest_report(ctx.settings.models_dir))


@router.get("/report/{name}")
async def report_plot(request: Request, name: str) -> Response:
    v = visitor(request)
    path = views.report_plot(v.ctx.settings.models_dir, name)
    if path is None:
        raise PageRefused(404, f"no plot {name!r} in the evaluation report")
    return FileResponse(path, media_type="image/png", headers=SECURITY_HEADERS)


@router.get("/users")
async def user_page(request: Request) -> Response:
    v = visitor(request)
    ctx = v.ctx
    user_id = _text(request, "user_id")
    k = _int(request, "k", 10, 1, MAX_K)
    diversity = request.query_params.get("diversity") or "none"
    if diversity not in DIVERSITY:
        raise PageRefused(400, f"diversity must be one of {', '.join(DIVERSITY)}")
    categories = [c for c in request.query_params.getlist("category") if c][:100]
    # a checkbox sends nothing when unticked: the form's hidden `filters` field tells them apart
    exclude_seen = request.query_params.get("exclude_seen") == "on" \
        or "filters" not in request.query_params
    other = _text(request, "compare")
    recommender = _model(ctx)
    values = dict(user_id=user_id, k=k, diversity=diversity, categories=categories,
                  exclude_seen=exclude_seen, compare_version=other,
                  all_categories=recommender.category_names, version=recommender.version,
                  versions=[m["version"] for m in views.model_versions(ctx.settings.models_dir)],
                  diversities=DIVERSITY)
    if not user_id:
        return page(v, "user.html", **values)
    try:
        history = await _run(ctx, lookup.user_body, recommender, ctx.store, user_id,
                             ctx.settings.live_history_items)
    except NotFoundError:
        history = None
    if history is not None:
        history["items"] = history["items"][-HISTORY_SHOWN:]
    filters = service.make_filters(exclude=[], categories=categories or None,
                                   exclude_categories=[], exclude_seen=exclude_seen,
                                   diversity=diversity)
    job = service.RecommendJob(k, filters, True, user_id=user_id)
    try:
        result = await ctx.batcher.submit(job)
    except Overloaded as exc:
        raise PageRefused(503, str(exc)) from None
    compared = None
    if other:
        compared = await _compare(ctx, _ui_state(request), result, other, job)
    return page(v, "user.html", history=history, result=result, compared=compared, **values)


async def _compare(ctx: AppContext, state: _UiState, result: dict, other: str,
                   job) -> dict:
    try:
        check_version_name(other)
    except RecsysError as exc:
        raise PageRefused(400, str(exc)) from None
    if ctx.settings.models_dir is None or not (ctx.settings.models_dir / other).is_dir():
        raise PageRefused(404, f"no model version {other}")
    plain = service.RecommendJob(job.k, job.filters, False, user_id=job.user_id)

    def other_answer() -> dict:
        current = ctx.holder.current
        recommender = current if current is not None and current.version == other \
            else state.other_versions.get(ctx.settings.models_dir, other)
        answer = service.recommend_jobs([plain], recommender, ctx.store,
                                        ctx.settings.live_history_items,
                                        now=ctx.holder.clock.now(recommender))[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    try:
        answer = await _run(ctx, other_answer)
    except RecsysError as exc:
        raise PageRefused(409, f"model version {other} could not be loaded: {exc}") from None
    return {"version": other, "result": answer, **views.compare(result, answer)}


@router.get("/items")
async def item_search(request: Request) -> Response:
    v = visitor(request)
    query = _text(request, "q", MAX_QUERY)
    recommender = _model(v.ctx)
    found = await _search(v.ctx, _ui_state(request), recommender, query) if query else None
    return page(v, "items.html", q=query, found=found)


async def _search(ctx: AppContext, state: _UiState, recommender, query: str) -> dict:
    def search() -> dict:
        prefix = views.title_prefix(recommender, state.titles.titles(recommender), query)
        try:
            meaning = views.semantic(recommender, ctx.holder.encoder(recommender), query)
        except RecsysError:  # a bundle without its encoder folder: title prefix only
            meaning = None
        return {"prefix": prefix, "semantic": meaning}
    return await _run(ctx, search)


@router.get("/items/{item_id:path}")
async def item_page(request: Request, item_id: str) -> Response:
    v = visitor(request)
    ctx = v.ctx
    if len(item_id) > MAX_ID:
        raise PageRefused(400, f"item id is longer than {MAX_ID} characters")
    recommender = _model(ctx)
    try:
        item = await _run(ctx, lookup.item_body, recommender, ctx.store, item_id)
    except NotFoundError as exc:
        raise PageRefused(404, str(exc)) from None
    similar = await _run(ctx, service.similar, recommender, item_id, 10)
    activity = await _run(ctx, _ui_state(request).activity.update)
    days = activity.item_days(item_id)
    peak = max((n for _, n in days), default=0)
    return page(v, "item.html", item=item, similar=similar,
                popularity=views.bundle_popularity(recommender, recommender.item_rows[item_id]),
                days=[(views.day_text(d * DAY_S)[:10], n, n / peak if peak else 0)
                      for d, n in days[-30:]],
                clickers=activity.item_clickers(item_id))


@router.get("/try")
async def try_it(request: Request) -> Response:
    v = visitor(request)
    ctx = v.ctx
    recommender = _model(ctx)
    picked = [i for i in request.query_params.getlist("item")
              if i in recommender.item_rows][:MAX_TRY_ITEMS]
    picked = list(dict.fromkeys(picked))
    query = _text(request, "q", MAX_QUERY)
    found = await _search(ctx, _ui_state(request), recommender, query) if query else None
    result = None
    if picked:
        job = service.RecommendJob(10, service.make_filters(
            exclude=[], categories=None, exclude_categories=[], exclude_seen=True,
            diversity="none"), True, history=picked)
        try:
            result = await ctx.batcher.submit(job)
        except Overloaded as exc:
            raise PageRefused(503, str(exc)) from None

    def link(items: list[str], q: str = "") -> str:
        return "/ui/try?" + urlencode([("item", i) for i in items] + ([("q", q)] if q else []))

    return page(v, "try.html", q=query, found=found, result=result,
                picked=[views.item_card(recommender, recommender.item_rows[i]) for i in picked],
                add_link=lambda item: link([*picked, item], query),
                remove_link=lambda item: link([i for i in picked if i != item], query),
                picked_ids=set(picked), search_items=picked)


@router.get("/live")
async def live_page(request: Request) -> Response:
    v = visitor(request)
    ctx = v.ctx
    user_id = _text(request, "user_id")
    recommender = _model(ctx)
    values = dict(user_id=user_id, posted=_text(request, "posted"))
    if user_id:
        try:
            history = await _run(ctx, lookup.user_body, recommender, ctx.store, user_id,
                                 ctx.settings.live_history_items)
        except NotFoundError:
            history = None
        job = service.RecommendJob(10, service.make_filters(
            exclude=[], categories=None, exclude_categories=[], exclude_seen=True,
            diversity="none"), False, user_id=user_id)
        try:
            values["result"] = await ctx.batcher.submit(job)
        except Overloaded as exc:
            raise PageRefused(503, str(exc)) from None
        values["history"] = history
        values["live_count"] = sum(1 for e in (history or {}).get("items", [])
                                   if e["source"] == lookup.LIVE)
    return page(v, "live.html", **values)


@router.post("/live/click")
async def post_click(request: Request) -> Response:
    v = visitor(request)
    ctx = v.ctx
    fields = await form(v)
    user_id, item_id = fields.get("user_id", "").strip(), fields.get("item_id", "").strip()
    if not user_id or not item_id or len(user_id) > MAX_ID or len(item_id) > MAX_ID:
        raise PageRefused(400, f"a test click needs a user id and an item id (at most {MAX_ID} "
                               "characters each)")
    recommender = _model(ctx)
    if item_id not in recommender.item_rows:
        raise PageRefused(404, f"unknown item {item_id!r}")
    now = time.time()
    event = Event(f"ui-{uuid.uuid4().hex}", user_id, item_id, now, "click")
    new = await run_in_threadpool(ctx.store.append, [event])  # durable before the redirect
    if new and new[0]:
        ctx.metrics.events_ingested.labels(type="click").inc()
        ctx.holder.clock.observe(now)
    return _redirect("/ui/live?" + urlencode({"user_id": user_id, "posted": item_id}))


@router.get("/models")
async def models_page(request: Request) -> Response:
    v = visitor(request, need=MODELS)
    ctx = v.ctx
    current = ctx.holder.current
    return page(v, "models.html", versions=views.model_versions(ctx.settings.models_dir),
                serving=current.version if current is not None else None,
                refused=dict(ctx.holder.refused), done=_text(request, "done"),
                admin_enabled=ctx.settings.admin_key is not None)


@router.post("/models/promote")
async def promote(request: Request) -> Response:
    v = visitor(request, need=ADMIN)
    fields = await form(v)
    version = fields.get("version", "")
    try:
        check_version_name(version)
        loaded = await run_in_threadpool(v.ctx.holder.reload, version, promote=True)
    except RecsysError as exc:
        raise PageRefused(409 if "refused" in str(exc) else 404, str(exc)) from None
    return _redirect("/ui/models?" + urlencode({"done": f"now serving {loaded.version}"}))


@router.post("/models/rollback")
async def roll_back(request: Request) -> Response:
    v = visitor(request, need=ADMIN)
    await form(v)
    models_dir = v.ctx.settings.models_dir
    if models_dir is None:
        raise PageRefused(404, "the server has no models folder")
    try:
        previous = await run_in_threadpool(rollback, models_dir)
        loaded = await run_in_threadpool(v.ctx.holder.reload, previous)
    except RecsysError as exc:
        raise PageRefused(409, str(exc)) from None
    return _redirect("/ui/models?" + urlencode({"done": f"rolled back to {loaded.version}"}))


# -- signing in -----------------------------------------------------------------------------
@router.get("/login")
async def login_page(request: Request) -> Response:
    v = visitor(request, need=None)
    return page(v, "login.html", wanted=_text(request, "need") or DATA,
                next=_local(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request) -> Response:
    v = visitor(request, need=None)
    fields = await form(v)
    # guesses share the rate limit of the address they come from
    wait = v.ctx.limiter.acquire(f"ui-login:{request.client.host if request.client else '?'}")
    if wait > 0:
        v.ctx.metrics.rate_limited.inc()
        raise PageRefused(429, f"too many sign-in attempts: try again in {math.ceil(wait)} s")
    key = fields.get("key", "")
    target = _local(fields.get("next"))
    for role in (DATA, ADMIN):
        try:
            caller = v.ctx.keys.check(key, role)
        except AuthError:
            continue
        if caller == "anonymous":  # open data routes: an empty key proves nothing
            continue
        if role == DATA:
            v.session.data = caller
        else:
            v.session.admin = caller
        v.session.csrf = Session().csrf  # a token seen before signing in is not reused after
        return _redirect(target, v)
    v.new_session = False  # keep the visitor's token: they may simply have mistyped
    return page(v, "login.html", 401, wanted=fields.get("need") or DATA, next=target,
                error="that key is not a data key or the admin key of this server")


@router.post("/logout")
async def logout(request: Request) -> Response:
    v = visitor(request, need=None)
    await form(v)
    v.session = Session()
    return _redirect("/ui/login", v)


def _local(target: str | None) -> str:
    """A redirect target on this site's explorer only (never another host)."""
    if target and target.startswith("/ui") and not target.startswith("//") \
            and "\\" not in target and len(target) < 2000:
        return target
    return "/ui"


# -- refusals as pages ---------------------------------------------------------------------
async def refused(request: Request, exc: PageRefused) -> Response:
    v = _bare_visitor(request)
    return page(v, "message.html", exc.status, message=str(exc), title="Refused"
                if exc.status in (401, 403) else "Not shown")


async def sign_in_needed(request: Request, exc: SignInNeeded) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        v = _bare_visitor(request)
        wanted = "the admin key" if exc.role == ADMIN else "a data key"
        return page(v, "message.html", 403 if exc.role == ADMIN else 401, title="Refused",
                    message=f"this action needs {wanted}: sign in with it first")
    return _redirect(f"/ui/login?need={exc.role}&next={quote(target, safe='')}")


def _bare_visitor(request: Request) -> Visitor:
    state = _ui_state(request)
    session = state.signer.load(request.cookies.get(COOKIE))
    return Visitor(request, request.app.state.context, session or Session(), session is None)


__all__ = ["PageRefused", "SignInNeeded", "refused", "router", "sign_in_needed"]
