"""A proxy's view of the control plane: the route table it follows and the look-ups it asks.

``RouteTableClient`` keeps the table current by long-poll (``GET /api/v1/routes?version=N``
blocks until the table changes). ``ControlPlaneAccess`` is the gateway's ``IngressAccess`` in a
proxy: authentication, authorization, waking a suspended service and the OpenAPI signatures
are asked of the control plane (and cached by the gateway under its usual rules); the ready
instances come from the route table.

While the control plane is unreachable (stopped, restarting) the proxy keeps serving: it
answers from the last look-ups it made (a token still within its expiry, a service the caller
was allowed to reach) and routes to the instances of the last table. No security change can be
made meanwhile (changes go through the control plane), and the first table after it returns
carries a new ``epoch``, which drops every cached answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from neve.context import RequestContext
from neve.dataplane.proxies import SECRET_HEADER
from neve.dataplane.targets import IngressTarget
from neve.errors import (
    AuthenticationError,
    NeveError,
    ServiceUnavailableError,
    error_from_dict,
)

log = logging.getLogger("neve.dataplane")

ROUTES_PATH = "/api/v1/routes"
#: How long one long-poll waits for a change before asking again.
LONG_POLL_S = 20.0
#: Pause between attempts while the control plane does not answer.
RECONNECT_PAUSE_S = 0.25
#: Longest a look-up answer is reused while the control plane is unreachable.
STALE_FOR_S = 24 * 3600.0
#: The headers authentication reads (the rest of a request's headers never leave the proxy).
AUTH_HEADERS = (
    "authorization",
    "x-neve-role",
    "x-neve-database",
    "x-neve-schema",
    "x-neve-context",
)


def control_url_of(home: Path) -> Callable[[], str | None]:
    """The control plane's URL as ``<home>/control.json`` says now (it moves on restart)."""

    def read() -> str | None:
        try:
            info = json.loads((Path(home) / "control.json").read_text())
        except (OSError, ValueError):
            return None
        url = info.get("url")
        return str(url).rstrip("/") if url else None

    return read


def ctx_to_dict(ctx: RequestContext) -> dict[str, Any]:
    return {
        "user": ctx.user,
        "role": ctx.role,
        "database": ctx.database,
        "schema": ctx.schema,
        "request_id": ctx.request_id,
        "service_scope": list(ctx.service_scope) if ctx.service_scope is not None else None,
    }


def ctx_from_dict(data: Mapping[str, Any]) -> RequestContext:
    scope = data.get("service_scope")
    return RequestContext(
        user=str(data["user"]),
        role=str(data["role"]),
        database=data.get("database"),
        schema=data.get("schema"),
        request_id=data.get("request_id"),
        service_scope=tuple(int(i) for i in scope) if scope is not None else None,
    )


def target_to_dict(target: IngressTarget) -> dict[str, Any]:
    return {
        "service_id": target.service_id,
        "qualified_name": target.qualified_name,
        "status": target.status,
        "instances": [list(a) for a in target.instances],
        "methods": list(target.methods) if target.methods is not None else None,
        "status_reason": target.status_reason,
        "owner_role": target.owner_role,
    }


def target_from_dict(data: Mapping[str, Any]) -> IngressTarget:
    methods = data.get("methods")
    return IngressTarget(
        service_id=int(data["service_id"]),
        qualified_name=str(data["qualified_name"]),
        status=str(data["status"]),
        instances=[(str(h), int(p)) for h, p in data.get("instances") or []],
        methods=tuple(methods) if methods is not None else None,
        status_reason=data.get("status_reason"),
        owner_role=data.get("owner_role"),
    )


class Unreachable(Exception):
    """The control plane did not answer (as opposed to answering with an error)."""


class RouteTableClient:
    """The latest route table, kept current by a long-poll task (``run``) in the proxy's loop."""

    def __init__(
        self,
        control_url: Callable[[], str | None],
        secret: str,
        *,
        admin_url: str | None = None,
        on_epoch: Callable[[], None] | None = None,
    ) -> None:
        self.control_url = control_url
        self.secret = secret
        self.admin_url = admin_url
        self.on_epoch = on_epoch
        self.version = 0
        self.epoch: str | None = None
        self.services: dict[int, dict[str, Any]] = {}
        self.updated = asyncio.Event()
        self.connected = False

    def service(self, service_id: int) -> dict[str, Any] | None:
        return self.services.get(service_id)

    def apply(self, table: Mapping[str, Any]) -> None:
        self.version = int(table.get("version", 0))
        self.services = {int(s["id"]): s for s in table.get("services", [])}
        epoch = table.get("epoch")
        if epoch != self.epoch:
            self.epoch = epoch
            if self.on_epoch is not None:
                self.on_epoch()
        self.updated.set()

    async def run(self) -> None:
        """Follow the table until cancelled; never raises for an absent control plane."""
        async with httpx.AsyncClient(trust_env=False, timeout=LONG_POLL_S + 10) as client:
            while True:
                url = self.control_url()
                if url is None:
                    self.connected = False
                    await asyncio.sleep(RECONNECT_PAUSE_S)
                    continue
                params: dict[str, Any] = {"version": self.version, "wait": LONG_POLL_S}
                if self.admin_url:
                    params["admin"] = self.admin_url
                try:
                    resp = await client.get(
                        url + ROUTES_PATH, params=params, headers={SECRET_HEADER: self.secret}
                    )
                    resp.raise_for_status()
                    table = resp.json()
                except (httpx.HTTPError, ValueError) as exc:
                    if self.connected:
                        log.warning("route table: control plane unreachable (%s)", exc)
                    self.connected = False
                    await asyncio.sleep(RECONNECT_PAUSE_S)
                    continue
                if not self.connected:
                    log.info("route table: following %s", url)
                self.connected = True
                if table.get("version") != self.version or table.get("epoch") != self.epoch:
                    self.apply(table)


