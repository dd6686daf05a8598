"""Users and roles: create, alter, drop, show, and the role grants between them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import ACCOUNTADMIN, RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import ident
from neve.security import keypair, passwords
from neve.security.access import (
    _UNSET,
    SYSTEM_ROLES,
    AccessControl,
)
from neve.security.objects import (
    ACCOUNT,
    owned_by,
)

if TYPE_CHECKING:
    pass


class Directory(AccessControl):
    # -- users ------------------------------------------------------------------------------------
    def _may_manage_user(self, s: Session, ctx: RequestContext, user: m.User) -> bool:
        roles = self._roles(s, ctx)
        return ACCOUNTADMIN in roles or (user.owner_role is not None and user.owner_role in roles)

    def create_user(
        self,
        ctx: RequestContext,
        name: str,
        password: str | None = None,
        rsa_public_key: str | None = None,
        default_role: str | None = None,
        *,
        comment: str | None = None,
        disabled: bool = False,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE USER: needs CREATE USER on the account; the creating role owns the user."""
        user_name = ident(name, kind="user name")
        with self.catalog.transaction() as s:
            self.require(s, ctx, "CREATE USER", ACCOUNT)
            existing = s.scalar(select(m.User).where(m.User.name == user_name))
            if existing is not None:
                if if_not_exists:
                    return self._user_row(s, existing)
                raise ObjectExistsError(f"user {user_name} already exists")
            user = m.User(
                name=user_name,
                owner_role=self.owner_role_for_create(ctx),
                comment=comment,
                disabled=bool(disabled),
            )
            if password is not None:
                passwords.check_password_policy(password, user=user_name)
                user.password_hash = passwords.hash_password(password)
            if rsa_public_key is not None:
                user.rsa_public_key = keypair.normalize_public_key(rsa_public_key, user=user_name)
            if default_role is not None:
                user.default_role = self._role(s, ident(default_role, kind="role name")).name
            s.add(user)
            s.flush()
            return self._user_row(s, user)

    def alter_user(
        self,
        ctx: RequestContext,
        name: str,
        *,
        password: str | None = _UNSET,
        rsa_public_key: str | None = _UNSET,
        default_role: str | None = _UNSET,
        disabled: bool = _UNSET,
        comment: str | None = _UNSET,
    ) -> dict:
        """ALTER USER ... SET. A user may change their own password, key and default role."""
        user_name = ident(name, kind="user name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            user = self._user(s, user_name)
            # Users may change their own credentials; everything else needs ownership.
            self_service = user.name == ctx.user and disabled is _UNSET and comment is _UNSET
            if not (self_service or self._may_manage_user(s, ctx, user)):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} does not own USER {user_name}"
                )
            if password is not _UNSET:
                if password is None:
                    user.password_hash = None
                else:
                    passwords.check_password_policy(password, user=user_name)
                    user.password_hash = passwords.hash_password(password)
            if rsa_public_key is not _UNSET:
                user.rsa_public_key = (
                    None
                    if rsa_public_key is None
                    else keypair.normalize_public_key(rsa_public_key, user=user_name)
                )
            if default_role is not _UNSET:
                user.default_role = (
                    None
                    if default_role is None
                    else self._role(s, ident(default_role, kind="role name")).name
                )
            if disabled is not _UNSET:
                if disabled and self._is_last_admin_user(s, user.name):
                    raise InvalidStateError(
                        f"cannot disable user {user.name}: it is the last user holding ACCOUNTADMIN"
                    )
                user.disabled = bool(disabled)
            if comment is not _UNSET:
                user.comment = comment
            return self._user_row(s, user)

    def drop_user(self, ctx: RequestContext, name: str, *, if_exists: bool = False) -> None:
        user_name = ident(name, kind="user name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            user = s.scalar(select(m.User).where(m.User.name == user_name))
            if user is None:
                if if_exists:
                    return
                raise ObjectNotFoundError(f"user {user_name} does not exist or not authorized")
            if not self._may_manage_user(s, ctx, user):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} does not own USER {user_name}"
                )
            if self._is_last_admin_user(s, user.name):
                raise InvalidStateError(
                    f"cannot drop user {user.name}: it is the last user holding ACCOUNTADMIN"
                )
            s.execute(delete(m.Token).where(m.Token.user_id == user.id))
            s.execute(
                delete(m.RoleGrant).where(
                    m.RoleGrant.grantee_type == "USER", m.RoleGrant.grantee == user.name
                )
            )
            self.on_drop(s, user)
            s.delete(user)

    def show_users(self, ctx: RequestContext) -> list[dict]:
        with self.catalog.transaction() as s:
            roles = self._roles(s, ctx)
            rows = s.scalars(select(m.User).order_by(m.User.name)).all()
            return [
                self._user_row(s, u)
                for u in rows
                if ACCOUNTADMIN in roles or u.name == ctx.user or u.owner_role in roles
            ]

    def describe_user(self, ctx: RequestContext, name: str) -> dict:
        user_name = ident(name, kind="user name")
        with self.catalog.transaction() as s:
            user = self._user(s, user_name)
            if user.name != ctx.user and not self._may_manage_user(s, ctx, user):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} does not own USER {user_name}"
                )
            return self._user_row(s, user)

    @staticmethod
    def _user_row(s: Session, user: m.User) -> dict:
        fingerprint = (
            keypair.public_key_fingerprint(user.rsa_public_key) if user.rsa_public_key else None
        )
        return {
            "name": user.name,
            "created_on": user.created_on if user.created_on else datetime.now(UTC),
            "default_role": user.default_role,
            "disabled": bool(user.disabled),
            "has_password": user.password_hash is not None,
            "has_rsa_public_key": user.rsa_public_key is not None,
            "rsa_public_key_fp": fingerprint,
            "owner": user.owner_role,
            "comment": user.comment,
        }

    def _is_last_admin_user(self, s: Session, user: str) -> bool:
        """True when ``user`` is the only enabled user that can use ACCOUNTADMIN."""
        holders = [
            u.name
            for u in s.scalars(select(m.User).where(m.User.disabled.is_(False)))
            if ACCOUNTADMIN in self.usable_roles(s, u.name)
        ]
        return holders == [user]

    # -- roles ------------------------------------------------------------------------------------
    def create_role(
        self,
        ctx: RequestContext,
        name: str,
        *,
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE ROLE: needs CREATE ROLE on the account; the creating role owns the new role."""
        role_name = ident(name, kind="role name")
        with self.catalog.transaction() as s:
            self.require(s, ctx, "CREATE ROLE", ACCOUNT)
            existing = s.scalar(select(m.Role).where(m.Role.name == role_name))
            if existing is not None:
                if if_not_exists:
                    return self._role_row(existing)
                raise ObjectExistsError(f"role {role_name} already exists")
            role = m.Role(
                name=role_name, owner_role=self.owner_role_for_create(ctx), comment=comment
            )
            s.add(role)
            s.flush()
            return self._role_row(role)

    def drop_role(self, ctx: RequestContext, name: str, *, if_exists: bool = False) -> None:
        """DROP ROLE: objects the role owned pass to the role that drops it (as the reference)."""
        role_name = ident(name, kind="role name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            role = s.scalar(select(m.Role).where(m.Role.name == role_name))
            if role is None:
                if if_exists:
                    return
                raise ObjectNotFoundError(f"role {role_name} does not exist or not authorized")
            if role_name in SYSTEM_ROLES:
                raise InvalidArgumentError(f"system role {role_name} cannot be dropped")
            self.require_owner(s, ctx, role)
            if role_name == ctx.role:
                raise InvalidStateError(f"cannot drop role {role_name}: it is the current role")
            for obj in owned_by(s, role_name):
                obj.owner_role = ctx.role
            s.execute(
                delete(m.RoleGrant).where(
                    or_(
                        m.RoleGrant.role == role_name,
                        (m.RoleGrant.grantee_type == "ROLE") & (m.RoleGrant.grantee == role_name),
                    )
                )
            )
            s.execute(delete(m.Grant).where(m.Grant.grantee_role == role_name))
            for token in s.scalars(select(m.Token).where(m.Token.role == role_name)):
                token.revoked = True
            self.on_drop(s, role)
            s.delete(role)

    def show_roles(self, ctx: RequestContext) -> list[dict]:
        with self.catalog.transaction() as s:
            return [self._role_row(r) for r in s.scalars(select(m.Role).order_by(m.Role.name))]

    @staticmethod
    def _role_row(role: m.Role) -> dict:
        return {
            "name": role.name,
            "created_on": role.created_on if role.created_on else datetime.now(UTC),
            "owner": role.owner_role,
            "comment": role.comment,
        }

    def _require_role_admin(self, s: Session, ctx: RequestContext, role: m.Role) -> None:
        """Granting or revoking a role needs ownership of it (ACCOUNTADMIN owns system roles)."""
        roles = self._roles(s, ctx)
        if ACCOUNTADMIN in roles or role.owner_role in roles:
            return
        raise PermissionDeniedError(
            f"insufficient privileges: role {ctx.role} does not own ROLE {role.name} and so "
            f"cannot grant or revoke it"
        )

    def grant_role(
        self,
        ctx: RequestContext,
        role: str,
        *,
        to_user: str | None = None,
        to_role: str | None = None,
    ) -> None:
        """GRANT ROLE r TO USER u / TO ROLE p (p then inherits r's privileges)."""
        if (to_user is None) == (to_role is None):
            raise InvalidArgumentError("GRANT ROLE needs exactly one of to_user or to_role")
        role_name = ident(role, kind="role name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            granted = self._role(s, role_name)
            self._require_role_admin(s, ctx, granted)
            if to_user is not None:
                user = self._user(s, ident(to_user, kind="user name"))
                self._add_role_grant(s, role_name, "USER", user.name, granted_by=ctx.role)
                return
            parent = self._role(s, ident(to_role, kind="role name"))  # type: ignore[arg-type]
            if parent.name == role_name or parent.name in self.effective_roles(s, role_name):
                raise InvalidArgumentError(
                    f"granting role {role_name} to role {parent.name} would create a cycle in "
                    f"the role hierarchy ({parent.name} is already granted to {role_name})"
                )
            self._add_role_grant(s, role_name, "ROLE", parent.name, granted_by=ctx.role)

    def revoke_role(
        self,
        ctx: RequestContext,
        role: str,
        *,
        from_user: str | None = None,
        from_role: str | None = None,
    ) -> None:
        if (from_user is None) == (from_role is None):
            raise InvalidArgumentError("REVOKE ROLE needs exactly one of from_user or from_role")
        role_name = ident(role, kind="role name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            granted = self._role(s, role_name)
            self._require_role_admin(s, ctx, granted)
            grantee: m.User | m.Role
            if from_user is not None:
                grantee_type, grantee = "USER", self._user(s, ident(from_user, kind="user name"))
            else:
                grantee_type = "ROLE"
                grantee = self._role(s, ident(str(from_role), kind="role name"))
            row = s.scalar(
                select(m.RoleGrant).where(
                    m.RoleGrant.role == role_name,
                    m.RoleGrant.grantee_type == grantee_type,
                    m.RoleGrant.grantee == grantee.name,
                )
            )
            if row is None:
                raise ObjectNotFoundError(
                    f"role {role_name} is not granted to {grantee_type.lower()} {grantee.name}"
                )
            s.delete(row)
            s.flush()
            if grantee_type == "USER" and role_name == ACCOUNTADMIN:
                holders = [
                    u.name
                    for u in s.scalars(select(m.User).where(m.User.disabled.is_(False)))
                    if ACCOUNTADMIN in self.usable_roles(s, u.name)
                ]
                if not holders:
                    raise InvalidStateError(
                        f"cannot revoke ACCOUNTADMIN from user {grantee.name}: no other user "
                        "would hold it"
                    )
