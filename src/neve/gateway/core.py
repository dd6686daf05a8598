"""The gateway's base: wiring, authentication and cached look-ups, the checks a request passes before any routing, and the answers made here (errors, OpenAPI) (``Gateway``'s first layer; the request flow is in ``app``)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers

from neve.context import RequestContext
from neve.dataplane.router import OVERLOADED, Routed, Router
from neve.dataplane.targets import TOUCH_INTERVAL_SECS, IngressTarget
from neve.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NeveError,
    ObjectNotFoundError,
    PayloadTooLargeError,
)
from neve.gateway.access import IngressAccess, check_scope
from neve.gateway.cache import TtlCache
from neve.gateway.limits import GatewayLimits
from neve.gateway.openapi import ingress_openapi
from neve.identifiers import qualify

if TYPE_CHECKING:
    from neve.config import Settings

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("neve.gateway")

REQUESTS = Counter(
    "neve_gateway_requests_total", "Ingress requests answered", ["service", "status"]
)
LATENCY = Histogram("neve_gateway_request_seconds", "Ingress request latency", ["service"])
SHED = Counter(
    "neve_gateway_shed_total",
    "Requests refused before their body was read: every instance's queue was full",
    ["service"],
)

PATH_PREFIX = "/svc"
# Routes of the inference server that are not for outside callers.
INTERNAL_ROUTES = frozenset(
    {"metrics", "ready", "readyz", "health", "healthz", "livez", "admin", "debug", "_internal"}
)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded to an instance: credentials, the caller's routing headers, identity claims.
NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"cookie",
    b"content-length",
    b"x-neve-role",
    b"x-neve-database",
    b"x-neve-schema",
    b"x-neve-context",
    b"x-neve-user",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
# The headers authentication reads: the cache key of an authenticated context.
AUTH_HEADERS = (
    "authorization",
    "x-neve-role",
    "x-neve-database",
    "x-neve-schema",
    "x-neve-context",
)
_SEGMENT_OK = re.compile(r'^[A-Za-z0-9_$."\- ]+$')


class HttpError(NeveError):
    """A rejection with its own HTTP status (413, 408, 431, 405, 504...)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = status
        self.headers = headers or {}


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _forget_failed_refresh(cache: TtlCache, key: str) -> Callable[[asyncio.Future[Any]], None]:
    """A background refresh that failed (the token was revoked elsewhere, the service is gone)
    drops the stale answer, so the next request asks and gets the error itself."""

    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            cache.discard(key)

    return done


def _unquoted(qualified: str) -> str:
    return qualified.replace('"', "")


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    # No "connection: close": the server reads and discards the rest of the body (bounded by
    # GuardedHttpToolsProtocol) so that the client, still sending, can read this answer.
    return PayloadTooLargeError(
        f"request body of {size} bytes exceeds the limit of {limit} bytes; send smaller batches"
    )


def _check_route(route: str, scope: Scope) -> str:
    """Reject dot segments and encoded separators in the method route (no path traversal)."""
    raw = (scope.get("raw_path") or b"").lower()
    segments = route.split("/")
    if (
        any(seg in {".", ".."} for seg in segments)
        or "\\" in route
        or "\x00" in route
        or b"%2e%2e" in raw
        or b"%2f" in raw
        or b"%5c" in raw
    ):
        raise InvalidArgumentError(
            f"invalid ingress path {route[:200]!r}: no '.', '..' or encoded separators"
        )
    return route.rstrip("/") or "/"


