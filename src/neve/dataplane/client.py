"""The client's data plane: ``mv.run(..., service_name=)`` rows go to a proxy or the instances.

The control plane answers one look-up (``POST /api/v1/routes/lookup``: USAGE on the service,
the method's route, its ready instances, waking it when suspended, and where the account's
proxies listen); the rows then travel through the ``Router``:

- to an ingress proxy (``<ingress>/svc/<service>/<route>``, with the caller's token) when the
  service has an ingress endpoint and the account runs proxies: this works from anywhere the
  proxies can be reached, and the proxy wakes a service suspended meanwhile;
- else straight to the instances (the look-up is asked again when they all fail).

Admission refusals (429/503) are retried after their ``Retry-After`` until the deadline, as
the in-process callers do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from neve.dataplane.balancer import Address
from neve.dataplane.router import Router
from neve.errors import (
    ERRORS_BY_NAME,
    InvalidArgumentError,
    ModelExecutionError,
    NeveError,
    ObjectNotFoundError,
    ServiceUnavailableError,
    SignatureError,
    error_from_dict,
)

LOOKUP_PATH = "/api/v1/routes/lookup"

#: ``call(method, path, json=..., timeout=...)``: the session's authenticated control plane call.
ControlCall = Callable[..., Any]


@dataclass(frozen=True)
class ServiceRoute:
    """One look-up's answer."""

    label: str
    route: str  # the method's route on an instance, without the leading "/"
    instances: list[Address]
    ingress_url: str | None  # <proxies>/svc/<service>, when reachable through them


class DataPlaneClient:
    """Thread-safe; one per client session."""

    def __init__(self, call: ControlCall, auth_headers: Callable[[], dict[str, str]]) -> None:
        """``auth_headers()``: the caller's credentials for a proxy (token, role context)."""
        self._call = call
        self._auth_headers = auth_headers
        self._routers: dict[str, Router] = {}

    def close(self) -> None:
        for router in self._routers.values():
            router.close()
        self._routers.clear()

    def _router(self, scheme: str) -> Router:
        router = self._routers.get(scheme)
        if router is None:
            router = self._routers[scheme] = Router(max_connections=64, scheme=scheme)
        return router

    def lookup(self, service: str, method: str, timeout_s: float) -> ServiceRoute:
        answer = self._call(
            "POST",
            LOOKUP_PATH,
            json={"service": service, "method": method, "timeout_s": timeout_s},
            timeout=timeout_s + 30,
        )
        return ServiceRoute(
            label=str(answer["label"]),
            route=str(answer["route"]),
            instances=[(str(h), int(p)) for h, p in answer.get("instances") or []],
            ingress_url=answer.get("ingress_url"),
        )

    def send(
        self,
        target: ServiceRoute,
        content: bytes,
        *,
        content_type: str,
        timeout_s: float,
        service: str,
        method: str,
        query: str = "",
    ) -> bytes:
        """POST ``content`` to the service's method (``query``: the URL's query string, e.g.
        ``params=<JSON>``); the answer's body (errors raised)."""
        deadline = time.monotonic() + timeout_s
        headers = {"Content-Type": content_type, "Accept": content_type}
        if target.ingress_url:
            url = httpx.URL(target.ingress_url)
            proxy: list[Address] = [(url.host, url.port or (443 if url.scheme == "https" else 80))]
            headers.update(self._auth_headers())
            router = self._router(url.scheme)
            route = f"{url.path.rstrip('/')}/{target.route}"

            def endpoints(refresh: bool, remaining: float) -> Sequence[Address]:
                return proxy
        else:
            router = self._router("http")
            route = f"/{target.route}"
            current = [target.instances]

            def endpoints(refresh: bool, remaining: float) -> Sequence[Address]:
                if refresh or not current[0]:  # they failed: ask where they are now (wakes)
                    current[0] = self.lookup(service, method, max(1.0, remaining)).instances
                return current[0]

        resp = router.send(
            route,
            label=target.label,
            endpoints=endpoints,
            deadline=deadline,
            content=content,
            headers=headers,
            query=query,
        )
        if resp.status_code == 200:
            return resp.content
        raise answer_error(target.label, target.route, resp.status_code, resp.content)


def answer_error(label: str, route: str, status: int, content: bytes) -> NeveError:
    """The neve error a service's (or a proxy's) error answer stands for."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        message = f"service {label} ({route}): {body['message']}"
        if body.get("type") in ERRORS_BY_NAME:
            return error_from_dict({**body, "message": message})
        code = str(body.get("code") or "")
    else:
        message = f"service {label} ({route}) answered HTTP {status}: {content[:300]!r}"
        code = ""
    if status in (429, 503):
        return ServiceUnavailableError(message, code=code or None)
    if status == 404:
        return ObjectNotFoundError(message)
    if code == SignatureError.code or (status == 400 and "signature" in code.lower()):
        return SignatureError(message)
    if 400 <= status < 500:
        return InvalidArgumentError(message, code=code or None)
    return ModelExecutionError(message, code=code or None)
