"""The ingress for the Open Inference Protocol over gRPC (HTTP/2), beside the HTTP ingress.

Each ingress proxy serves ``inference.GRPCInferenceService`` on the account's ingress gRPC
port (``ingress_grpc_port``; every proxy listens on it, ``SO_REUSEPORT``). A call names the
service in its model name: ``<service>`` (the default method, or ``parameters["method"]``) or
``<service>/<method>``, and carries its credential as ``authorization: Bearer <token>`` metadata
(plus the optional ``x-neve-role`` etc. of the HTTP ingress). The gateway's own checks apply
unchanged (authentication and its cache, USAGE on the service, waking a suspended service, the
queue budget); then the request's bytes go, with the model name rewritten to what the instance
serves, to a ready instance's gRPC port (least outstanding, another instance when one cannot
be reached). An instance's answer, its status and ``retry-after`` trailer come back as they are;
every RESOURCE_EXHAUSTED / UNAVAILABLE carries ``retry-after``.

An instance names its gRPC port in ``GET /ready`` (``grpc_port``); it is asked once per instance
and remembered until the instance cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import httpx
from starlette.datastructures import Headers

import neve
from neve.context import RequestContext
from neve.dataplane.balancer import Address, LeastOutstanding
from neve.dataplane.targets import IngressTarget
from neve.errors import NeveError, ObjectNotFoundError, ServiceUnavailableError
from neve.gateway.cache import TtlCache
from neve.server.config import TIMEOUT_HEADER
from neve.server.v2_grpc import (
    METHODS,
    RETRY_AFTER,
    RETRYABLE,
    SERVICE,
    error_details,
    grpc_status,
    method_path,
    pb,
)

if TYPE_CHECKING:
    from neve.gateway.app import Gateway

log = logging.getLogger("neve.gateway")

#: rpc -> the request field that names the model (the service, through the ingress).
_NAME_FIELD = {"ModelReady": "name", "ModelMetadata": "name", "ModelInfer": "model_name"}
_FORWARDED_METADATA = ("x-request-id",)


class Refused(Exception):
    """An instance's non-OK status, handed back to the caller as it is."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self.error = error


def split_model_name(name: str) -> tuple[str, str]:
    """``<service>[/<method>]`` -> (service, method or "")."""
    service, _, method = name.strip().partition("/")
    if not service:
        raise ObjectNotFoundError(
            "a gRPC call through the ingress names the service as its model name: "
            "<service> or <service>/<method> (db.schema.name or a bare service name)"
        )
    return service, method


