"""What the SQL layer's parts use of each other and of the account, as Protocols.

Defined where they are used, so the SQL layer depends on the managers it calls, not on the
composition root that builds them (``neve.control.account.Account`` satisfies ``Managers``), and
statement handlers and the query planner on what they use of the engine (``SqlEngine`` satisfies
``EngineParts``), not on the engine module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.compute.manager import ComputeManager
    from neve.config import Settings
    from neve.environments.manager import EnvironmentManager
    from neve.registry.manager import RegistryManager
    from neve.security.manager import SecurityManager
    from neve.services.manager import ServiceManager
    from neve.sql.warehouse import Warehouse


class Managers(Protocol):
    catalog: Catalog
    settings: Settings

    @property
    def security(self) -> SecurityManager: ...

    @property
    def registry(self) -> RegistryManager: ...

    @property
    def environments(self) -> EnvironmentManager: ...

    @property
    def compute(self) -> ComputeManager: ...

    @property
    def services(self) -> ServiceManager: ...

    @property
    def sql(self) -> EngineParts: ...


class EngineParts(Protocol):
    """What statements and the query planner use of the SQL engine."""

    account: Managers

    @property
    def warehouse(self) -> Warehouse: ...

    def model_loader(self, version: Any) -> Callable[[], Any]: ...
