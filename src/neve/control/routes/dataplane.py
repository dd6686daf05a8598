"""The control plane's answers to the data plane: the route table and the proxies' look-ups.

For the account's ingress proxies only (they send the proxy secret, ``X-Neve-Proxy-Secret``)::

    GET  /api/v1/routes?version=N&wait=S&admin=URL   the route table once it differs from N
    POST /api/v1/routes/authenticate  {"headers": {...}}            -> {"ctx", "expires"}
    POST /api/v1/routes/authorize     {"ctx", "host", "name"}       -> {"target"}
    POST /api/v1/routes/wake          {"ctx", "service_id", "timeout_s"} -> {"target"}
    POST /api/v1/routes/touch         {"service_id"}                -> {}
    POST /api/v1/routes/signatures    {"ctx", "service_id"}         -> {method: signature}

For any signed-in user: ``GET /api/v1/ingress`` -> ``{"url"}``, where the proxies listen
(null when there are none), and ``POST /api/v1/routes/lookup {"service", "method",
"timeout_s"}`` -> ``{"label", "route", "instances", "ingress_url"}`` (USAGE on the service;
a suspended one is woken): where ``mv.run(..., service_name=)`` sends its rows. Rows never
come here: these are look-ups.
"""

from __future__ import annotations

import functools
import hmac
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from neve.context import RequestContext
from neve.control.routes._base import (
    Call,
    ControlPlane,
    body_fields,
    endpoint,
    error_response,
    json_response,
    parse_json,
    read_body,
)
from neve.dataplane.proxies import (
    SECRET_HEADER,
    ingress_grpc_address,
    ingress_url,
    node_proxies,
    proxy_secret,
)
from neve.dataplane.routes import ROUTES_PATH, ctx_from_dict, ctx_to_dict, target_to_dict
from neve.dataplane.targets import CatalogIngressTargets
from neve.errors import InvalidArgumentError, NeveError, PermissionDeniedError, check_fields

if TYPE_CHECKING:
    pass

#: Longest a long-poll may ask to wait.
MAX_WAIT_S = 60.0


def proxy_endpoint(fn: Callable[[ControlPlane, dict[str, Any], dict[str, Any]], Any]):
    """``fn(account, query, body)`` behind the proxy secret, run in a worker thread (or awaited
    when it is a coroutine function: one that waits without holding a thread)."""
    waits = inspect.iscoroutinefunction(fn)

    @functools.wraps(fn)
    async def handler(request: Request) -> Response:
        account = request.app.state.account
        expected = proxy_secret(account.settings.home)
        given = request.headers.get(SECRET_HEADER, "")
        if not expected or not hmac.compare_digest(given, expected):
            return error_response(
                PermissionDeniedError("the route table answers only to the account's proxies")
            )
        try:
            raw = await read_body(request)
            body = parse_json(raw) if raw else {}
            if not isinstance(body, dict):
                raise InvalidArgumentError("request body must be a JSON object")
            query = dict(request.query_params)
            if waits:
                result = await fn(account, query, body)
            else:
                result = await run_in_threadpool(fn, account, query, body)
        except NeveError as err:
            return error_response(err)
        return json_response(result)

    return handler


