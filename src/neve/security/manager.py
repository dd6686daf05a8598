"""Users, roles, privileges and tokens. Every manager asks this one for permission.

Interface used by every other component (keep these signatures stable):

- ``require(ctx, privilege, obj)``: raise ``PermissionDeniedError`` naming the privilege and the
  object unless the context's role (or a role it inherits) holds the privilege or owns ``obj``.
  ``obj`` is a catalog row (Database, Schema, Model, ComputePool, Service, ...) or ``ACCOUNT``.
- ``require_owner(ctx, obj)``: only the owning role (or a role above it) may do this.
- ``owner_role_for_create(ctx)``: the role that will own an object the context creates.
- ``on_drop(session, obj)``: delete grants on an object that is being dropped (same transaction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import ACCOUNTADMIN, PUBLIC, SYSADMIN, RequestContext
from neve.errors import PermissionDeniedError

if TYPE_CHECKING:
    from neve.control.account import Account

ACCOUNT = "ACCOUNT"  # the account itself, as a grant object (object_id 0)

OBJECT_TYPES: dict[type, str] = {
    m.Database: "DATABASE",
    m.Schema: "SCHEMA",
    m.Model: "MODEL",
    m.ComputePool: "COMPUTE POOL",
    m.ImageRepository: "IMAGE REPOSITORY",
    m.NetworkRule: "NETWORK RULE",
    m.ExternalAccessIntegration: "INTEGRATION",
    m.Service: "SERVICE",
    m.Function: "FUNCTION",
}


def object_type(obj: Any) -> str:
    return ACCOUNT if obj == ACCOUNT else OBJECT_TYPES[type(obj)]


def object_label(obj: Any) -> str:
    if obj == ACCOUNT:
        return "ACCOUNT"
    return f"{object_type(obj)} {getattr(obj, 'name', '?')}"


class SecurityManager:
    def __init__(self, account: Account) -> None:
        self.account = account

    # -- role hierarchy -------------------------------------------------------------------------
    def effective_roles(self, s: Session, role: str) -> set[str]:
        """``role`` plus every role granted to it, transitively, plus PUBLIC."""
        seen = {role, PUBLIC}
        frontier = [role]
        while frontier:
            current = frontier.pop()
            for (granted,) in s.execute(
                select(m.RoleGrant.role).where(
                    m.RoleGrant.grantee_type == "ROLE", m.RoleGrant.grantee == current
                )
            ):
                if granted not in seen:
                    seen.add(granted)
                    frontier.append(granted)
        if role == ACCOUNTADMIN:
            seen.add(SYSADMIN)
        return seen

    def owner_role_for_create(self, ctx: RequestContext) -> str:
        return ctx.role

    # -- checks -----------------------------------------------------------------------------------
    def is_owner(self, s: Session, ctx: RequestContext, obj: Any) -> bool:
        if obj == ACCOUNT:
            return ctx.role == ACCOUNTADMIN
        owner = getattr(obj, "owner_role", None)
        return owner is not None and owner in self.effective_roles(s, ctx.role)

    def has_privilege(self, s: Session, ctx: RequestContext, privilege: str, obj: Any) -> bool:
        if ctx.role == ACCOUNTADMIN or self.is_owner(s, ctx, obj):
            return True
        roles = self.effective_roles(s, ctx.role)
        oid = 0 if obj == ACCOUNT else obj.id
        found = s.scalar(
            select(m.Grant.id).where(
                m.Grant.object_type == object_type(obj),
                m.Grant.object_id == oid,
                m.Grant.privilege.in_([privilege, "ALL"]),
                m.Grant.grantee_role.in_(roles),
            )
        )
        return found is not None

    def require(self, s: Session, ctx: RequestContext, privilege: str, obj: Any) -> None:
        if not self.has_privilege(s, ctx, privilege, obj):
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} needs {privilege} on {object_label(obj)}"
            )

    def require_owner(self, s: Session, ctx: RequestContext, obj: Any) -> None:
        if not (ctx.role == ACCOUNTADMIN or self.is_owner(s, ctx, obj)):
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} does not own {object_label(obj)} "
                f"(owner: {getattr(obj, 'owner_role', '?')})"
            )

    def on_drop(self, s: Session, obj: Any) -> None:
        s.execute(
            delete(m.Grant).where(
                m.Grant.object_type == object_type(obj), m.Grant.object_id == obj.id
            )
        )
