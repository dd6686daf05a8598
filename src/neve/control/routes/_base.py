"""One mechanism for every REST endpoint: auth context in, JSON out, errors mapped.

Write an endpoint as a plain (blocking) function and wrap it::

    @endpoint
    def show_models(call: Call) -> list[dict]:
        return call.account.registry.show_models(call.ctx, call.path["db"], call.path["schema"])

    routes = [Route("/api/v1/models/{db}/{schema}", show_models, methods=["GET"])]

The wrapper runs the function in a worker thread (manager calls block on the catalog and on
processes), reads the JSON body, and turns a ``NeveError`` into ``{"code","message","type"}``
with the error's HTTP status. The authentication middleware puts the caller's
``RequestContext`` in ``request.state.ctx`` before any endpoint runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from neve.context import RequestContext
from neve.errors import InvalidArgumentError, NeveError, PayloadTooLargeError, check_fields
from neve.sql.managers import Managers

if TYPE_CHECKING:
    from neve.dataplane.publish import RoutePublisher
    from neve.gateway.access import IngressAccess
    from neve.sql.engine import SqlEngine


class ControlPlane(Managers, Protocol):
    """What the REST routes use: the account's components (what SQL uses of them, the whole
    engine, and the data plane's side), as the composition root
    (``neve.control.account.Account``) built them."""

    @property
    def sql(self) -> SqlEngine: ...
    @property
    def route_publisher(self) -> RoutePublisher: ...
    @property
    def ingress_access(self) -> IngressAccess: ...


@dataclass
class Call:
    request: Request
    account: ControlPlane
    ctx: RequestContext
    path: dict[str, Any]
    query: dict[str, str]
    body: Any  # parsed JSON (dict/list/None) unless the endpoint asked for raw bytes
    raw: bytes


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(
            data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=_default
        ),
        status_code=status,
        media_type="application/json",
    )


def _default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def error_response(err: NeveError) -> Response:
    return json_response(err.to_dict(), status=err.http_status)


def refusal_response(err: NeveError) -> Response:
    """The error answer to a request refused before its body was read: it closes the
    connection, since uvicorn would otherwise read (and drop) the rest of the body, and the
    refused client would send it all the same."""
    response = error_response(err)
    response.headers["connection"] = "close"
    return response


async def read_body(request: Request) -> bytes:
    """The request body, at most the account's ``max_request_body_bytes`` (413 beyond: a larger
    Content-Length before any byte is read, a longer chunked body as soon as it passes)."""
    limit = int(request.app.state.account.settings.control.max_request_body_bytes)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _body_too_large(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _body_too_large(request, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _body_too_large(request: Request, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{request.method} {request.url.path}: the request body is larger than the account's "
        f"limit of {limit} bytes; send it in parts (e.g. smaller request_rows) or have an "
        "administrator raise max_request_body_bytes in settings.toml"
    )


def parse_json(raw: bytes) -> Any:
    """A request body as JSON (what ``endpoint`` does unless asked for raw bytes)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(f"request body is not valid JSON: {exc}") from None


def endpoint(fn: Callable[[Call], Any] | None = None, *, raw_body: bool = False, status: int = 200):
    """Wrap a blocking ``fn(call) -> JSON-able | Response`` as a starlette endpoint."""

    def wrap(func: Callable[[Call], Any]):
        @functools.wraps(func)
        async def handler(request: Request) -> Response:
            try:
                raw = await read_body(request)
            except NeveError as err:
                return refusal_response(err)
            body: Any = None
            if raw and not raw_body:
                try:
                    body = parse_json(raw)
                except InvalidArgumentError as err:
                    return error_response(err)
            call = Call(
                request=request,
                account=request.app.state.account,
                ctx=request.state.ctx,
                path=dict(request.path_params),
                query=dict(request.query_params),
                body=body,
                raw=raw,
            )
            try:
                result = await run_in_threadpool(func, call)
            except NeveError as err:
                return error_response(err)
            if isinstance(result, Response):
                return result
            return json_response(result, status=status)

        return handler

    return wrap(fn) if fn is not None else wrap


def json_body(call: Call) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none)."""
    if call.body is None:
        return {}
    if not isinstance(call.body, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    return call.body


def body_fields(call: Call, allowed: set[str], *, what: str) -> dict[str, Any]:
    """The JSON object body, refusing fields ``what`` does not take."""
    body = call.body if call.body is not None else {}
    if not isinstance(body, dict):
        raise InvalidArgumentError(f"{what}: the request body must be a JSON object")
    check_fields(body, allowed, what=what)
    return body


def query_flag(call: Call, name: str) -> bool:
    """A true/false query parameter (``?if_exists=true``); absent is false."""
    return str(call.query.get(name, "")).lower() in ("1", "true", "yes")
