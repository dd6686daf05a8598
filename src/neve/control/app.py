"""The control plane's ASGI application: REST API + SQL endpoint + ingress gateway.

``create_app(account)`` mounts the ``routes`` of every component module in
``neve.control.routes``, behind one authentication middleware that turns the request's
credentials into a ``RequestContext`` (``request.state.ctx``). Ingress traffic (the service
hosts and ``/svc/...`` paths) is dispatched to the gateway before any of that.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

import neve
from neve.control.routes._base import error_response, json_response
from neve.errors import AuthenticationError, NeveError

if TYPE_CHECKING:
    from neve.control.account import Account

API_PREFIX = "/api/v1"
COMPONENT_ROUTES = ["registry", "compute", "environments", "services", "sql", "security"]
_ROUTES_DIR = Path(__file__).parent / "routes"



def component_routes() -> tuple[list[BaseRoute], set[str]]:
    """Routes of every component module present, and the paths they declare public."""
    routes: list[BaseRoute] = []
    public: set[str] = set()
    for name in COMPONENT_ROUTES:
        if not (_ROUTES_DIR / f"{name}.py").exists():
            continue  # a component not built into this version
        module = importlib.import_module(f"neve.control.routes.{name}")
        routes.extend(module.routes)
        public |= set(getattr(module, "PUBLIC_PATHS", ()))
    return routes, public


async def health(request: Request) -> object:
    """Liveness of the control plane (no authentication)."""
    return json_response({"status": "ok", "version": neve.__version__, "pid": _pid()})


async def openapi(request: Request) -> object:
    """The OpenAPI document of the REST API."""
    return json_response(openapi_document(request.app.routes))


def openapi_document(routes: list[BaseRoute]) -> dict:
    """OpenAPI 3 from the routes: one operation per method, described by its docstring."""
    paths: dict[str, dict] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        doc = (route.endpoint.__doc__ or route.name or "").strip()
        summary = doc.splitlines()[0] if doc else route.name
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op = {
                "operationId": f"{route.name}_{method.lower()}",
                "summary": summary,
                "description": doc,
                "responses": {
                    "200": {"description": "success (JSON)"},
                    "4XX": {"description": 'error: {"code", "message", "type"}'},
                },
            }
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in route.param_convertors
            ]
            if params:
                op["parameters"] = params
            paths.setdefault(route.path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "neve control plane", "version": neve.__version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _pid() -> int:
    import os

    return os.getpid()


class AuthenticationMiddleware:
    """Sets ``scope["state"]["ctx"]`` from the Authorization header; 401 JSON when missing/bad."""

    def __init__(self, app: ASGIApp, account: Account, public_paths: set[str]) -> None:
        self.app = app
        self.account = account
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            ctx = await run_in_threadpool(self.account.security.authenticate_request, headers)
        except NeveError as err:
            if not isinstance(err, AuthenticationError) and err.http_status >= 500:
                raise
            await error_response(err)(scope, receive, send)
            return
        scope.setdefault("state", {})["ctx"] = ctx
        await self.app(scope, receive, send)


def create_app(account: Account) -> ASGIApp:
    routes, public = component_routes()
    base_routes: list[BaseRoute] = [
        Route(f"{API_PREFIX}/health", health, methods=["GET"], include_in_schema=False),
        Route(f"{API_PREFIX}/openapi.json", openapi, methods=["GET"], include_in_schema=False),
    ]
    app = Starlette(routes=base_routes + routes)
    app.state.account = account

    async def neve_error(request: Request, exc: Exception) -> object:
        assert isinstance(exc, NeveError)
        return error_response(exc)

    app.add_exception_handler(NeveError, neve_error)
    public |= {f"{API_PREFIX}/health", f"{API_PREFIX}/openapi.json"}
    authed = AuthenticationMiddleware(app, account, public)
    # the middleware needs app.state too (it is read through scope["app"])
    if (_ROUTES_DIR.parent.parent / "gateway" / "app.py").exists():
        from neve.gateway.app import IngressDispatch, build_gateway

        return IngressDispatch(authed, build_gateway(account))
    return authed
