"""Access control: the role hierarchy, privilege checks, the system roles and change tracking.

The first layer of ``SecurityManager`` (``access`` -> ``directory`` -> ``grants``, with
authentication in ``auth``); see ``neve.security.manager`` for the interface other components use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import ACCOUNTADMIN, ADMIN_USER, PUBLIC, SYSADMIN, RequestContext
from neve.errors import (
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import ident
from neve.security import passwords
from neve.security.objects import (
    ACCOUNT,
    containers,
    object_id,
    object_label,
    object_type,
    owner_of,
)
from neve.security.privileges import (
    ALL,
    OWNERSHIP,
    normalize_privilege,
    satisfying,
)

log = logging.getLogger("neve.security")

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings

# ACCOUNTADMIN > SYSADMIN > PUBLIC: each role on the left inherits the one on its right.
SYSTEM_ROLES = (ACCOUNTADMIN, SYSADMIN, PUBLIC)
# What SYSADMIN may do on the account from the start (ACCOUNTADMIN may revoke it).
SYSADMIN_ACCOUNT_PRIVILEGES = ("CREATE DATABASE", "CREATE COMPUTE POOL")
_UNSET: Any = object()


class AccessControl:
    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self._bootstrapped = False
        self._bootstrap_lock = threading.Lock()
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

    # -- look-ups -------------------------------------------------------------------------------
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
