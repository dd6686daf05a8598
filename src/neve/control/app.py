"""The control plane's ASGI application: REST API, SQL endpoint and ingress gateway on one port.

``create_app(account)`` is a Starlette app with, outermost first:

1. the ingress dispatch: requests for a service
   ingress host (``*-<account>.<ingress_domain>``) or a ``/svc/...`` path go to the gateway,
   which authenticates and authorizes them itself;
2. the authentication middleware: every other request except the public paths (health,
   OpenAPI document, login) must carry credentials; ``account.security.authenticate_request``
   turns them into the ``RequestContext`` in ``request.state.ctx`` (role, database and schema
   from ``X-Neve-Role`` / ``X-Neve-Database`` / ``X-Neve-Schema``), or the request gets a 401;
3. the ``routes`` of each component module in ``neve.control.routes``.

Every error answers JSON ``{"code", "message", "type"}``: a ``NeveError`` with its own status,
an unknown route 404, a wrong method 405, a bug 500 (logged with its traceback, never sent).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator
from starlette.types import ASGIApp, Receive, Scope, Send

import neve
from neve.console.app import ConsoleDispatch
from neve.console.metrics_history import MetricsHistory
from neve.control.routes import compute as compute_routes
from neve.control.routes import dataplane as dataplane_routes
from neve.control.routes import environments as environment_routes
from neve.control.routes import registry as registry_routes
from neve.control.routes import security as security_routes
from neve.control.routes import services as service_routes
from neve.control.routes import sql as sql_routes
from neve.control.routes._base import error_response, json_response
from neve.errors import AuthenticationError, NeveError
from neve.gateway.app import Gateway, IngressDispatch

if TYPE_CHECKING:
    from neve.control.account import Account

log = logging.getLogger("neve.control")

API_PREFIX = "/api/v1"
HEALTH_PATH = f"{API_PREFIX}/health"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
#: Component route modules, in mount order; each exports ``routes`` (and maybe ``PUBLIC_PATHS``).
COMPONENT_ROUTES = (
    registry_routes,
    compute_routes,
    environment_routes,
    service_routes,
    sql_routes,
    security_routes,
    dataplane_routes,
)


def component_routes() -> tuple[list[BaseRoute], set[str]]:
    """The routes of every component module, and the paths they declare public."""
    routes: list[BaseRoute] = []
    public: set[str] = set()
    for module in COMPONENT_ROUTES:
        routes.extend(module.routes)
        public |= set(getattr(module, "PUBLIC_PATHS", ()))
    return routes, public


# -- built-in endpoints -----------------------------------------------------------------------------


async def health(request: Request) -> Response:
    """Liveness of the control plane: status, version, pid (no authentication)."""
    state = request.app.state
    return json_response(
        {
            "status": "ok",
            "version": neve.__version__,
            "pid": os.getpid(),
            "daemon_id": state.daemon_id,
            "account": state.account.settings.account_name,
            "started_on": state.started_on,
            "uptime_s": round(time.monotonic() - state.started_monotonic, 3),
        }
    )


async def openapi(request: Request) -> Response:
    """The OpenAPI document of this REST API (no authentication)."""
    return json_response(request.app.state.schemas.get_schema(request.app.routes))


class ApiSchemaGenerator(SchemaGenerator):
    """OpenAPI from the routes' docstrings.

    A docstring with a YAML part after ``---`` supplies the operation as Starlette documents it;
    otherwise its first line is the summary and the rest the description. Path parameters come
    from the route's template; every operation may answer the JSON error body.
    """

    _PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")

    def parse_docstring(self, func_or_method: Callable[..., Any]) -> dict[str, Any]:
        if "---" not in (func_or_method.__doc__ or ""):
            return {}  # a plain docstring is prose, not YAML
        try:
            return super().parse_docstring(func_or_method)
        except Exception:  # a malformed YAML block must not break the whole document
            log.warning("bad OpenAPI YAML in the docstring of %s", func_or_method.__qualname__)
            return {}

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        schema = dict(self.base_schema)
        paths: dict[str, dict[str, Any]] = {}
        for endpoint in self.get_endpoints(routes):
            operation = dict(self.parse_docstring(endpoint.func))
            doc = inspect.getdoc(endpoint.func) or ""
            prose = doc.split("---")[0].strip()
            name = getattr(endpoint.func, "__name__", "endpoint")
            operation.setdefault("summary", prose.splitlines()[0] if prose else name)
            if prose:
                operation.setdefault("description", prose)
            operation.setdefault("operationId", f"{name}_{endpoint.http_method}")
            params = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in self._PARAM.findall(endpoint.path)
            ]
            if params:
                operation.setdefault("parameters", params)
            operation.setdefault(
                "responses",
                {
                    "200": {"description": "success (JSON)"},
                    "default": {
                        "description": "error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            )
            paths.setdefault(endpoint.path, {})[endpoint.http_method] = operation
        schema["paths"] = paths
        return schema


def _schema_generator() -> ApiSchemaGenerator:
    return ApiSchemaGenerator(
        {
            "openapi": "3.0.3",
            "info": {
                "title": "neve control plane",
                "version": neve.__version__,
                "description": (
                    "REST API of a neve account. Authenticate with `Authorization: Bearer "
                    "<token>` (POST /api/v1/login, a programmatic access token, or a key-pair "
                    "JWT); `X-Neve-Role`, `X-Neve-Database` and `X-Neve-Schema` set the "
                    "caller's role and current database and schema. Each ingress-enabled "
                    "service documents its own routes at /svc/<service>/openapi.json."
                ),
            },
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": {
                    "Error": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                        },
                        "required": ["code", "message"],
                    }
                },
            },
            "security": [{"bearer": []}],
        }
    )


# -- authentication ---------------------------------------------------------------------------------


class AuthenticationMiddleware:
    """Sets ``scope["state"]["ctx"]`` from the request's credentials; 401 JSON without them."""

    def __init__(self, app: ASGIApp, account: Account, public_paths: set[str]) -> None:
        self.app = app
        self.account = account
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            # token lookups hit the catalog: off the event loop
            ctx = await run_in_threadpool(self.account.security.authenticate_request, headers)
        except NeveError as err:  # 401, or 400 for a malformed X-Neve-Database etc.
            response = error_response(err)
            if isinstance(err, AuthenticationError):
                response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["ctx"] = ctx
        await self.app(scope, receive, send)