class GrpcIngress:
    """One per proxy process: ``await start(host, port)``, ``await stop()``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.limits = gateway.limits
        self.balancer = LeastOutstanding()
        self._server: grpc.aio.Server | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._grpc_ports: dict[Address, int] = {}
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=False)

    async def start(self, host: str, port: int) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),  # every proxy of the account on one port
                ("grpc.max_receive_message_length", self.limits.max_body_bytes),
                ("grpc.max_send_message_length", -1),
            ],
            maximum_concurrent_rpcs=self.limits.max_inflight,
        )
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._handler(name)) for name in METHODS
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
        bound = server.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server = server
        return bound

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        await self._http.aclose()

    # -- one call ---------------------------------------------------------------------------------
    def _handler(
        self, rpc: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes | None]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
            started = time.perf_counter()
            info = {"service": "-", "status": "OK"}
            try:
                return await self._answer(rpc, raw, context, info)
            except Refused as refused:
                err = refused.error
                info["status"] = err.code().name
                trailer = [(k, v) for k, v in err.trailing_metadata() or () if k == RETRY_AFTER]
                if err.code() in RETRYABLE and not trailer:
                    trailer = [(RETRY_AFTER, str(self.limits.retry_after_secs))]
                context.set_trailing_metadata(tuple(trailer))
                await context.abort(err.code(), err.details() or "")
            except NeveError as exc:
                code = grpc_status(exc)
                info["status"] = code.name
                if code in RETRYABLE:
                    retry = getattr(exc, "retry_after_s", self.limits.retry_after_secs)
                    context.set_trailing_metadata(((RETRY_AFTER, str(retry)),))
                await context.abort(code, error_details(exc))
            finally:
                log.info(
                    "grpc %s service=%s status=%s ms=%.1f",
                    rpc,
                    info["service"],
                    info["status"],
                    (time.perf_counter() - started) * 1000,
                )
            return None  # not reached: abort raises

        return handle

    async def _answer(
        self, rpc: str, raw: bytes, context: grpc.aio.ServicerContext, info: dict[str, str]
    ) -> bytes:
        if rpc == "ServerLive":
            return pb.ServerLiveResponse(live=True).SerializeToString()
        if rpc == "ServerReady":
            return pb.ServerReadyResponse(ready=True).SerializeToString()
        if rpc == "ServerMetadata":
            return pb.ServerMetadataResponse(
                name="neve-ingress", version=neve.__version__
            ).SerializeToString()
        request_type, _ = METHODS[rpc]
        try:
            request = request_type.FromString(raw)
        except Exception:
            raise NeveError(f"{rpc}: the request is not a valid {request_type.__name__}") from None
        field = _NAME_FIELD[rpc]
        service_name, method = split_model_name(getattr(request, field))
        metadata = {
            str(k).lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)
        }
        gateway = self.gateway
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        ctx = await gateway._authenticate(Headers(headers=metadata))
        ctx = ctx.with_(request_id=metadata.get("x-request-id") or uuid.uuid4().hex)
        key = TtlCache.key(
            ctx.user, ctx.role, ctx.database, ctx.schema, None, service_name, ctx.service_scope
        )
        target = await gateway._target(ctx, None, service_name, key)
        info["service"] = target.qualified_name
        if method and target.methods is not None and method.lower() not in target.methods:
            raise ObjectNotFoundError(
                f"service {target.qualified_name} has no method {method!r}; methods: "
                f"{', '.join(target.methods) or '(none)'}"
            )
        if not target.ready:
            target = await gateway._wake(ctx, target)
            arrived = loop.time()
        setattr(request, field, method)
        answer = await self._forward(
            rpc,
            request.SerializeToString(),
            ctx,
            target,
            context,
            queue_deadline=arrived + self.limits.queue_timeout_secs,
        )
        gateway._touch(target.service_id)
        return answer

    async def _forward(
        self,
        rpc: str,
        body: bytes,
        ctx: RequestContext,
        target: IngressTarget,
        context: grpc.aio.ServicerContext,
        *,
        queue_deadline: float,
    ) -> bytes:
        loop = asyncio.get_running_loop()
        excluded: set[Address] = set()
        refreshed = False
        while True:
            address = self.balancer.choose(target.instances, excluded)
            if address is None:
                if refreshed:
                    raise ServiceUnavailableError(
                        f"service {target.qualified_name}: no instance could be reached over "
                        "gRPC; retry later"
                    )
                # every known instance failed: the set may have changed (restart, scale)
                woke_at = loop.time()
                target = await self.gateway._wake(ctx, target)
                # waking has its own bound (ingress_wake_timeout_secs): the queue budget
                # counts from when there are instances again, as it does for the first wake
                queue_deadline += loop.time() - woke_at
                excluded.clear()
                refreshed = True
                continue
            remaining = queue_deadline - loop.time()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    f"service {target.qualified_name}: the request waited its whole queue "
                    f"budget ({self.limits.queue_timeout_secs:g} s); retry later"
                )
            try:
                channel = await self._channel(address, target)
            except (httpx.HTTPError, OSError, ValueError):
                self._unreachable(address, excluded)
                continue
            call = channel.unary_unary(method_path(rpc))
            deadline = context.time_remaining()
            timeout = self.limits.request_timeout_secs
            if deadline is not None:
                timeout = min(timeout, deadline)
            metadata: list[tuple[str, str]] = [
                (TIMEOUT_HEADER, f"{remaining:.3f}"),
                ("x-request-id", ctx.request_id or ""),
            ]
            with self.balancer.track(address):
                try:
                    return await call(body, timeout=timeout, metadata=tuple(metadata))
                except grpc.aio.AioRpcError as err:
                    said_when = any(k == RETRY_AFTER for k, _ in err.trailing_metadata() or ())
                    if err.code() == grpc.StatusCode.UNAVAILABLE and not said_when:
                        # not reached (refused, reset, gone): nothing ran, try another one
                        self._unreachable(address, excluded)
                        continue
                    raise Refused(err) from None

    def _unreachable(self, address: Address, excluded: set[Address]) -> None:
        self.balancer.failed(address)
        excluded.add(address)
        port = self._grpc_ports.pop(address, None)
        if port is not None:
            channel = self._channels.pop(_join(address[0], port), None)
            if channel is not None:
                asyncio.get_running_loop().create_task(channel.close())

    async def _channel(self, address: Address, target: IngressTarget) -> grpc.aio.Channel:
        port = self._grpc_ports.get(address)
        if port is None:
            host, http_port = address
            url = f"http://[{host}]:{http_port}" if ":" in host else f"http://{host}:{http_port}"
            answer = await self._http.get(url + "/ready")
            body: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
            if not body.get("grpc_port"):
                if answer.status_code == 200:
                    raise _NoGrpc(target.qualified_name)
                raise ValueError(f"instance {address} is not ready")
            port = int(body["grpc_port"])
            self._grpc_ports[address] = port
        where = _join(address[0], port)
        channel = self._channels.get(where)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                where,
                options=[
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", -1),
                ],
            )
            self._channels[where] = channel
        return channel


class _NoGrpc(NeveError):
    http_status = 501

    def __init__(self, service: str) -> None:
        super().__init__(
            f"service {service} runs an image without V2 gRPC (built before it was added); "
            "recreate the service to serve gRPC, or call it over HTTP",
            code="GRPC_UNAVAILABLE",
        )


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