def _number(value: Any, what: str, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be a number") from None


def _ctx(body: dict[str, Any]) -> RequestContext:
    try:
        return ctx_from_dict(body["ctx"])
    except (KeyError, TypeError):
        raise InvalidArgumentError("ctx must be {user, role, database, schema}") from None


@proxy_endpoint
async def route_table(account: ControlPlane, query: dict[str, Any], body: dict[str, Any]) -> dict:
    version = int(_number(query.get("version"), "version", 0))
    wait = min(MAX_WAIT_S, max(0.0, _number(query.get("wait"), "wait", 0)))
    # the first one is built now, reading the catalog
    pub = await run_in_threadpool(lambda: account.route_publisher)
    # a long-poll per proxy: awaited on the event loop, not a worker thread each
    return await pub.wait_async(version, wait, admin_url=query.get("admin"))


@proxy_endpoint
def authenticate(account: ControlPlane, query: dict[str, Any], body: dict[str, Any]) -> dict:
    check_fields(body, {"headers"}, what="authenticate")
    headers = {str(k).lower(): str(v) for k, v in (body.get("headers") or {}).items()}
    ctx, expires = account.ingress_access.authenticate(headers)
    return {"ctx": ctx_to_dict(ctx), "expires": expires.isoformat()}


@proxy_endpoint
def authorize(account: ControlPlane, query: dict[str, Any], body: dict[str, Any]) -> dict:
    check_fields(body, {"ctx", "host", "name"}, what="authorize")
    target = account.ingress_access.authorized_target(
        _ctx(body), body.get("host"), body.get("name")
    )
    return {"target": target_to_dict(target)}


@proxy_endpoint
def wake(account: ControlPlane, query: dict[str, Any], body: dict[str, Any]) -> dict:
    check_fields(body, {"ctx", "service_id", "timeout_s"}, what="wake")
    timeout = min(600.0, max(0.0, _number(body.get("timeout_s"), "timeout_s", 120.0)))
    target = account.ingress_access.ensure_running(_ctx(body), int(body["service_id"]), timeout)
    return {"target": target_to_dict(target)}


@proxy_endpoint
def touch(account: ControlPlane, query: dict[str, Any], body: dict[str, Any]) -> dict:
    check_fields(body, {"service_id"}, what="touch")
    account.ingress_access.touch(int(body["service_id"]))
    return {}


@proxy_endpoint
def signatures(account: ControlPlane, query: dict[str, Any], body: dict[str, Any]) -> dict:
    check_fields(body, {"ctx", "service_id"}, what="signatures")
    return CatalogIngressTargets(account.catalog).service_methods(
        _ctx(body), int(body["service_id"])
    )


@endpoint
def ingress(call: Call) -> dict:
    home = call.account.settings.home
    nodes = [
        {k: r.get(k) for k in ("pool", "node", "url", "grpc_address")} for r in node_proxies(home)
    ]
    return {"url": ingress_url(home), "grpc_address": ingress_grpc_address(home), "nodes": nodes}


@endpoint
def lookup(call: Call) -> dict:
    """Where ``mv.run(..., service_name=)`` sends its rows (USAGE on the service)."""
    body = body_fields(call, {"service", "method", "timeout_s"}, what="lookup")
    if not isinstance(body.get("service"), str) or not isinstance(body.get("method"), str):
        raise InvalidArgumentError("lookup: service and method must be strings")
    timeout = min(600.0, max(1.0, _number(body.get("timeout_s"), "timeout_s", 120.0)))
    found = call.account.services.route(
        call.ctx, body["service"], body["method"], timeout_s=timeout
    )
    proxies = ingress_url(call.account.settings.home) if found.pop("ingress") else None
    found["ingress_url"] = f"{proxies}/svc/{found['label']}" if proxies else None
    return found


PUBLIC_PATHS = {
    ROUTES_PATH,
    ROUTES_PATH + "/authenticate",
    ROUTES_PATH + "/authorize",
    ROUTES_PATH + "/wake",
    ROUTES_PATH + "/touch",
    ROUTES_PATH + "/signatures",
}

routes = [
    Route(ROUTES_PATH, route_table, methods=["GET"]),
    Route(ROUTES_PATH + "/authenticate", authenticate, methods=["POST"]),
    Route(ROUTES_PATH + "/authorize", authorize, methods=["POST"]),
    Route(ROUTES_PATH + "/wake", wake, methods=["POST"]),
    Route(ROUTES_PATH + "/touch", touch, methods=["POST"]),
    Route(ROUTES_PATH + "/signatures", signatures, methods=["POST"]),
    Route("/api/v1/ingress", ingress, methods=["GET"]),
    Route(ROUTES_PATH + "/lookup", lookup, methods=["POST"]),
]
