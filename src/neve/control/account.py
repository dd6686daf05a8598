"""The account: one catalog plus the managers that own each kind of object.

This is the in-process core of the control plane and its composition root: each manager is
built here, once (on first use), with exactly the components it uses passed to its constructor,
in dependency order: catalog -> security -> registry / environments / compute -> services ->
sql. No manager holds the account. The REST API, the SQL engine, the gateway and tests all call
the same manager methods, each taking a ``RequestContext`` first, so privileges are checked in
one place whichever surface a call came from.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from neve.catalog import Catalog
from neve.config import Settings, load_settings

if TYPE_CHECKING:
    from neve.compute.manager import ComputeManager
    from neve.dataplane.publish import RoutePublisher
    from neve.environments.manager import EnvironmentManager
    from neve.gateway.access import LocalAccess
    from neve.registry.manager import RegistryManager
    from neve.security.manager import SecurityManager
    from neve.services.manager import ServiceManager
    from neve.sql.engine import SqlEngine


class Account:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(self.settings.resolved_catalog_url)

    @classmethod
    def open(cls, home: str | None = None) -> Account:
        return cls(load_settings(home))

    @cached_property
    def security(self) -> SecurityManager:
        from neve.security.manager import SecurityManager

        return SecurityManager(self.catalog, self.settings)

    @cached_property
    def registry(self) -> RegistryManager:
        from neve.registry.manager import RegistryManager

        return RegistryManager(self.catalog, self.settings, self.security)

    @cached_property
    def environments(self) -> EnvironmentManager:
        from neve.environments.manager import EnvironmentManager

        return EnvironmentManager(self.catalog, self.settings, self.security)

    @cached_property
    def compute(self) -> ComputeManager:
        from neve.compute.manager import ComputeManager

        return ComputeManager(self.catalog, self.settings, self.security)

    @cached_property
    def services(self) -> ServiceManager:
        from neve.services.manager import ServiceManager
        from neve.sql.functions import ServiceFunctionRows

        return ServiceManager(
            self.catalog,
            self.settings,
            self.security,
            self.registry,
            self.environments,
            self.compute,
            ServiceFunctionRows(),
        )

    @cached_property
    def sql(self) -> SqlEngine:
        from neve.sql.engine import SqlEngine

        return SqlEngine(self)

    @cached_property
    def ingress_access(self) -> LocalAccess:
        """What the in-process gateway and the proxies' look-ups ask: who a caller is, which
        service it may reach (the services manager answers the look-ups and wakes)."""
        from neve.gateway.access import LocalAccess

        return LocalAccess(self.catalog, self.security, self.services)

    @cached_property
    def route_publisher(self) -> RoutePublisher:
        """The route table this control plane publishes to its ingress proxies."""
        from neve.dataplane.publish import RoutePublisher

        return RoutePublisher(self.catalog, self.security, home=self.settings.home)

    def close_route_publisher(self) -> None:
        """Serving has ended: answer waiting long-polls, and later ones at once (the closed
        publisher stays). One never built is not built now (nothing follows it)."""
        publisher = self.__dict__.get("route_publisher")
        if publisher is not None:
            publisher.close()

    def close(self) -> None:
        for name in ("route_publisher", "services", "environments", "compute", "sql"):
            mgr = self.__dict__.get(name)
            if mgr is not None and hasattr(mgr, "close"):
                mgr.close()
        self.catalog.dispose()
