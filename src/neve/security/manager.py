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
key-pair JWTs, ``authenticate_request``) lives in ``neve.security.auth`` and is mixed in here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, event, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import ACCOUNTADMIN, ADMIN_USER, PUBLIC, SYSADMIN, RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import ident
from neve.security import keypair, passwords
from neve.security.auth import AuthenticationMixin
from neve.security.objects import (
    ACCOUNT,
    OBJECT_TYPES,
    by_id,
    containers,
    object_id,
    object_label,
    object_name,
    object_type,
    owned_by,
    owner_of,
    resolve,
)
from neve.security.privileges import (
    ALL,
    OWNERSHIP,
    normalize_privilege,
    normalize_type,
    privileges_for_grant,
    satisfying,
)
from neve.security.throttle import LoginThrottle

log = logging.getLogger("neve.security")

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

# ACCOUNTADMIN > SYSADMIN > PUBLIC: each role on the left inherits the one on its right.
SYSTEM_ROLES = (ACCOUNTADMIN, SYSADMIN, PUBLIC)
# What SYSADMIN may do on the account from the start (ACCOUNTADMIN may revoke it).
SYSADMIN_ACCOUNT_PRIVILEGES = ("CREATE DATABASE", "CREATE COMPUTE POOL")
_UNSET: Any = object()


