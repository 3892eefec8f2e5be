"""The Starlette application: pages, the event stream, login and actions.

Every page is rendered on the server (jinja2, autoescaped); ``static/dashboard.js`` only
places the fragments that arrive over ``/events``. Reading needs a login unless the
dashboard listens on loopback (``Policy.login_to_view``); every POST needs a valid CSRF token,
and the actions (push, roll back, cancel) need a logged-in operator. Each action is written to
the audit log in the push registry.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgefleet.host.dashboard._actions import run_action
from edgefleet.host.dashboard._auth import Sessions, Users
from edgefleet.host.dashboard._queries import (
    AuditLog,
    Search,
    class_counts,
    device_logs,
    latest,
    open_readonly,
    per_minute,
    record_json,
    thumbnail_image,
)
from edgefleet.host.dashboard._render import (
    HERE,
    SECURITY_HEADERS,
    chart_model,
    make_templates,
    parse_score,
    parse_time,
    time_text,
)
from edgefleet.host.dashboard._views import groups_of, push_history
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

    from edgefleet.host.dashboard._live import LiveFleet

log = logging.getLogger(__name__)

SESSION_COOKIE = "efd_session"
PRE_COOKIE = "efd_pre"
PING_S = 15.0
LOGIN_SLOTS = 2  # password checks at a time (scrypt, 16 MiB each)
FLEET_PAGE = 100  # rows per fleet page: a 1,000-device fleet is 10 pages


@dataclass(frozen=True)
class Policy:
    """Who may do what: ``login_to_view`` off only on loopback; ``tls`` sets Secure cookies."""

    login_to_view: bool = False
    tls: bool = False


class Dashboard:
    """Request handlers around a :class:`LiveFleet` (``app`` is the ASGI application)."""

    def __init__(self, live: LiveFleet, users: Users, policy: Policy) -> None:
        self.live = live
        self.users = users
        self.policy = policy
        self.sessions = Sessions()
        self.templates = make_templates()
        self.audit = AuditLog(live.settings.state)
        self._login_slots = asyncio.Semaphore(LOGIN_SLOTS)
        self.app = Starlette(
            routes=[
                Route("/", self.fleet_page),
                Route("/devices/{device_id}", self.device_page),
                Route("/rollouts", self.rollouts_page),
                Route("/predictions", self.predictions_page),
                Route("/predictions/stats", self.predictions_stats),
                Route("/predictions/{row_id:int}", self.prediction_page),
                Route("/thumbnails/{row_id:int}", self.thumbnail),
                Route("/events", self.events),
                Route("/login", self.login_page, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/actions/{action}", self.action, methods=["POST"]),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            ],
            middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._guard)],
        )

    # -- plumbing ---------------------------------------------------------------------

    def render(self, name: str, context: dict[str, Any]) -> str:
        """Render one template."""
        return self.templates.get_template(name).render(**context)

    def _user(self, request: Request) -> str | None:
        return self.sessions.user(request.cookies.get(SESSION_COOKIE))

    def _bound(self, request: Request) -> str | None:
        """What the CSRF token of this request is bound to: the session, else the pre-session."""
        if self._user(request):
            return request.cookies.get(SESSION_COOKIE)
        return request.cookies.get(PRE_COOKIE)

    async def _guard(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        open_path = path in ("/login", "/logout") or path.startswith("/static/")
        if self.policy.login_to_view and not open_path and self._user(request) is None:
            if request.method == "GET" and path != "/events":
                return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
            return Response("log in first\n", status_code=401, media_type="text/plain")
        pre = request.cookies.get(PRE_COOKIE)
        if pre is None:
            pre = secrets.token_urlsafe(24)
            request.scope.setdefault("state", {})["pre"] = pre
        response = await call_next(request)
        if PRE_COOKIE not in request.cookies:
            self._cookie(response, PRE_COOKIE, pre)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name, value, httponly=True, samesite="strict", secure=self.policy.tls, path="/"
        )

    def page(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        """A full page with the common context (user, CSRF token, message)."""
        user = self._user(request)
        bound = self._bound(request) or request.scope.get("state", {}).get("pre", "")
        base = {
            "user": user,
            "csrf": self.sessions.csrf(bound),
            "request_path": request.url.path,
            "message": request.query_params.get("msg"),
            "message_kind": request.query_params.get("kind"),
            "can_act": user is not None,
        }
        return HTMLResponse(self.render(name, base | context), status_code=status)

    def _db(self) -> Any:  # noqa: ANN401 - sqlite3.Connection | None
        return open_readonly(self.live.settings.db_path)

    # -- pages ------------------------------------------------------------------------

    async def fleet_page(self, request: Request) -> Response:
        """Every device, FLEET_PAGE rows a page; filters by group and state."""
        rows = self.live.rows()
        group = request.query_params.get("group", "")
        state = request.query_params.get("state", "")
        shown = [
            r
            for r in rows
            if (not group or group in r["groups"]) and (not state or r["state"] == state)
        ]
        pages = max(1, -(-len(shown) // FLEET_PAGE))
        try:
            number = min(pages, max(1, int(request.query_params.get("page", "1"))))
        except ValueError:
            number = 1
        start = (number - 1) * FLEET_PAGE
        part = shown[start : start + FLEET_PAGE]
        query = {k: v for k, v in (("group", group), ("state", state)) if v}
        return self.page(
            request,
            "fleet.html",
            {
                "title": "Fleet",
                "page": "fleet",
                "rows": part,
                "rows_html": Markup(self.live.rows_html([r["id"] for r in part])),  # noqa: S704 - rendered, autoescaped
                "matching": len(shown),
                "first": start + 1,
                "number": number,
                "pages": pages,
                "query": urlencode(query),
                "groups": groups_of(rows),
                "group": group,
                "state": state,
                "online": sum(1 for r in rows if r["state"] == "online"),
                "total": len(rows),
            },
        )

    async def device_page(self, request: Request) -> Response:
        """One device: its row, status history, rollouts, predictions and log lines."""
        device_id = request.path_params["device_id"]
        row = next((r for r in self.live.rows() if r["id"] == device_id), None)
        rollouts = [
            p for p in self.live.rollouts() if any(d["id"] == device_id for d in p["devices"])
        ]
        db = self._db()
        predictions, logs = [], None
        if db is not None:
            try:
                predictions = latest(db, Search(device=device_id))
                logs = device_logs(db, device_id)
            finally:
                db.close()
        with self.live.lock:
            history = list(self.live.history.get(device_id, ()))
        return self.page(
            request,
            "device.html",
            {
                "title": device_id,
                "page": "device",
                "device": device_id,
                "row": row,
                "history": history,
                "rollouts": rollouts,
                "predictions": predictions,
                "logs": logs,
            },
            status=200 if row or predictions else 404,
        )

    async def rollouts_page(self, request: Request) -> Response:
        """Every target's latest push with per-device progress, history, audit log."""
        fleet = self.live.fleet
        assert fleet is not None  # noqa: S101 - the live fleet is started before serving
        with self.live.lock:
            history = push_history(fleet)
            latest_pushes = fleet.registry.latest_pushes()
        models: dict[str, dict[str, Any]] = {}
        for p in sorted(latest_pushes, key=lambda p: p.id):
            for v in p.manifest.variants:
                if v.accelerator == "cpu":
                    models[v.sha256] = {
                        "sha": v.sha256,
                        "name": p.name,
                        "mode": p.manifest.mode,
                        "version": p.version,
                    }
        return self.page(
            request,
            "rollouts.html",
            {
                "title": "Rollouts",
                "page": "rollouts",
                "rollouts": self.live.rollouts(),
                "history": history,
                "audit": self.audit.recent(),
                "models": list(models.values()),
                "groups": groups_of(self.live.rows()),
            },
        )

    def _search(self, request: Request) -> Search:
        q = request.query_params
        return Search(
            device=q.get("device") or None,
            label=q.get("label") or None,
            min_score=parse_score(q.get("min_score"), "minimum score"),
            max_score=parse_score(q.get("max_score"), "maximum score"),
            since=parse_time(q.get("since")),
            until=parse_time(q.get("until")),
        )

    def _stats(self, db: Any, search: Search) -> dict[str, Any]:  # noqa: ANN401 - sqlite3
        start, counts = per_minute(db, search)
        return {"counts": class_counts(db, search), "chart": chart_model(start, counts)}

    async def predictions_page(self, request: Request) -> Response:
        """Live feed, search, per-class counts and the per-minute chart."""
        error = None
        try:
            search = self._search(request)
        except ValueError as exc:
            error, search = f"{exc}; showing everything", Search()
        db = self._db()
        rows: list[dict[str, Any]] = []
        total = 0
        stats: dict[str, Any] = {"counts": [], "chart": chart_model(time.time() - 3600, [0] * 60)}
        if db is not None:
            try:
                rows = latest(db, search)
                total = int(db.execute("SELECT MAX(id) FROM predictions").fetchone()[0] or 0)
                stats = self._stats(db, search)
            finally:
                db.close()
        return self.page(
            request,
            "predictions.html",
            {
                "title": "Predictions",
                "page": "predictions",
                "rows": rows,
                "total": total,
                "s": search,
                "since_text": time_text(search.since),
                "until_text": time_text(search.until),
                "error": error,
            }
            | stats,
        )

    async def predictions_stats(self, request: Request) -> Response:
        """The counts and chart fragment (refreshed by the page as records arrive)."""
        try:
            search = self._search(request)
        except ValueError as exc:
            return Response(f"{exc}\n", status_code=400, media_type="text/plain")
        db = self._db()
        if db is None:
            return HTMLResponse("")
        try:
            return HTMLResponse(self.render("_stats.html", self._stats(db, search)))
        finally:
            db.close()

    async def prediction_page(self, request: Request) -> Response:
        """One record with its input image and top-k."""
        row_id = request.path_params["row_id"]
        db = self._db()
        record = None
        if db is not None:
            try:
                record = record_json(db, row_id)
            finally:
                db.close()
        if record is None:
            return Response(f"no prediction #{row_id}\n", status_code=404, media_type="text/plain")
        return self.page(
            request,
            "prediction.html",
            {
                "title": f"prediction {row_id}",
                "page": "prediction",
                "rec": record,
                "row_id": row_id,
            },
        )

    async def thumbnail(self, request: Request) -> Response:
        """The input thumbnail a device sent for a record (the store's side table)."""
        db = self._db()
        found = None
        if db is not None:
            try:
                found = thumbnail_image(db, request.path_params["row_id"])
            finally:
                db.close()
        if found is None:
            return Response("no image for this record\n", status_code=404, media_type="text/plain")
        fmt, data = found
        media = "image/png" if fmt == "png" else "image/jpeg"
        return Response(data, media_type=media, headers={"cache-control": "private, max-age=3600"})

    async def events(self, _request: Request) -> Response:
        """Server-sent events: device rows, rollout progress, new predictions."""
        hub = self.live.hub
        sub = hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        yield await asyncio.wait_for(sub[1].get(), timeout=PING_S)
                    except asyncio.TimeoutError:
                        yield ": ping\n\n"
            finally:
                hub.unsubscribe(sub)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # -- login and actions ------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """The login form."""
        return self.page(
            request,
            "login.html",
            {
                "title": "Log in",
                "page": "login",
                "next": request.query_params.get("next", "/"),
                "have_users": bool(self.users),
            },
        )

    def _csrf_ok(self, request: Request, form: Any) -> bool:  # noqa: ANN401 - FormData
        return self.sessions.csrf_ok(self._bound(request), str(form.get("csrf") or ""))

    async def login(self, request: Request) -> Response:
        """Check the password (scrypt, in a worker thread) and start a session."""
        form = await request.form()
        if not self._csrf_ok(request, form):
            return _refused("missing or wrong CSRF token: reload the login page and try again")
        user, password = str(form.get("user") or ""), str(form.get("password") or "")
        async with self._login_slots:  # each check takes 16 MiB: a flood cannot take more
            ok = await run_in_threadpool(self.users.verify, user, password)
        if not ok:
            self.audit.add(
                user=user or "-",
                action="login",
                target="-",
                result="wrong user or password",
                remote=_remote(request),
            )
            return self.page(
                request,
                "login.html",
                {
                    "title": "Log in",
                    "page": "login",
                    "next": str(form.get("next") or "/"),
                    "have_users": bool(self.users),
                    "message": "wrong user name or password",
                    "message_kind": "error",
                },
                status=401,
            )
        token = self.sessions.start(user)
        nxt = str(form.get("next") or "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        response = RedirectResponse(nxt, status_code=303)
        self._cookie(response, SESSION_COOKIE, token)
        return response

    async def logout(self, request: Request) -> Response:
        """End the session."""
        form = await request.form()
        if not self._csrf_ok(request, form):
            return _refused("missing or wrong CSRF token")
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def action(self, request: Request) -> Response:
        """Push / rollback / cancel: a logged-in operator, a valid CSRF token, an audit line."""
        form = await request.form()
        user = self._user(request)
        if user is None:
            return Response(
                "log in first: pushing, rolling back and cancelling need an operator account\n",
                status_code=401,
                media_type="text/plain",
            )
        if not self._csrf_ok(request, form):
            return _refused("missing or wrong CSRF token: reload the page and try again")
        action = request.path_params["action"]
        fields = {k: str(v) for k, v in form.items() if k != "csrf"}
        target = fields.get("target") or f"group:{fields.get('group', '')}"
        try:
            result = await run_in_threadpool(run_action, self.live.settings, action, fields)
            ok = True
        except (EdgefleetError, ValueError) as exc:
            result, ok = str(exc), False
        self.audit.add(
            user=user, action=action, target=target, result=result, remote=_remote(request)
        )
        kind = "" if ok else "error"
        return RedirectResponse(f"/rollouts?msg={quote(result)}&kind={kind}", status_code=303)


def _remote(request: Request) -> str:
    return request.client.host if request.client else ""


def _refused(text: str) -> Response:
    return Response(text + "\n", status_code=403, media_type="text/plain")
