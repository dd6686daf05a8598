"""The console's routes, and the dispatch that serves them at ``<control url>/console``.

``ConsoleDispatch`` sits in the control plane app in front of the API's token authentication:
``/console`` paths go to the console, which authenticates with its own session cookie
(``neve.console.auth``) and then calls the same managers, with the same ``RequestContext``
checks, as the REST API and SQL do. Pages are server-rendered HTML; htmx and uPlot (vendored
under ``static/vendor`` with their licences) enhance them, nothing is loaded from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl
from urllib.parse import quote as url_quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from neve.console import auth, render
from neve.console.metrics_history import MetricsHistory
from neve.console.views import Viewer
from neve.console.views import metrics as metrics_views
from neve.console.views import models as model_views
from neve.console.views import overview as overview_views
from neve.console.views import service as service_views
from neve.console.views import sql as sql_views
from neve.errors import NeveError

if TYPE_CHECKING:
    from neve.control.account import Account

PREFIX = render.PREFIX
STATIC_DIR = render.TEMPLATES.parent / "static"
SERVICE = PREFIX + "/services/{db}/{schema}/{name}"
#: Pages may load scripts and styles from this origin only; no framing by other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 1 << 20  # a SQL worksheet's script fits; more is refused
View = Callable[[Viewer], Response]


def _secure(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":  # after signing in, come back to a page, not to a form's POST
        target = PREFIX
    return RedirectResponse(f"{PREFIX}/login?next={url_quote(target, safe='')}", status_code=303)


def _same_origin(request: Request) -> bool:
    """A POST whose Origin header (when the browser sends one) is this console's own."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


async def _read_form(request: Request) -> dict[str, str]:
    """An url-encoded form body (what the console's forms and htmx send), at most
    ``MAX_FORM_BYTES``; a larger or other body reads as empty (and fails the CSRF check)."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPE):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def view(fn: View, *, api: bool = False) -> Callable[[Request], object]:
    """A console endpoint: the session cookie must name a valid token (else the sign-in page, or
    401 JSON for ``api`` endpoints); a POST must carry the session's CSRF token. ``fn`` runs
    in a worker thread (managers block on the catalog and on processes)."""

    async def handler(request: Request) -> Response:
        account: Account = request.app.state.account
        token = auth.session_token(request)
        try:
            if token is None:
                raise NeveError("not signed in")
            ctx = await run_in_threadpool(auth.context_for, account, token)
        except NeveError as err:
            if api:
                return JSONResponse({"code": "UNAUTHENTICATED", "message": err.message}, 401)
            response = _to_login(request)
            if token is not None:
                auth.clear_cookie(response)
            return response
        form: dict[str, str] = {}
        csrf = auth.csrf_token(token)
        viewer = Viewer(request, account, ctx, csrf)
        if request.method == "POST":
            form = await _read_form(request)
            if not _same_origin(request) or not auth.csrf_ok(request, token, form.get("csrf")):
                return _secure(
                    viewer.page(
                        "error.html",
                        http_status=403,
                        title="Refused",
                        message="the form is stale or came from another site (CSRF check); "
                        "reload the page and try again",
                    )
                )
            viewer.form = form
        try:
            response = await run_in_threadpool(fn, viewer)
        except NeveError as err:
            response = viewer.page(
                "error.html", http_status=err.http_status, title="Error", message=err.message
            )
        return _secure(response)

    return handler


# -- sign in / out ----------------------------------------------------------------------------------


def _next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith(PREFIX) and not value.startswith("//"):
        return value
    return PREFIX


async def login_page(request: Request) -> Response:
    account: Account = request.app.state.account
    next_url = _next(request.query_params.get("next"))
    if request.method == "GET":
        return _secure(render.page("login.html", next=next_url, error=None, user=""))
    form = await _read_form(request)
    next_url = _next(form.get("next"))
    if not _same_origin(request):
        return _secure(
            render.page(
                "login.html", 403, next=next_url, error="refused: cross-site sign-in", user=""
            )
        )
    try:
        token, _ = await run_in_threadpool(
            lambda: auth.sign_in(
                account,
                user=form.get("user", "").strip(),
                password=form.get("password", ""),
                token=form.get("token", "").strip(),
                role=form.get("role", "").strip(),
            )
        )
    except NeveError as err:
        return _secure(
            render.page(
                "login.html",
                err.http_status,
                next=next_url,
                error=err.message,
                user=form.get("user", ""),
            )
        )
    response = RedirectResponse(next_url, status_code=303)
    auth.set_cookie(request, response, token)
    return _secure(response)


def _logout(viewer: Viewer) -> Response:
    token = auth.session_token(viewer.request)
    if token:
        auth.sign_out(viewer.account, token)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    auth.clear_cookie(response)
    return response


# -- the app ----------------------------------------------------------------------------------------


def console_routes() -> list[BaseRoute]:
    return [
        Route(PREFIX, view(overview_views.overview), methods=["GET"]),
        Route(PREFIX + "/", view(overview_views.overview), methods=["GET"]),
        Route(PREFIX + "/login", login_page, methods=["GET", "POST"]),
        Route(PREFIX + "/logout", view(_logout), methods=["POST"]),
        Route(SERVICE, view(service_views.service_page), methods=["GET"]),
        Route(SERVICE + "/action", view(service_views.service_action), methods=["POST"]),
        Route(SERVICE + "/logs", view(service_views.log_follow, api=True), methods=["GET"]),
        Route(SERVICE + "/metrics", view(metrics_views.metrics_page), methods=["GET"]),
        Route(
            SERVICE + "/metrics.json", view(metrics_views.metrics_data, api=True), methods=["GET"]
        ),
        Route(PREFIX + "/models", view(model_views.models_list), methods=["GET"]),
        Route(PREFIX + "/models/{db}/{schema}/{name}", view(model_views.model_page)),
        Route(PREFIX + "/builds/{job}", view(model_views.build_job), methods=["GET"]),
        Route(PREFIX + "/sql", view(sql_views.worksheet), methods=["GET", "POST"]),
        Mount(PREFIX + "/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return _secure(
        render.page(
            "error.html",
            status,
            title="Not found" if status == 404 else "Not allowed",
            message=f"{request.method} {request.url.path}: no such console page",
        )
    )


def console_app(account: Account, *, history: MetricsHistory | None = None) -> Starlette:
    app = Starlette(routes=console_routes(), exception_handlers={404: _not_found, 405: _not_found})
    app.state.account = account
    app.state.metrics_history = history or MetricsHistory.for_account(account)
    return app


class ConsoleDispatch:
    """Serves ``/console`` paths with the console app; passes every other request on."""

    def __init__(
        self, app: ASGIApp, account: Account, history: MetricsHistory | None = None
    ) -> None:
        self.app = app
        self.console = console_app(account, history=history)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == PREFIX or path.startswith(PREFIX + "/"):
            await self.console(scope, receive, send)
            return
        await self.app(scope, receive, send)
