"""What the ingress gateway asks of the account: who a caller is, which service it may reach.

``IngressAccess`` is the gateway's view; two implementations:

- ``LocalAccess`` (here): in the control plane process, straight from the catalog, the
  security manager and the service look-ups it is built with;
- ``neve.dataplane.routes.ControlPlaneAccess``: in an ingress proxy process, from the control
  plane over HTTP plus the route table it follows.

``generation`` changes whenever a security answer may have changed (a revoked token or grant);
the gateway's caches drop everything read under an older one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from neve.catalog import models as m
from neve.context import RequestContext
from neve.dataplane.targets import CatalogIngressTargets, IngressTarget, IngressTargets
from neve.errors import ObjectNotFoundError, PermissionDeniedError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from neve.catalog import Catalog


class IngressAccess(Protocol):
    @property
    def generation(self) -> Hashable: ...

    def authenticate(self, headers: Mapping[str, str]) -> tuple[RequestContext, datetime]: ...

    def authorized_target(
        self, ctx: RequestContext, host: str | None, name: str | None
    ) -> IngressTarget: ...

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget: ...

    def touch(self, service_id: int) -> None: ...

    def signatures(self, ctx: RequestContext, target: IngressTarget) -> dict[str, dict]: ...


class IngressSecurity(Protocol):
    """What ``LocalAccess`` asks of the security manager."""

    @property
    def generation(self) -> int: ...

    def authenticate(
        self, headers: Mapping[str, str], *, ingress: bool = False
    ) -> tuple[RequestContext, datetime]: ...

    def require(self, s: Session, ctx: RequestContext, privilege: str, obj: Any) -> None: ...


class LocalAccess:
    """``IngressAccess`` in the control plane process (blocking: call from a thread)."""

    def __init__(
        self, catalog: Catalog, security: IngressSecurity, targets: IngressTargets
    ) -> None:
        self.catalog = catalog
        self.security = security
        self.targets = targets

    @property
    def generation(self) -> int:
        return self.security.generation

    def authenticate(self, headers: Mapping[str, str]) -> tuple[RequestContext, datetime]:
        # the ingress is the one place a token scoped to services is accepted
        return self.security.authenticate(headers, ingress=True)

    def authorized_target(
        self, ctx: RequestContext, host: str | None, name: str | None
    ) -> IngressTarget:
        """The service and a USAGE check on it, in the caller's role (and, for a token scoped
        to services, that it is one of them)."""
        target = self.targets.ingress_target(ctx, host=host, name=name)
        check_scope(ctx, target.service_id, target.qualified_name)
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, target.service_id)
            if svc is None:
                raise ObjectNotFoundError(f"service {target.qualified_name} no longer exists")
            self.security.require(s, ctx, "USAGE", svc)
            if not svc.ingress_enabled:
                raise ObjectNotFoundError(
                    f"service {target.qualified_name} has no ingress endpoint "
                    "(it was created with ingress_enabled=False)"
                )
        return target

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget:
        check_scope(ctx, service_id, f"#{service_id}")
        return self.targets.ensure_running(ctx, service_id, timeout_s)

    def touch(self, service_id: int) -> None:
        self.targets.touch(service_id)

    def signatures(self, ctx: RequestContext, target: IngressTarget) -> dict[str, dict]:
        """Method name -> signature (the caller passed ``authorized_target`` already)."""
        return CatalogIngressTargets(self.catalog).service_methods(ctx, target.service_id)


def check_scope(ctx: RequestContext, service_id: int, label: str) -> None:
    """A token scoped to services reaches only those (403 for any other)."""
    if ctx.service_scope is not None and service_id not in ctx.service_scope:
        raise PermissionDeniedError(
            f"the token is scoped to other services' endpoints: it may not call service {label}"
        )