class GatewayCore:
    """The ingress ASGI application (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        access: IngressAccess,
        limits: GatewayLimits | None = None,
    ) -> None:
        """``access``: ``LocalAccess`` in the control plane, ``ControlPlaneAccess`` in a proxy."""
        self.settings = settings
        self.access = access
        self.limits = limits or GatewayLimits.from_settings(settings)
        self.router = Router(
            request_timeout_s=self.limits.request_timeout_secs,
            connect_timeout_s=self.limits.connect_timeout_secs,
        )
        self.balancer = self.router.balancer
        self._wakes: dict[int, asyncio.Future[IngressTarget]] = {}
        self._touched: dict[int, float] = {}
        self._inflight = 0
        # who a credential is, and which service (authorized) a caller reaches: see cache.py
        self._auth_cache = TtlCache(ttl=self.limits.auth_cache_secs)
        self._target_cache = TtlCache(ttl=self.limits.auth_cache_secs)
        self._lookups: dict[tuple[int, str], asyncio.Future[Any]] = {}  # look-ups in flight
        self.domain = settings.ingress.domain.lower().strip(".")
        # as ServiceManager names hosts: the account name as one DNS label
        label = re.sub(r"[^a-z0-9-]", "-", settings.account_name.lower()).strip("-")
        self.account_suffix = "-" + (label or "account")

    def invalidate(self) -> None:
        """Forget every cached security answer (a proxy is told a revocation happened)."""
        self._auth_cache.clear()
        self._target_cache.clear()

    async def aclose(self) -> None:
        await self.router.aclose()

    def is_ingress_host(self, host: str) -> bool:
        """True for ``<random>-<account>.<ingress_domain>`` (port ignored)."""
        name = _host_name(host)
        if not self.domain or not name.endswith("." + self.domain):
            return False
        label = name[: -len(self.domain) - 1]
        return (
            "." not in label
            and label.endswith(self.account_suffix)
            and len(label) > len(self.account_suffix)
        )

    def handles(self, scope: Scope) -> bool:
        """Whether a request belongs to the ingress (for ``IngressDispatch``)."""
        if scope["type"] != "http":
            return False
        path = scope.get("path", "")
        if path == PATH_PREFIX or path.startswith(PATH_PREFIX + "/"):
            return True
        return self.is_ingress_host(Headers(scope=scope).get("host", ""))

    async def _authenticate(self, headers: Headers) -> RequestContext:
        """``SecurityManager.authenticate`` with a short cache (hit: no thread, no catalog)."""
        key = TtlCache.key(*(headers.get(h) for h in AUTH_HEADERS))
        plain = {h: v for h in AUTH_HEADERS if (v := headers.get(h)) is not None}

        def fetch() -> tuple[RequestContext, float]:
            ctx, expires = self.access.authenticate(plain)
            return ctx, (expires - datetime.now(UTC)).total_seconds()

        return await self._cached(self._auth_cache, key, fetch)

    async def _target(
        self, ctx: RequestContext, host: str | None, name: str | None, key: str
    ) -> IngressTarget:
        def fetch() -> tuple[IngressTarget, float | None]:
            return self.access.authorized_target(ctx, host, name), None

        target = await self._cached(self._target_cache, key, fetch)
        # a token scoped to services never reaches another through an answer cached for an
        # unscoped credential (whatever key the caller chose)
        check_scope(ctx, target.service_id, target.qualified_name)
        return target

    async def _cached(
        self, cache: TtlCache, key: str, fetch: Callable[[], tuple[Any, float | None]]
    ) -> Any:
        """A cached look-up: one look-up in flight per key however many requests miss at once
        (they share its answer or error), and a stale answer served while one refresh runs in
        the background, so no request waits on the control plane once per ``ttl``.
        ``fetch()`` (run in a thread) gives the answer and its own lifetime (None: the cache's).
        """
        generation = self.access.generation  # read first: a change during the look-up voids it
        found = cache.lookup(key, generation)
        if found is not None:
            value, fresh = found
            if not fresh and (id(cache), key) not in self._lookups:
                refresh = self._look_up(cache, key, fetch, generation)
                refresh.add_done_callback(_forget_failed_refresh(cache, key))
            return value
        return await asyncio.shield(self._look_up(cache, key, fetch, generation))

    def _look_up(
        self,
        cache: TtlCache,
        key: str,
        fetch: Callable[[], tuple[Any, float | None]],
        generation: Hashable,
    ) -> asyncio.Future[Any]:
        flight = (id(cache), key)
        pending = self._lookups.get(flight)
        if pending is None:

            async def run() -> Any:
                value, ttl = await anyio.to_thread.run_sync(fetch)
                cache.put(key, value, generation, ttl=ttl)
                return value

            pending = asyncio.ensure_future(run())
            self._lookups[flight] = pending
            pending.add_done_callback(lambda _f: self._lookups.pop(flight, None))
        return pending

    # -- checks before any routing ----------------------------------------------------------------
    def _check_headers(self, scope: Scope) -> None:
        raw = scope.get("headers") or []
        size = sum(len(k) + len(v) + 4 for k, v in raw)
        if len(raw) > self.limits.max_header_count or size > self.limits.max_header_bytes:
            raise HttpError(
                431,
                "HEADERS_TOO_LARGE",
                f"request headers are too large ({len(raw)} fields, {size} bytes; at most "
                f"{self.limits.max_header_count} fields and {self.limits.max_header_bytes} bytes)",
            )

    @staticmethod
    def _route_path(scope: Scope) -> str:
        path = scope.get("path", "") or "/"
        root = scope.get("root_path", "") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return path

    def _split_service_path(self, scope: Scope) -> tuple[str, str]:
        """``/svc/<service>/<route>`` -> (service, /route); bad names are 400, never routed."""
        path = self._route_path(scope)
        root = scope.get("root_path", "") or ""
        if not root.endswith(PATH_PREFIX):
            if not path.startswith(PATH_PREFIX + "/"):
                raise ObjectNotFoundError(
                    f"no ingress at {path!r}: use /svc/<service>/<method> or the service's "
                    "ingress host"
                )
            path = path[len(PATH_PREFIX) :]
        service, _, rest = path.lstrip("/").partition("/")
        raw_path = scope.get("raw_path") or b""
        raw_service = raw_path.split(b"/svc/", 1)[-1].split(b"/", 1)[0].lower()
        if (
            not service
            or not _SEGMENT_OK.match(service)
            or ".." in service
            or service.startswith(".")
            or service.endswith(".")
            or b"%2f" in raw_service
            or b"%5c" in raw_service
            or b"%00" in raw_service
        ):
            raise InvalidArgumentError(
                f"invalid service name {service[:200]!r} in the ingress path: use "
                "db.schema.name or a bare service name"
            )
        try:
            qualify(service, database="_", schema="_", kind="service")  # syntax only
        except NeveError as exc:
            raise InvalidArgumentError(f"invalid service name in the ingress path: {exc}") from None
        return service, "/" + rest

    @staticmethod
    def _check_method_route(route: str, method: str, target: IngressTarget) -> None:
        if method not in {"POST", "GET"}:
            raise HttpError(
                405, "METHOD_NOT_ALLOWED", f"HTTP {method} is not allowed; use POST (or GET)"
            )
        first = route.strip("/").split("/", 1)[0].lower()
        if first == "v2":
            return  # Open Inference Protocol routes
        name = first.replace("-", "_")
        if target.methods is not None:
            if name not in target.methods:
                raise ObjectNotFoundError(
                    f"service {target.qualified_name} has no method {first!r}; methods: "
                    f"{', '.join(target.methods) or '(none)'}"
                )
        elif not first or name in INTERNAL_ROUTES:
            raise ObjectNotFoundError(
                f"service {target.qualified_name} has no ingress route {route!r}"
            )

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes:
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HttpError(
                    400, "BAD_REQUEST", "invalid Content-Length", {"connection": "close"}
                )
            if int(declared) > limit:
                raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        total = 0
        deadline = asyncio.get_running_loop().time() + self.limits.body_timeout_secs
        try:
            # one deadline for the whole body (no task per message, unlike wait_for)
            async with asyncio.timeout_at(deadline):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone()
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > limit:
                        raise _too_large(total, limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise HttpError(
                408,
                "REQUEST_TIMEOUT",
                f"request body not received within {self.limits.body_timeout_secs:g} s",
                {"connection": "close"},
            ) from None

    @staticmethod
    def _forward_headers(scope: Scope, ctx: RequestContext, request_id: str) -> list[tuple]:
        out = [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in NOT_FORWARDED]
        client = scope.get("client")
        out += [
            (b"x-request-id", request_id.encode()),
            (b"x-neve-user", ctx.user.encode()),
            (b"x-neve-role", ctx.role.encode()),
            (b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()),
        ]
        if client:
            out.append((b"x-forwarded-for", str(client[0]).encode()))
        return out

    @staticmethod
    async def _relay(send: Send, routed: Routed, request_id: str, retry_after_secs: int) -> None:
        headers = [
            (k, v)
            for k, v in routed.headers
            if k not in HOP_BY_HOP and k not in {b"x-request-id", b"server", b"content-length"}
        ]
        headers.append((b"content-length", str(len(routed.body)).encode()))
        headers.append((b"x-request-id", request_id.encode()))
        if routed.status in OVERLOADED and not any(k == b"retry-after" for k, _ in headers):
            # every refusal tells the caller when to come back, whoever made it
            headers.append((b"retry-after", str(retry_after_secs).encode()))
        await send({"type": "http.response.start", "status": routed.status, "headers": headers})
        await send({"type": "http.response.body", "body": routed.body, "more_body": False})

    def _touch(self, service_id: int) -> None:
        # at most once a second per service: auto-suspend needs the minute, not the request
        now = time.monotonic()
        if now - self._touched.get(service_id, -TOUCH_INTERVAL_SECS) < TOUCH_INTERVAL_SECS:
            return
        self._touched[service_id] = now

        async def touch() -> None:
            try:
                await anyio.to_thread.run_sync(self.access.touch, service_id)
            except Exception:  # bookkeeping only; never fail a request over it
                log.exception("recording the last request time of service #%s failed", service_id)

        asyncio.get_running_loop().create_task(touch())

    # -- answers made here ------------------------------------------------------------------------
    async def _send_openapi(
        self,
        send: Send,
        ctx: RequestContext,
        target: IngressTarget,
        scope: Scope,
        headers: Headers,
        request_id: str,
    ) -> int:
        signatures = await anyio.to_thread.run_sync(self.access.signatures, ctx, target)
        host = headers.get("host", "localhost")
        scheme = scope.get("scheme", "http")
        if self.is_ingress_host(host):
            server = f"{scheme}://{host}"
        else:
            server = f"{scheme}://{host}{scope.get('root_path', '')}{PATH_PREFIX}/" + _unquoted(
                target.qualified_name
            )
            if (scope.get("root_path") or "").endswith(PATH_PREFIX):
                server = f"{scheme}://{host}{scope['root_path']}/" + _unquoted(
                    target.qualified_name
                )
        doc = ingress_openapi(target.qualified_name, signatures, server_url=server)
        await send_json(send, 200, doc, request_id)
        return 200

    async def _send_error(
        self, send: Send, err: NeveError, request_id: str, status: int | None = None
    ) -> int:
        status = status or err.http_status
        extra: dict[str, str] = dict(getattr(err, "headers", {}) or {})
        if isinstance(err, AuthenticationError):
            extra["www-authenticate"] = 'Bearer realm="neve"'
        if status in {429, 503}:
            extra.setdefault("retry-after", str(self.limits.retry_after_secs))
        try:
            await send_json(send, status, err.to_dict(), request_id, extra)
        except Exception:  # the response had already started; nothing more can be said
            pass
        return status


async def send_json(
    send: Send,
    status: int,
    payload: Any,
    request_id: str,
    extra_headers: dict[str, str] | None = None,
) -> None:
    body = orjson.dumps(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