# -- errors -----------------------------------------------------------------------------------------

_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


async def _neve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NeveError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such API route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    response = json_response(
        {
            "code": _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}"),
            "message": message,
            "type": "NeveError",
        },
        status=exc.status_code,
    )
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    ctx = getattr(request.state, "ctx", None)
    request_id = getattr(ctx, "request_id", None) or "-"
    log.error(
        "request_id=%s %s %s failed", request_id, request.method, request.url.path, exc_info=exc
    )
    return json_response(
        {
            "code": "INTERNAL",
            "message": (
                f"internal error in the control plane ({type(exc).__name__}, request id "
                f"{request_id}); see its log"
            ),
            "type": "NeveError",
        },
        status=500,
    )


# -- the app ----------------------------------------------------------------------------------------


def create_app(
    account: Account, *, daemon_id: str | None = None, gateway: Gateway | None = None
) -> Starlette:
    """The control plane app for ``account`` (``daemon_id`` identifies the serving daemon;
    ``gateway``: its ingress, by default one over the account's ``ingress_access``)."""
    routes, public = component_routes()
    public |= {HEALTH_PATH, OPENAPI_PATH}
    builtin: list[BaseRoute] = [
        Route(HEALTH_PATH, health, methods=["GET"], include_in_schema=False),
        Route(OPENAPI_PATH, openapi, methods=["GET"], include_in_schema=False),
    ]
    middleware: list[Middleware] = []
    if gateway is None:
        gateway = Gateway(settings=account.settings, access=account.ingress_access)
    middleware.append(Middleware(IngressDispatch, gateway=gateway))
    # /console: its own sign-in; its metrics history samples running services while we serve
    history = MetricsHistory.for_account(account)
    middleware.append(Middleware(ConsoleDispatch, account=account, history=history))
    middleware.append(Middleware(AuthenticationMiddleware, account=account, public_paths=public))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        history.start_background()
        yield
        history.stop()
        await gateway.aclose()  # its pooled connections to service instances
        # Serving has ended: the proxies keep their answers while no control plane runs
        # (the daemon's own token, revoked next, is not pushed to them).
        account.close_route_publisher()

    app = Starlette(
        routes=builtin + routes,
        middleware=middleware,
        exception_handlers={
            NeveError: _neve_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.account = account
    app.state.daemon_id = daemon_id
    app.state.started_on = datetime.now(UTC).isoformat()
    app.state.started_monotonic = time.monotonic()
    app.state.schemas = _schema_generator()
    app.state.gateway = gateway
    return app
