"""Users, roles, privileges and tokens. Every manager asks this one for permission.

Interface used by every other component (keep these signatures stable):

- ``require(s, ctx, privilege, obj)``: raise ``PermissionDeniedError`` naming the privilege and
  the object unless the context's role (or a role it inherits) holds the privilege or owns ``obj``.
  ``obj`` is a catalog row (Database, Schema, Model, ComputePool, Service, ...) or ``ACCOUNT``.
  As on the reference platform, using anything inside a database or schema also needs USAGE on
  that database and schema (owning them counts); the error then names the container.
- ``require_owner(s, ctx, obj)``: only the owning role (or a role above it) may do this.
- ``owner_role_for_create(ctx)``: the role that will own an object the context creates.
- ``on_drop(s, obj)``: delete grants on an object that is being dropped (same transaction).
- ``has_privilege`` / ``is_owner``: the same checks as booleans (for filtering SHOW output).

ACCOUNTADMIN (and any role that inherits it) passes every check. Authentication (login, tokens,
key-pair JWTs, ``authenticate_request``) is the ``neve.security.auth`` layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neve.security.access import (
    SYSTEM_ROLES,
)
from neve.security.auth import Authentication
from neve.security.grants import Grants
from neve.security.objects import (
    ACCOUNT,
    OBJECT_TYPES,
    object_label,
    object_type,
)
from neve.security.throttle import LoginThrottle

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings

__all__ = [
    "ACCOUNT",
    "OBJECT_TYPES",
    "SYSTEM_ROLES",
    "SecurityManager",
    "object_label",
    "object_type",
]


class SecurityManager(Authentication, Grants):
    """Access control, users and roles, grants and authentication, over one catalog."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.login_throttle = LoginThrottle(
            max_failures=settings.security.login_max_failures,
            lockout_s=settings.security.login_lockout_secs,
        )
        super().__init__(catalog, settings)

    def bootstrap(self, *, admin_password: str | None = None) -> None:
        super().bootstrap(admin_password=admin_password)
        self.purge_expired_tokens()
