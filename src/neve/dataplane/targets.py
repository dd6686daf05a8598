"""Where the data plane sends a request: the service behind a host or a path, and its instances.

``ServiceManager`` implements the same three methods (and reuses ``CatalogIngressTargets`` for
the look-up); the gateway calls whichever the account offers:

- ``ingress_target(ctx, *, host=None, name=None) -> IngressTarget`` (``ObjectNotFoundError``
  when no service with ingress answers to that host or name),
- ``ensure_running(ctx, service_id, timeout_s) -> IngressTarget`` (resume a suspended service
  and wait until an instance is ready; ``ServiceUnavailableError`` after ``timeout_s``),
- ``touch(service_id)`` (remember the last request time, for auto-suspend).

``Service.ingress_host`` holds the full lower-case host name without port
(``<random>-<account>.<ingress_domain>``); an instance is routable when its status is in
``READY_INSTANCE_STATUSES`` and it has a host and port.

A service's methods (``service_signatures``) are those of the model its instances load: a model
service's own version, or for a service created from a specification the version its
``MODEL_REF`` named, kept in its spec when it was created (that model may be dropped while the
service serves it). The route table, the ingress (method check, OpenAPI document) and the
control plane's look-ups all read them there, so both kinds of service are routed alike.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select, update

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import ObjectNotFoundError, ServiceUnavailableError
from neve.identifiers import qualify

if TYPE_CHECKING:
    from neve.catalog import Catalog

READY_INSTANCE_STATUSES = frozenset({"READY", "RUNNING"})
RUNNING = "RUNNING"
TOUCH_INTERVAL_SECS = 1.0  # write last_request_on at most this often per service


@dataclass(frozen=True)
class IngressTarget:
    service_id: int
    qualified_name: str
    status: str
    instances: list[tuple[str, int]]
    # Model methods callable as POST /<method> (lower case); None: unknown, do not filter.
    methods: tuple[str, ...] | None = None
    status_reason: str | None = None
    owner_role: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == RUNNING and bool(self.instances)


class IngressTargets(Protocol):
    def ingress_target(
        self, ctx: RequestContext, *, host: str | None = None, name: str | None = None
    ) -> IngressTarget: ...

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget: ...

    def touch(self, service_id: int) -> None: ...


def method_names(signatures: dict | None) -> tuple[str, ...] | None:
    if not signatures:
        return None
    return tuple(sorted(str(k).lower() for k in signatures))


def service_method_entries(s, svc: m.Service) -> dict[str, dict]:
    """Method name -> the entry the model's manifest stores for it (``signature``, ``options``,
    ``function_type``) for what the service's instances serve (inside an open catalog session);
    empty when unknown (its model version is gone)."""
    if svc.model_version_id is not None:
        version = s.get(m.ModelVersion, svc.model_version_id)
        stored = version.signatures if version is not None else None
    else:  # from a specification: the entries of its MODEL_REF's version, kept at creation
        stored = (svc.spec or {}).get("signatures")
    return {str(method): entry for method, entry in dict(stored or {}).items()}


def service_signatures(s, svc: m.Service) -> dict[str, dict]:
    """Method name -> its signature (``inputs``/``outputs``), as ``service_method_entries``."""
    return {
        method: entry["signature"]
        if isinstance(entry, dict) and "signature" in entry and "inputs" not in entry
        else entry
        for method, entry in service_method_entries(s, svc).items()
    }


def target_of(s, svc: m.Service) -> IngressTarget:
    """An ``IngressTarget`` from a service row (inside an open catalog session)."""
    instances = [
        (inst.host, int(inst.port))
        for inst in s.scalars(
            select(m.ServiceInstance)
            .where(m.ServiceInstance.service_id == svc.id)
            .order_by(m.ServiceInstance.instance_index)
        )
        if inst.status in READY_INSTANCE_STATUSES and inst.host and inst.port
    ]
    return IngressTarget(
        service_id=svc.id,
        qualified_name=str(lookup.qualified(s, svc.schema_id, svc.name)),
        status=svc.status,
        instances=instances,
        methods=method_names(service_signatures(s, svc)),
        status_reason=svc.status_reason,
        owner_role=svc.owner_role,
    )


def find_service(
    s, ctx: RequestContext, *, host: str | None = None, name: str | None = None
) -> m.Service:
    """The ingress-enabled service behind ``host`` or ``name`` (raises ObjectNotFoundError)."""
    if host is not None:
        host_name = host.lower().rsplit(":", 1)[0] if ":" in host else host.lower()
        svc = s.scalar(select(m.Service).where(m.Service.ingress_host == host_name))
        if svc is None:
            raise ObjectNotFoundError(f"no service has the ingress host {host_name}")
        return svc
    if name is None:
        raise ObjectNotFoundError("no service named in the request")
    qn = qualify(name, database=ctx.database, schema=ctx.schema, kind="service")
    svc = lookup.in_schema(s, m.Service, qn, "service")
    if not svc.ingress_enabled:
        raise ObjectNotFoundError(
            f"service {qn} has no ingress endpoint (it was created with ingress_enabled=False)"
        )
    return svc


class CatalogIngressTargets:
    """Catalog-backed targets: reads ``services`` / ``service_instances`` rows.

    It cannot start processes, so ``ensure_running`` only waits for the rows to show a ready
    instance (something else, normally the ServiceManager, must be resuming the service).
    """

    def __init__(self, catalog: Catalog, *, poll_interval_s: float = 0.1) -> None:
        self.catalog = catalog
        self.poll_interval_s = poll_interval_s
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def ingress_target(
        self, ctx: RequestContext, *, host: str | None = None, name: str | None = None
    ) -> IngressTarget:
        with self.catalog.transaction() as s:
            return target_of(s, find_service(s, ctx, host=host, name=name))

    def target_by_id(self, service_id: int) -> IngressTarget:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, service_id)
            if svc is None:
                raise ObjectNotFoundError(f"service #{service_id} no longer exists")
            return target_of(s, svc)

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget:
        deadline = time.monotonic() + timeout_s
        while True:
            target = self.target_by_id(service_id)
            if target.ready:
                return target
            if target.status in {"FAILED", "DELETING"}:
                raise ServiceUnavailableError(
                    f"service {target.qualified_name} is {target.status}"
                    + (f": {target.status_reason}" if target.status_reason else "")
                )
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"service {target.qualified_name} is not ready after {timeout_s:g} s "
                    f"(status {target.status})"
                )
            time.sleep(self.poll_interval_s)

    def touch(self, service_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(service_id, 0.0) < TOUCH_INTERVAL_SECS:
                return
            self._touched[service_id] = now
        with self.catalog.transaction() as s:
            # updated_on is set to itself: a request is not a change of the service.
            s.execute(
                update(m.Service)
                .where(m.Service.id == service_id)
                .values(last_request_on=datetime.now(UTC), updated_on=m.Service.updated_on)
            )

    def service_methods(self, ctx: RequestContext, service_id: int) -> dict[str, dict]:
        """Method name -> signature dict, for the OpenAPI document."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, service_id)
            return service_signatures(s, svc) if svc is not None else {}
