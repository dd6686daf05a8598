"""Object privileges: GRANT, REVOKE (with CASCADE / RESTRICT), GRANT OWNERSHIP, SHOW GRANTS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import ACCOUNTADMIN, RequestContext
from neve.errors import (
    InvalidArgumentError,
    ObjectInUseError,
    PermissionDeniedError,
)
from neve.identifiers import ident
from neve.security.access import (
    SYSTEM_ROLES,
)
from neve.security.directory import Directory
from neve.security.objects import (
    ACCOUNT,
    by_id,
    object_id,
    object_label,
    object_name,
    object_type,
    owned_by,
    owner_of,
    resolve,
)
from neve.security.privileges import (
    OWNERSHIP,
    normalize_privilege,
    normalize_type,
    privileges_for_grant,
)

if TYPE_CHECKING:
    pass


class Grants(Directory):
    # -- object privileges ------------------------------------------------------------------------
    def grant(
        self,
        ctx: RequestContext,
        privilege: str,
        object_type: str,
        object_name: str | None,
        to_role: str,
        with_grant_option: bool = False,
    ) -> list[str]:
        """GRANT privilege ON type name TO ROLE r. Returns the privileges stored.

        The grantor must own the object or hold each privilege WITH GRANT OPTION; anything else
        is an escalation attempt and is refused.
        """
        kind = normalize_type(object_type)
        if normalize_privilege(privilege) == OWNERSHIP:
            self.grant_ownership(ctx, kind, object_name, to_role)
            return [OWNERSHIP]
        privs = privileges_for_grant(privilege, kind)
        grantee = ident(to_role, kind="role name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            obj = resolve(s, ctx, kind, object_name)
            self._role(s, grantee)
            roles = self._roles(s, ctx)
            if not (ACCOUNTADMIN in roles or owner_of(obj) in roles):
                lacking = [p for p in privs if not self._holds(s, roles, p, obj, grant_option=True)]
                if lacking:
                    raise PermissionDeniedError(
                        f"insufficient privileges: role {ctx.role} cannot grant "
                        f"{', '.join(lacking)} on {object_label(obj, s)}: it neither owns the "
                        "object nor holds the privilege WITH GRANT OPTION"
                    )
            for priv in privs:
                row = s.scalar(
                    select(m.Grant).where(
                        m.Grant.privilege == priv,
                        m.Grant.object_type == kind,
                        m.Grant.object_id == object_id(obj),
                        m.Grant.grantee_role == grantee,
                    )
                )
                if row is None:
                    s.add(
                        m.Grant(
                            privilege=priv,
                            object_type=kind,
                            object_id=object_id(obj),
                            grantee_role=grantee,
                            granted_by=ctx.role,
                            grant_option=bool(with_grant_option),
                        )
                    )
                elif with_grant_option and not row.grant_option:
                    row.grant_option = True
            return privs

    def revoke(
        self,
        ctx: RequestContext,
        privilege: str,
        object_type: str,
        object_name: str | None,
        from_role: str,
        *,
        grant_option_only: bool = False,
        cascade: bool = False,
    ) -> list[str]:
        """REVOKE [GRANT OPTION FOR] privilege ON type name FROM ROLE r [RESTRICT | CASCADE].

        Grants r made onward (it held the privilege WITH GRANT OPTION) depend on it: RESTRICT
        (the default) refuses while there are any, naming them; CASCADE revokes them too, and
        theirs, so no role keeps a privilege whose grantor lost it."""
        kind = normalize_type(object_type)
        if normalize_privilege(privilege) == OWNERSHIP:
            raise InvalidArgumentError(
                "OWNERSHIP cannot be revoked; transfer it with GRANT OWNERSHIP ... TO ROLE"
            )
        privs = privileges_for_grant(privilege, kind)
        grantee = ident(from_role, kind="role name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            obj = resolve(s, ctx, kind, object_name)
            self._role(s, grantee)
            roles = self._roles(s, ctx)
            rows = s.scalars(
                select(m.Grant).where(
                    m.Grant.privilege.in_(privs),
                    m.Grant.object_type == kind,
                    m.Grant.object_id == object_id(obj),
                    m.Grant.grantee_role == grantee,
                )
            ).all()
            is_admin = ACCOUNTADMIN in roles or owner_of(obj) in roles
            revoked = []
            for row in rows:
                if not (is_admin or row.granted_by in roles):
                    raise PermissionDeniedError(
                        f"insufficient privileges: role {ctx.role} cannot revoke {row.privilege} "
                        f"on {object_label(obj, s)} from {grantee}: it neither owns the object "
                        f"nor granted the privilege (granted by {row.granted_by})"
                    )
                # the owner and ACCOUNTADMIN may grant without holding a grant: theirs stand
                dependents = self._onward_grants(s, row, independent={owner_of(obj), ACCOUNTADMIN})
                if dependents and not cascade:
                    names = ", ".join(sorted({str(d.grantee_role) for d in dependents}))
                    raise ObjectInUseError(
                        f"cannot revoke {'GRANT OPTION FOR ' if grant_option_only else ''}"
                        f"{row.privilege} on {object_label(obj, s)} from {grantee}: it granted "
                        f"the privilege on to {names}; revoke those grants first, or add CASCADE "
                        "to revoke them too"
                    )
                for dependent in dependents:
                    s.delete(dependent)
                if grant_option_only:
                    row.grant_option = False
                else:
                    s.delete(row)
                revoked.append(row.privilege)
            return revoked

    @staticmethod
    def _onward_grants(s: Session, root: m.Grant, *, independent: set[str | None]) -> list[m.Grant]:
        """The grants of ``root``'s privilege on its object that its grantee made, and the ones
        those grantees made in turn (a role granting in a cycle counts once). Roles in
        ``independent`` grant by right, not through ``root``: their grants are not followed."""
        found: dict[int, m.Grant] = {}
        if root.grantee_role in independent:
            return []
        grantors = [root.grantee_role]
        seen = {root.grantee_role} | independent
        while grantors:
            rows = s.scalars(
                select(m.Grant).where(
                    m.Grant.privilege == root.privilege,
                    m.Grant.object_type == root.object_type,
                    m.Grant.object_id == root.object_id,
                    m.Grant.granted_by.in_(grantors),
                    m.Grant.id != root.id,
                )
            ).all()
            grantors = []
            for row in rows:
                if row.id in found:
                    continue
                found[row.id] = row
                if row.grantee_role not in seen:  # its own onward grants depend on it too
                    seen.add(row.grantee_role)
                    grantors.append(row.grantee_role)
        return list(found.values())

    def grant_ownership(
        self,
        ctx: RequestContext,
        object_type: str,
        object_name: str | None,
        to_role: str,
        copy_current_grants: bool = True,
    ) -> None:
        """GRANT OWNERSHIP ON type name TO ROLE r [COPY CURRENT GRANTS | REVOKE CURRENT GRANTS]."""
        kind = normalize_type(object_type)
        if kind == ACCOUNT:
            raise InvalidArgumentError("ownership of the account cannot be transferred")
        new_owner = ident(to_role, kind="role name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            obj = resolve(s, ctx, kind, object_name)
            self._role(s, new_owner)
            self.require_owner(s, ctx, obj)
            if isinstance(obj, m.Role) and obj.name in SYSTEM_ROLES:
                raise InvalidArgumentError(f"ownership of system role {obj.name} cannot change")
            if isinstance(obj, m.Role) and new_owner in self.effective_roles(s, obj.name) | {
                obj.name
            }:
                raise InvalidArgumentError(
                    f"role {new_owner} cannot own role {obj.name}: it is {obj.name} or inherits it"
                )
            obj.owner_role = new_owner
            if not copy_current_grants:
                self.on_drop(s, obj)

    def show_grants(
        self,
        ctx: RequestContext,
        *,
        to_role: str | None = None,
        on: tuple[str, str | None] | None = None,
        of_role: str | None = None,
        to_user: str | None = None,
    ) -> list[dict]:
        """SHOW GRANTS TO ROLE r | ON type name | OF ROLE r | TO USER u (rows as dicts).

        Object grant rows have the reference's columns: created_on, privilege, granted_on, name,
        granted_to, grantee_name, grant_option, granted_by. Role grant rows (OF ROLE, TO USER):
        created_on, role, granted_to, grantee_name, granted_by.
        """
        if sum(x is not None for x in (to_role, on, of_role, to_user)) > 1:
            raise InvalidArgumentError("SHOW GRANTS takes one of TO ROLE, ON, OF ROLE, TO USER")
        with self.catalog.transaction() as s:
            roles = self._roles(s, ctx)
            admin = ACCOUNTADMIN in roles
            if on is not None:
                obj = resolve(s, ctx, on[0], on[1])
                if not (admin or owner_of(obj) in roles or self._any_grant(s, roles, obj)):
                    raise PermissionDeniedError(
                        f"insufficient privileges: role {ctx.role} holds no privilege on "
                        f"{object_label(obj, s)}"
                    )
                return self._grants_on(s, obj)
            if to_role is not None or of_role is not None:
                name = ident(to_role or of_role, kind="role name")  # type: ignore[arg-type]
                role = self._role(s, name)
                if not (admin or name in roles or role.owner_role in roles):
                    raise PermissionDeniedError(
                        f"insufficient privileges: role {ctx.role} may not see the grants of "
                        f"role {name}"
                    )
                if to_role is not None:
                    return self._grants_to_role(s, name)
                return self._role_grant_rows(
                    s.scalars(select(m.RoleGrant).where(m.RoleGrant.role == name))
                )
            user_name = ident(to_user, kind="user name") if to_user else ctx.user
            user = self._user(s, user_name)
            if user.name != ctx.user and not self._may_manage_user(s, ctx, user):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} may not see the grants of user "
                    f"{user.name}"
                )
            return self._role_grant_rows(
                s.scalars(
                    select(m.RoleGrant).where(
                        m.RoleGrant.grantee_type == "USER", m.RoleGrant.grantee == user.name
                    )
                )
            )

    def _any_grant(self, s: Session, roles: set[str], obj: Any) -> bool:
        return (
            s.scalar(
                select(m.Grant.id)
                .where(
                    m.Grant.object_type == object_type(obj),
                    m.Grant.object_id == object_id(obj),
                    m.Grant.grantee_role.in_(roles),
                )
                .limit(1)
            )
            is not None
        )

    @staticmethod
    def _ownership_row(s: Session, obj: Any) -> dict:
        return {
            "created_on": (getattr(obj, "created_on", None) or datetime.now(UTC)),
            "privilege": OWNERSHIP,
            "granted_on": object_type(obj),
            "name": object_name(obj, s),
            "granted_to": "ROLE",
            "grantee_name": owner_of(obj),
            "grant_option": True,
            "granted_by": owner_of(obj),
        }

    @staticmethod
    def _grant_row(s: Session, grant: m.Grant, obj: Any) -> dict:
        return {
            "created_on": grant.created_on,
            "privilege": grant.privilege,
            "granted_on": grant.object_type,
            "name": object_name(obj, s),
            "granted_to": "ROLE",
            "grantee_name": grant.grantee_role,
            "grant_option": bool(grant.grant_option),
            "granted_by": grant.granted_by,
        }

    def _grants_on(self, s: Session, obj: Any) -> list[dict]:
        rows = [] if obj == ACCOUNT else [self._ownership_row(s, obj)]
        for grant in s.scalars(
            select(m.Grant)
            .where(m.Grant.object_type == object_type(obj), m.Grant.object_id == object_id(obj))
            .order_by(m.Grant.grantee_role, m.Grant.privilege)
        ):
            rows.append(self._grant_row(s, grant, obj))
        return rows

    def _grants_to_role(self, s: Session, role: str) -> list[dict]:
        rows = [self._ownership_row(s, obj) for obj in owned_by(s, role)]
        for grant in s.scalars(
            select(m.Grant).where(m.Grant.grantee_role == role).order_by(m.Grant.id)
        ):
            obj = by_id(s, grant.object_type, grant.object_id)
            if obj is not None:
                rows.append(self._grant_row(s, grant, obj))
        for rg in s.scalars(
            select(m.RoleGrant).where(
                m.RoleGrant.grantee_type == "ROLE", m.RoleGrant.grantee == role
            )
        ):
            rows.append(
                {
                    "created_on": rg.created_on,
                    "privilege": "USAGE",
                    "granted_on": "ROLE",
                    "name": rg.role,
                    "granted_to": "ROLE",
                    "grantee_name": role,
                    "grant_option": False,
                    "granted_by": rg.granted_by,
                }
            )
        return rows

    @staticmethod
    def _role_grant_rows(grants: Any) -> list[dict]:
        return [
            {
                "created_on": rg.created_on,
                "role": rg.role,
                "granted_to": rg.grantee_type,
                "grantee_name": rg.grantee,
                "granted_by": rg.granted_by,
            }
            for rg in grants
        ]
