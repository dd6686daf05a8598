"""What the ingress gateway asks of the account: who a caller is, which service it may reach.

``IngressAccess`` is the gateway's view; two implementations:

- ``AccountAccess`` (here): in the control plane process, straight from the ``Account``
  (catalog, ``SecurityManager``, ``ServiceManager``);
- ``neve.dataplane.routes.ControlPlaneAccess``: in an ingress proxy process, from the control
  plane over HTTP plus the route table it follows.

``generation`` changes whenever a security answer may have changed (a revoked token or grant);
the gateway's caches drop everything read under an older one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from neve.catalog import models as m
from neve.context import RequestContext
from neve.dataplane.targets import CatalogIngressTargets, IngressTarget, IngressTargets
from neve.errors import NeveError, ObjectNotFoundError, PermissionDeniedError

if TYPE_CHECKING:
    from neve.control.account import Account


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


class AccountAccess:
    """``IngressAccess`` from an ``Account`` in this process (blocking: call from a thread)."""

    def __init__(self, account: Account, targets: IngressTargets | None = None) -> None:
        self.account = account
        self._targets = targets

    @property
    def targets(self) -> IngressTargets:
        if self._targets is None:
            self._targets = _default_targets(self.account)
        return self._targets

    @property
    def generation(self) -> int:
        return self.account.security.generation

    def authenticate(self, headers: Mapping[str, str]) -> tuple[RequestContext, datetime]:
        # the ingress is the one place a token scoped to services is accepted
        return self.account.security.authenticate(headers, ingress=True)

    def authorized_target(
        self, ctx: RequestContext, host: str | None, name: str | None
    ) -> IngressTarget:
        """The service and a USAGE check on it, in the caller's role (and, for a token scoped
        to services, that it is one of them)."""
        target = self.targets.ingress_target(ctx, host=host, name=name)
        check_scope(ctx, target.service_id, target.qualified_name)
        with self.account.catalog.transaction() as s:
            svc = s.get(m.Service, target.service_id)
            if svc is None:
                raise ObjectNotFoundError(f"service {target.qualified_name} no longer exists")
            self.account.security.require(s, ctx, "USAGE", svc)
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
        services = self.targets
        if hasattr(services, "service_methods") and not isinstance(services, CatalogIngressTargets):
            try:
                methods = services.service_methods  # type: ignore[attr-defined]
                return dict(methods(ctx, target.qualified_name))
            except NeveError:
                pass
        return CatalogIngressTargets(self.account.catalog).service_methods(ctx, target.service_id)


def check_scope(ctx: RequestContext, service_id: int, label: str) -> None:
    """A token scoped to services reaches only those (403 for any other)."""
    if ctx.service_scope is not None and service_id not in ctx.service_scope:
        raise PermissionDeniedError(
            f"the token is scoped to other services' endpoints: it may not call service {label}"
        )


def _default_targets(account: Account) -> IngressTargets:
    """The account's ServiceManager when it offers the ingress methods, else the catalog."""
    try:
        services = account.services
    except ImportError:
        services = None
    if services is not None and all(
        hasattr(services, name) for name in ("ingress_target", "ensure_running", "touch")
    ):
        return services  # type: ignore[return-value]
    return CatalogIngressTargets(account.catalog)