class SecurityManager(AuthenticationMixin):
    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self._bootstrapped = False
        self._bootstrap_lock = threading.Lock()
        self.login_throttle = LoginThrottle(
            max_failures=settings.security.login_max_failures,
            lockout_s=settings.security.login_lockout_secs,
        )
        # The system roles and the admin user exist before anything asks about them.
        self.bootstrap()
        # Incremented after every committed change to users, roles, grants, ownership, tokens.
        self.generation = 0
        self._generation_lock = threading.Lock()
        # Called after each bump (the route publisher tells the ingress proxies at once).
        self._listeners: list[Callable[[], None]] = []

    # -- change tracking --------------------------------------------------------------------------
    def _changed_on_commit(self, s: Session) -> None:
        """Bump ``generation`` once ``s`` commits: caches of security answers (the gateway's)
        drop everything they read before. After the commit, so nothing re-caches old state."""
        if not s.info.get("neve_security_changed"):
            s.info["neve_security_changed"] = True
            event.listen(s, "after_commit", self._bump, once=True)

    def _bump(self, _session: Session | None = None) -> None:
        with self._generation_lock:
            self.generation += 1
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a cache that could not be told must not fail the change
                log.exception("a security change listener failed")

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every committed security change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # -- bootstrap --------------------------------------------------------------------------------
    def bootstrap(self, *, admin_password: str | None = None) -> None:
        """Create the admin user and the system roles if missing (idempotent, race-safe)."""
        if self._bootstrapped and admin_password is None:
            return
        with self._bootstrap_lock:
            for attempt in range(3):
                try:
                    with self.catalog.transaction() as s:
                        self._bootstrap(s, admin_password)
                    break
                except IntegrityError:  # another process bootstrapped at the same moment
                    if attempt == 2:
                        raise
            self._bootstrapped = True
        self.purge_expired_tokens()

    def _bootstrap(self, s: Session, admin_password: str | None) -> None:
        for name, comment in (
            (ACCOUNTADMIN, "top-level role: every privilege in the account"),
            (SYSADMIN, "creates and manages databases, pools, services"),
            (PUBLIC, "granted to every user and role"),
        ):
            if s.scalar(select(m.Role.id).where(m.Role.name == name)) is None:
                s.add(m.Role(name=name, owner_role=ACCOUNTADMIN, comment=comment))
        for child, parent in ((SYSADMIN, ACCOUNTADMIN), (PUBLIC, SYSADMIN)):
            self._add_role_grant(s, child, "ROLE", parent, granted_by=ACCOUNTADMIN)
        for privilege in SYSADMIN_ACCOUNT_PRIVILEGES:  # SYSADMIN builds databases and pools
            if (
                s.scalar(
                    select(m.Grant.id).where(
                        m.Grant.privilege == privilege,
                        m.Grant.object_type == ACCOUNT,
                        m.Grant.object_id == 0,
                        m.Grant.grantee_role == SYSADMIN,
                    )
                )
                is None
            ):
                s.add(
                    m.Grant(
                        privilege=privilege,
                        object_type=ACCOUNT,
                        object_id=0,
                        grantee_role=SYSADMIN,
                        granted_by=ACCOUNTADMIN,
                    )
                )
        admin = s.scalar(select(m.User).where(m.User.name == ADMIN_USER))
        if admin is None:
            admin = m.User(name=ADMIN_USER, default_role=ACCOUNTADMIN, comment="local admin")
            s.add(admin)
        if admin_password is not None:
            passwords.check_password_policy(admin_password, user=ADMIN_USER)
            admin.password_hash = passwords.hash_password(admin_password)
        self._add_role_grant(s, ACCOUNTADMIN, "USER", ADMIN_USER, granted_by=ACCOUNTADMIN)
        s.flush()

    @staticmethod
    def _add_role_grant(
        s: Session, role: str, grantee_type: str, grantee: str, *, granted_by: str
    ) -> bool:
        exists = s.scalar(
            select(m.RoleGrant.id).where(
                m.RoleGrant.role == role,
                m.RoleGrant.grantee_type == grantee_type,
                m.RoleGrant.grantee == grantee,
            )
        )
        if exists is None:
            s.add(
                m.RoleGrant(
                    role=role, grantee_type=grantee_type, grantee=grantee, granted_by=granted_by
                )
            )
            s.flush()
        return exists is None

    # -- role hierarchy ---------------------------------------------------------------------------
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
        if ACCOUNTADMIN in seen:
            seen.add(SYSADMIN)
        return seen

    def usable_roles(self, s: Session, user: str) -> set[str]:
        """Roles the user may USE: those granted to them and every role those inherit."""
        roles = {PUBLIC}
        for (granted,) in s.execute(
            select(m.RoleGrant.role).where(
                m.RoleGrant.grantee_type == "USER", m.RoleGrant.grantee == user
            )
        ):
            roles |= self.effective_roles(s, granted)
        return roles

    def owner_role_for_create(self, ctx: RequestContext) -> str:
        return ctx.role

    def use_role(self, ctx: RequestContext, role: str) -> RequestContext:
        """USE ROLE: a context with ``role``, if the user was granted it (directly or inherited)."""
        name = ident(role, kind="role name")
        with self.catalog.transaction() as s:
            self._role(s, name)
            if name not in self.usable_roles(s, ctx.user):
                raise PermissionDeniedError(f"role {name} is not granted to user {ctx.user}")
        return ctx.with_(role=name)

    # -- checks -----------------------------------------------------------------------------------
    def _roles(self, s: Session, ctx: RequestContext) -> set[str]:
        if ctx.role == ACCOUNTADMIN:
            return {ACCOUNTADMIN, SYSADMIN, PUBLIC}
        return self.effective_roles(s, ctx.role)

    def is_owner(self, s: Session, ctx: RequestContext, obj: Any) -> bool:
        owner = owner_of(obj)
        return owner is not None and owner in self._roles(s, ctx)

    def _holds(
        self, s: Session, roles: set[str], privilege: str, obj: Any, *, grant_option: bool = False
    ) -> bool:
        if not grant_option and owner_of(obj) in roles:
            return True
        query = select(m.Grant.id).where(
            m.Grant.object_type == object_type(obj),
            m.Grant.object_id == object_id(obj),
            m.Grant.privilege.in_([privilege, ALL] if grant_option else satisfying(privilege)),
            m.Grant.grantee_role.in_(roles),
        )
        if grant_option:
            query = query.where(m.Grant.grant_option.is_(True))
        return s.scalar(query.limit(1)) is not None

    def _missing_container(self, s: Session, roles: set[str], privilege: str, obj: Any) -> Any:
        """The database or schema whose USAGE the role lacks to reach ``obj``, or None."""
        chain = containers(s, obj)
        if isinstance(obj, m.Schema) and privilege != "USAGE":
            chain.append(obj)  # CREATE ... in a schema also needs USAGE on the schema
        for container in chain:
            if not self._holds(s, roles, "USAGE", container):
                return container
        return None

    def has_privilege(self, s: Session, ctx: RequestContext, privilege: str, obj: Any) -> bool:
        roles = self._roles(s, ctx)
        if ACCOUNTADMIN in roles:
            return True
        privilege = normalize_privilege(privilege)
        if self._missing_container(s, roles, privilege, obj) is not None:
            return False
        return self._holds(s, roles, privilege, obj)

    def require(self, s: Session, ctx: RequestContext, privilege: str, obj: Any) -> None:
        roles = self._roles(s, ctx)
        if ACCOUNTADMIN in roles:
            return
        privilege = normalize_privilege(privilege)
        missing = self._missing_container(s, roles, privilege, obj)
        if missing is not None:
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} needs USAGE on "
                f"{object_label(missing, s)} to use {object_label(obj, s)}"
            )
        if not self._holds(s, roles, privilege, obj):
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} needs {privilege} on "
                f"{object_label(obj, s)}"
            )

    def require_owner(self, s: Session, ctx: RequestContext, obj: Any) -> None:
        roles = self._roles(s, ctx)
        if ACCOUNTADMIN in roles:
            return
        if owner_of(obj) not in roles:
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} does not own {object_label(obj, s)} "
                f"(owner: {owner_of(obj)})"
            )
        missing = self._missing_container(s, roles, OWNERSHIP, obj)
        if missing is not None:
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} needs USAGE on "
                f"{object_label(missing, s)} to use {object_label(obj, s)}"
            )

    def on_drop(self, s: Session, obj: Any) -> None:
        self._changed_on_commit(s)
        s.execute(
            delete(m.Grant).where(
                m.Grant.object_type == object_type(obj), m.Grant.object_id == object_id(obj)
            )
        )

    # -- users ------------------------------------------------------------------------------------
    def _user(self, s: Session, name: str) -> m.User:
        row = s.scalar(select(m.User).where(m.User.name == name))
        if row is None:
            raise ObjectNotFoundError(f"user {name} does not exist or not authorized")
        return row

    def _role(self, s: Session, name: str) -> m.Role:
        row = s.scalar(select(m.Role).where(m.Role.name == name))
        if row is None:
            raise ObjectNotFoundError(f"role {name} does not exist or not authorized")
        return row

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
                    names = ", ".join(sorted({d.grantee_role for d in dependents}))
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
    def _onward_grants(s: Session, root: m.Grant, *, independent: set[str]) -> list[m.Grant]:
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