class ControlPlaneAccess:
    """The gateway's ``IngressAccess`` in a proxy process (blocking: called from threads)."""

    def __init__(self, routes: RouteTableClient, *, timeout_s: float = 10.0) -> None:
        self.routes = routes
        self._http = httpx.Client(trust_env=False, timeout=timeout_s)
        self._stale: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._local = 0  # bumped by a pushed invalidation

    def close(self) -> None:
        self._http.close()

    @property
    def generation(self) -> Hashable:
        return (self.routes.epoch, self._local)

    def invalidate(self) -> None:
        with self._lock:
            self._local += 1
            self._stale.clear()

    # -- calls ------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        url = self.routes.control_url()
        if url is None:
            raise Unreachable("no control plane is running")
        try:
            resp = self._http.post(
                url + ROUTES_PATH + path,
                json=body,
                headers={SECRET_HEADER: self.routes.secret},
                timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise Unreachable(str(exc)) from None
        if resp.status_code == 200:
            return resp.json()
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if resp.status_code in (502, 503, 504) and not isinstance(payload, dict):
            raise Unreachable(f"HTTP {resp.status_code}")
        if isinstance(payload, dict) and payload.get("message"):
            raise error_from_dict(payload)
        raise NeveError(f"control plane answered HTTP {resp.status_code}")

    def _remembered(self, key: Hashable, call: Callable[[], Any], until: Callable[[Any], float]):
        """``call()``, remembered; the remembered answer when the control plane is away."""
        try:
            value = call()
        except Unreachable as exc:
            with self._lock:
                item = self._stale.get(key)
            if item is not None and item[0] > time.time():
                return item[1]
            raise ServiceUnavailableError(
                f"the control plane is unreachable ({exc}) and this request was not seen before"
            ) from None
        with self._lock:
            self._stale[key] = (until(value), value)
            if len(self._stale) > 10_000:
                self._stale.pop(next(iter(self._stale)))
        return value

    # -- IngressAccess ----------------------------------------------------------------------------
    def authenticate(self, headers: Mapping[str, str]) -> tuple[RequestContext, datetime]:
        sent = {h: headers.get(h) for h in AUTH_HEADERS if headers.get(h) is not None}
        key = ("authenticate", tuple(sorted(sent.items())))

        def call() -> tuple[RequestContext, datetime]:
            answer = self._post("/authenticate", {"headers": sent})
            return ctx_from_dict(answer["ctx"]), datetime.fromisoformat(answer["expires"])

        ctx, expires = self._remembered(key, call, lambda v: v[1].timestamp())
        if expires <= datetime.now(UTC):  # a remembered answer outlived its token
            raise AuthenticationError("token has expired; log in again or issue a new token")
        return ctx, expires

    def authorized_target(
        self, ctx: RequestContext, host: str | None, name: str | None
    ) -> IngressTarget:
        body = {"ctx": ctx_to_dict(ctx), "host": host, "name": name}
        key = (
            "authorize",
            ctx.user,
            ctx.role,
            ctx.database,
            ctx.schema,
            host,
            name,
            ctx.service_scope,
        )

        def call() -> IngressTarget:
            return target_from_dict(self._post("/authorize", body)["target"])

        target = self._remembered(key, call, lambda _v: time.time() + STALE_FOR_S)
        return self._current(target)

    def _current(self, target: IngressTarget) -> IngressTarget:
        """``target`` with the status and instances of the latest route table."""
        entry = self.routes.service(target.service_id)
        if entry is None:
            return target
        return IngressTarget(
            service_id=target.service_id,
            qualified_name=target.qualified_name,
            status=str(entry["status"]),
            instances=[(str(h), int(p)) for h, p in entry.get("instances") or []],
            methods=target.methods,
            status_reason=entry.get("status_reason"),
            owner_role=target.owner_role,
        )

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget:
        """Ask the control plane to resume the service and wait (bounded) until it is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                answer = self._post(
                    "/wake",
                    {"ctx": ctx_to_dict(ctx), "service_id": service_id, "timeout_s": remaining},
                    timeout_s=remaining + 5,
                )
                return target_from_dict(answer["target"])
            except Unreachable as exc:
                # the control plane may be restarting: the table may already show it ready
                entry = self.routes.service(service_id)
                if entry and entry["status"] == "RUNNING" and entry.get("instances"):
                    return self._current(
                        IngressTarget(service_id, str(entry["name"]), "RUNNING", [])
                    )
                if time.monotonic() + RECONNECT_PAUSE_S >= deadline:
                    raise ServiceUnavailableError(
                        f"service #{service_id} could not be woken: the control plane is "
                        f"unreachable ({exc})"
                    ) from None
                time.sleep(RECONNECT_PAUSE_S)

    def touch(self, service_id: int) -> None:
        with contextlib.suppress(Unreachable, NeveError):
            self._post("/touch", {"service_id": service_id}, timeout_s=2.0)

    def signatures(self, ctx: RequestContext, target: IngressTarget) -> dict[str, dict]:
        body = {"ctx": ctx_to_dict(ctx), "service_id": target.service_id}
        key = ("signatures", target.service_id)
        return self._remembered(
            key, lambda: self._post("/signatures", body), lambda _v: time.time() + STALE_FOR_S
        )
