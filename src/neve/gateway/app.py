"""The ingress gateway: authenticated HTTP access to a service's model methods.

Two ways to address a service:

- host form: ``Host: <random>-<account>.<ingress_domain>``; the path is the method route
  (``POST /encode``), the service is the one whose ``ingress_host`` is that host;
- path form (local use): ``/svc/<service>/<method route>`` where ``<service>`` is
  ``db.schema.name`` or a bare name resolved in the caller's current database and schema
  (``X-Neve-Database`` / ``X-Neve-Schema``).

For every request, in this order (a request rejected at any step never reaches an instance):
limits on headers (431) -> service name syntax and path traversal (400) -> authentication (401)
-> the service and USAGE on it (404 / 403) -> method route (404) -> body size and read deadline
(413 / 408) -> wake a suspended service, bounded (503) -> forward to the ready instance with the
fewest outstanding requests through the data plane's ``Router``, retrying another instance
when one fails before answering, with the queue budget left (``ingress_queue_timeout_secs``)
passed on -> the answer back (every 429/503 with Retry-After). Every answer carries ``X-Request-Id``,
and one log line per request (logger ``neve.gateway``) names it with the user, role, service,
status, instance and latency. Who a token is and which service a caller may reach are cached
for ``ingress_auth_cache_secs`` (1 s); a change made through the SecurityManager (a revoked
token or grant) empties the cache at once.

Where it runs: in every ingress proxy process (``neve.dataplane.proxy``:
``Gateway(settings=..., access=ControlPlaneAccess(...))``) and, for URLs that name the control
plane, in the daemon itself (one server carries both)::

    gateway = Gateway(settings=settings, access=LocalAccess(catalog, security, services))
    asgi_app = IngressDispatch(control_app, gateway)   # routes ingress hosts and /svc/ here
    uvicorn.Config(asgi_app, **uvicorn_options(settings))  # neve.gateway.limits
    ...on shutdown: await gateway.aclose()

``Gateway`` is layered: ``core.GatewayCore`` (wiring, authentication and look-ups, checks before
routing, answers made here) <- ``Gateway`` (the request flow: wake-up, forwarding).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers

from neve.context import RequestContext
from neve.dataplane.balancer import Address
from neve.dataplane.targets import IngressTarget
from neve.errors import (
    NeveError,
    OverloadedError,
    ServiceUnavailableError,
)
from neve.gateway.cache import TtlCache
from neve.gateway.core import (
    LATENCY,
    REQUESTS,
    SHED,
    ClientGone,
    GatewayCore,
    HttpError,
    Receive,
    Scope,
    Send,
    _check_route,
    _host_name,
    log,
)
from neve.security.auth import request_id_from


class Gateway(GatewayCore):
    """The request flow: ASGI entry, authentication, wake-up of a suspended service, forwarding through the router."""

    # -- ASGI -------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = request_id_from(headers)
        info: dict[str, Any] = {"service": "-", "user": "-", "role": "-", "instance": "-"}
        self._inflight += 1
        try:
            if self._inflight > self.limits.max_inflight:
                # refused before reading anything more; the answer says when to come back
                raise ServiceUnavailableError(
                    f"the ingress is busy ({self.limits.max_inflight} requests in flight); "
                    "retry later",
                    code="INGRESS_BUSY",
                )
            status = await self._handle(scope, receive, send, headers, request_id, info)
        except ClientGone:
            status = 499
        except NeveError as err:
            status = await self._send_error(send, err, request_id)
        except Exception as exc:  # never leak a traceback to the caller; log it with the id
            log.exception("request_id=%s gateway failure", request_id)
            status = await self._send_error(
                send, NeveError(f"internal gateway error ({type(exc).__name__})"), request_id, 500
            )
        finally:
            self._inflight -= 1
        elapsed = time.perf_counter() - started
        REQUESTS.labels(info["service"], str(status)).inc()
        LATENCY.labels(info["service"]).observe(elapsed)
        log.info(
            "request_id=%s user=%s role=%s service=%s %s %s status=%s instance=%s ms=%.1f",
            request_id,
            info["user"],
            info["role"],
            info["service"],
            scope.get("method"),
            scope.get("path"),
            status,
            info["instance"],
            elapsed * 1000,
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        request_id: str,
        info: dict[str, Any],
    ) -> int:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self._check_headers(scope)
        host = headers.get("host", "")
        if self.is_ingress_host(host):
            by_host: str | None = _host_name(host)
            service_name = None
            route = self._route_path(scope)
        else:
            by_host = None
            service_name, route = self._split_service_path(scope)
        route = _check_route(route, scope)

        ctx = await self._authenticate(headers)
        ctx = ctx.with_(request_id=request_id)
        info.update(user=ctx.user, role=ctx.role)
        # the scope is part of the key: a token scoped to services must never reuse a target
        # an unscoped credential of the same user and role was allowed to reach
        target_key = TtlCache.key(
            ctx.user, ctx.role, ctx.database, ctx.schema, by_host, service_name, ctx.service_scope
        )
        target = await self._target(ctx, by_host, service_name, target_key)
        info["service"] = target.qualified_name

        method = scope["method"]
        if route in {"/openapi.json", "/openapi"}:
            if method != "GET":
                raise HttpError(405, "METHOD_NOT_ALLOWED", "use GET for the OpenAPI document")
            return await self._send_openapi(send, ctx, target, scope, headers, request_id)
        self._check_method_route(route, method, target)

        if target.ready:
            # Every instance refused its last request for a full queue: refuse this one before
            # reading its body (uvicorn drains it; the connection stays open), so that under
            # overload the CPU goes to the requests being served, not to moving refused bodies.
            seconds = self.router.shed_retry_after(target.instances, loop.time())
            if seconds is not None:
                SHED.labels(target.qualified_name).inc()
                err = OverloadedError(
                    f"service {target.qualified_name}: every instance's queue is full; retry "
                    f"in {seconds} s"
                )
                err.headers = {"retry-after": str(seconds)}  # type: ignore[attr-defined]
                raise err
        body = await self._read_body(receive, headers)
        if not target.ready:
            self._target_cache.discard(target_key)  # its state is changing: do not reuse it
            target = await self._wake(ctx, target)
            arrived = loop.time()  # waking has its own bound (ingress_wake_timeout_secs)
        # The whole wait of a request (look-ups, its body, and the instance's queue) is one
        # budget: what is left of it goes to the instance.
        queue_deadline = arrived + self.limits.queue_timeout_secs
        try:
            status = await self._forward(
                scope, send, ctx, target, route, body, request_id, info, queue_deadline
            )
        except NeveError:
            self._target_cache.discard(target_key)  # look the service up afresh next time
            raise
        self._touch(target.service_id)
        return status

    # -- waking, forwarding -----------------------------------------------------------------------
    async def _wake(self, ctx: RequestContext, target: IngressTarget) -> IngressTarget:
        """Resume the service (one resume per service, shared by waiting requests), bounded."""
        sid = target.service_id
        pending = self._wakes.get(sid)
        if pending is None:
            timeout = self.limits.wake_timeout_secs
            pending = asyncio.ensure_future(
                anyio.to_thread.run_sync(self.access.ensure_running, ctx, sid, timeout)
            )
            self._wakes[sid] = pending
            pending.add_done_callback(lambda _f: self._wakes.pop(sid, None))
        try:
            woken = await asyncio.wait_for(
                asyncio.shield(pending), self.limits.wake_timeout_secs + 1
            )
        except TimeoutError:
            raise ServiceUnavailableError(
                f"service {target.qualified_name} did not become ready within "
                f"{self.limits.wake_timeout_secs:g} s"
            ) from None
        if not woken.instances:
            raise ServiceUnavailableError(f"service {target.qualified_name} has no ready instance")
        return woken

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        ctx: RequestContext,
        target: IngressTarget,
        route: str,
        body: bytes,
        request_id: str,
        info: dict[str, Any],
        queue_deadline: float,
    ) -> int:
        async def endpoints(refresh: bool, remaining: float) -> list[Address]:
            # every known instance failed: the set may have changed (restart, scale)
            return list((await self._wake(ctx, target)).instances)

        try:
            routed = await self.router.open(
                route,
                label=target.qualified_name,
                endpoints=endpoints,
                instances=target.instances,
                content=body,
                headers=self._forward_headers(scope, ctx, request_id),
                method=scope["method"],
                query=scope.get("query_string", b"").decode("latin-1"),
                queue_deadline=queue_deadline,
            )
        except TimeoutError:
            raise HttpError(
                504,
                "GATEWAY_TIMEOUT",
                f"service {target.qualified_name} did not answer within "
                f"{self.limits.request_timeout_secs:g} s",
            ) from None
        info["instance"] = f"{routed.address[0]}:{routed.address[1]}"
        await self._relay(send, routed, request_id, self.limits.retry_after_secs)
        return routed.status


class IngressDispatch:
    """ASGI wrapper: ingress traffic to the gateway, everything else to the control plane app."""

    def __init__(self, app: Callable[..., Awaitable[None]], gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gateway.handles(scope):
            await self.gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)
