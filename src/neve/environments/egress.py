"""Schema objects that govern where builds may reach: network rules and external access integrations, with the scoping helpers every environment object uses (``EnvironmentManager``'s first layer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments import network
from neve.environments.jobs import BuildJobs
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import QualifiedName, ident, qualify, split_name
from neve.like import filter_like
from neve.security.objects import ACCOUNT

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

REPO_PRIVILEGES = ("READ", "WRITE", "SERVICE READ", "SERVICE WRITE")

#: An object in a schema: an image repository or a network rule.
_Obj = TypeVar("_Obj", "m.ImageRepository", "m.NetworkRule")
#: Anything DROP finds: those, or an (account-level) external access integration.
_Owned = TypeVar("_Owned", "m.ImageRepository", "m.NetworkRule", "m.ExternalAccessIntegration")
#: What messages call each object class.
_KIND = {
    m.ImageRepository: "image repository",
    m.NetworkRule: "network rule",
    m.ExternalAccessIntegration: "external access integration",
}
#: A SHOW/CREATE row of a schema-level object: (session, its name, the object) -> dict.
_RowOf = Callable[[Session, QualifiedName, Any], dict]


class EgressObjects:
    def __init__(self, catalog: Catalog, settings: Settings, security: SecurityManager) -> None:
        self.catalog = catalog
        self.settings = settings
        self.security = security
        self.jobs = BuildJobs(catalog, settings, security)

    def close(self) -> None:
        """Cancel builds running in this process (their jobs end FAILED) and wait briefly."""
        self.jobs.close()

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _qn(ctx: RequestContext, name: str | QualifiedName, kind: str) -> QualifiedName:
        if isinstance(name, QualifiedName):
            return name
        return qualify(name, database=ctx.database, schema=ctx.schema, kind=kind)

    def _scope(
        self, s: Session, ctx: RequestContext, in_database: str | None, in_schema: str | None
    ) -> tuple[str | None, str | None]:
        """(database, schema) a SHOW ... IN is limited to (None: any)."""
        if in_schema:
            parts = split_name(in_schema)
            if len(parts) > 2:
                raise InvalidArgumentError(f"invalid schema name {in_schema!r}")
            sch = ident(parts[-1], kind="schema name")
            db = ident(parts[0], kind="database name") if len(parts) == 2 else ctx.database
            if db is None:
                raise InvalidArgumentError(
                    f"schema name {in_schema!r} is not qualified and no current database is set"
                )
            lookup.schema(s, db, sch)
            return db, sch
        if in_database:
            db = ident(in_database, kind="database name")
            lookup.database(s, db)
            return db, None
        return None, None

    @staticmethod
    def _in_scope(qn: QualifiedName, db: str | None, sch: str | None) -> bool:
        return (db is None or qn.database == db) and (sch is None or qn.schema == sch)

    def _create_in_schema(
        self,
        ctx: RequestContext,
        qn: QualifiedName,
        cls: type[_Obj],
        if_not_exists: bool,
        row: _RowOf,
        **fields: Any,
    ) -> dict:
        """CREATE <kind> qn: needs CREATE <KIND> on the schema; IF NOT EXISTS returns the existing.

        A concurrent create of the same name surfaces as ``IntegrityError``: callers handle it.
        """
        kind = _KIND[cls]
        with self.catalog.transaction() as s:
            sch = lookup.schema(s, qn.database, qn.schema)
            self.security.require(s, ctx, f"CREATE {kind.upper()}", sch)
            existing = s.scalar(select(cls).where(cls.schema_id == sch.id, cls.name == qn.name))
            if existing is not None:
                if if_not_exists:
                    return row(s, qn, existing)
                raise ObjectExistsError(f"{kind} {qn} already exists")
            obj = cls(
                schema_id=sch.id,
                name=qn.name,
                owner_role=self.security.owner_role_for_create(ctx),
                **fields,
            )
            s.add(obj)
            s.flush()
            return row(s, qn, obj)

    def _owned_for_drop(
        self,
        s: Session,
        ctx: RequestContext,
        cls: type[_Owned],
        name: QualifiedName | str,
        if_exists: bool,
    ) -> _Owned | None:
        """The object a DROP names (schema-level by QualifiedName, else account-level), once its
        owner is checked; None when it does not exist and IF EXISTS was given."""
        try:
            if isinstance(name, QualifiedName):
                obj = lookup.in_schema(s, cls, name, _KIND[cls])
            else:
                obj = lookup.account_level(s, cls, name, _KIND[cls])
        except ObjectNotFoundError:
            if if_exists:
                return None
            raise
        self.security.require_owner(s, ctx, obj)
        return obj

    def _show_in_schema(
        self,
        ctx: RequestContext,
        cls: type[_Obj],
        in_database: str | None,
        in_schema: str | None,
        visible: Callable[[Session, RequestContext, _Obj], bool],
        row: _RowOf,
    ) -> list[dict]:
        """SHOW <objects> [IN DATABASE d | IN SCHEMA s]: those in scope that ``visible`` lets
        the role see, by name."""
        with self.catalog.transaction() as s:
            db, sch = self._scope(s, ctx, in_database, in_schema)
            rows = []
            for obj in s.scalars(select(cls).order_by(cls.name)):
                qn = lookup.qualified(s, obj.schema_id, obj.name)
                if self._in_scope(qn, db, sch) and visible(s, ctx, obj):
                    rows.append(row(s, qn, obj))
        return rows

    def _may_use(self, s: Session, ctx: RequestContext, obj: Any) -> bool:
        """The role owns ``obj`` or holds USAGE on it."""
        return self.security.is_owner(s, ctx, obj) or self.security.has_privilege(
            s, ctx, "USAGE", obj
        )

    # -- network rules ----------------------------------------------------------------------------
    @staticmethod
    def _rule_row(s: Session, qn: QualifiedName, rule: m.NetworkRule) -> dict:
        return {
            "created_on": rule.created_on,
            "name": rule.name,
            "database_name": qn.database,
            "schema_name": qn.schema,
            "owner": rule.owner_role,
            "comment": rule.comment,
            "type": rule.type,
            "mode": rule.mode,
            "entries_in_valuelist": len(rule.value_list or []),
            "value_list": list(rule.value_list or []),
        }

    def create_network_rule(
        self,
        ctx: RequestContext,
        name: str,
        mode: str = "EGRESS",
        type: str = "HOST_PORT",  # noqa: A002 (the statement's keyword)
        value_list: list[str] | tuple[str, ...] | None = None,
        *,
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE NETWORK RULE name MODE = 'EGRESS' TYPE = 'HOST_PORT' VALUE_LIST = (...)."""
        qn = self._qn(ctx, name, "network rule")
        mode_v, type_v, entries = network.normalize_rule(str(qn), mode, type, value_list)
        try:
            return self._create_in_schema(
                ctx,
                qn,
                m.NetworkRule,
                if_not_exists,
                self._rule_row,
                mode=mode_v,
                type=type_v,
                value_list=entries,
                comment=comment,
            )
        except IntegrityError:
            raise ObjectExistsError(f"network rule {qn} already exists") from None

    def drop_network_rule(
        self, ctx: RequestContext, name: str | QualifiedName, if_exists: bool = False
    ) -> bool:
        """DROP NETWORK RULE: refused while an integration lists it (naming them)."""
        qn = self._qn(ctx, name, "network rule")
        with self.catalog.transaction() as s:
            rule = self._owned_for_drop(s, ctx, m.NetworkRule, qn, if_exists)
            if rule is None:
                return False
            users = [
                i.name
                for i in s.scalars(select(m.ExternalAccessIntegration))
                if str(qn) in (i.allowed_network_rules or [])
            ]
            if users:
                raise ObjectInUseError(
                    f"network rule {qn} cannot be dropped: external access integration(s) "
                    f"{', '.join(sorted(users))} use it; drop or change those first"
                )
            self.security.on_drop(s, rule)
            s.delete(rule)
        return True

    def show_network_rules(
        self,
        ctx: RequestContext,
        in_database: str | None = None,
        in_schema: str | None = None,
        like: str | None = None,
    ) -> list[dict]:
        rows = self._show_in_schema(
            ctx, m.NetworkRule, in_database, in_schema, self._may_use, self._rule_row
        )
        return filter_like(rows, like)

    def describe_network_rule(self, ctx: RequestContext, name: str | QualifiedName) -> dict:
        qn = self._qn(ctx, name, "network rule")
        with self.catalog.transaction() as s:
            rule = lookup.in_schema(s, m.NetworkRule, qn, "network rule")
            self.security.require(s, ctx, "USAGE", rule)
            return self._rule_row(s, qn, rule)

    # -- external access integrations -------------------------------------------------------------
    @staticmethod
    def _integration_row(integ: m.ExternalAccessIntegration) -> dict:
        # SHOW INTEGRATIONS lists API integrations too (neve.sql.external), as on the reference
        api = integ.integration_type == "API"
        return {
            "name": integ.name,
            "type": "EXTERNAL_API" if api else "EXTERNAL_ACCESS",
            "category": "API" if api else "SECURITY",
            "enabled": bool(integ.enabled),
            "comment": integ.comment,
            "created_on": integ.created_on,
            "allowed_network_rules": list(integ.allowed_network_rules or []),
            "owner": integ.owner_role,
        }

    def create_external_access_integration(
        self,
        ctx: RequestContext,
        name: str,
        allowed_network_rules: list[str] | tuple[str, ...] | None = None,
        enabled: bool = True,
        *,
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE EXTERNAL ACCESS INTEGRATION name ALLOWED_NETWORK_RULES = (r, ...) ENABLED = b."""
        integ_name = ident(name, kind="integration name")
        if isinstance(allowed_network_rules, str):
            allowed_network_rules = [allowed_network_rules]
        rules = list(allowed_network_rules or [])
        if not rules:
            raise InvalidArgumentError(
                f"external access integration {integ_name}: ALLOWED_NETWORK_RULES is empty; "
                "name at least one network rule"
            )
        if not isinstance(enabled, bool):
            raise InvalidArgumentError(
                f"external access integration {integ_name}: ENABLED must be TRUE or FALSE"
            )
        try:
            with self.catalog.transaction() as s:
                self.security.require(s, ctx, "CREATE INTEGRATION", ACCOUNT)
                existing = s.scalar(
                    select(m.ExternalAccessIntegration).where(
                        m.ExternalAccessIntegration.name == integ_name
                    )
                )
                if existing is not None:
                    if if_not_exists:
                        return self._integration_row(existing)
                    raise ObjectExistsError(
                        f"external access integration {integ_name} already exists"
                    )
                resolved = []
                for raw in rules:
                    qn = self._qn(ctx, raw, "network rule")
                    rule = lookup.in_schema(s, m.NetworkRule, qn, "network rule")
                    self.security.require(s, ctx, "USAGE", rule)
                    if str(qn) not in resolved:
                        resolved.append(str(qn))
                integ = m.ExternalAccessIntegration(
                    name=integ_name,
                    allowed_network_rules=resolved,
                    enabled=enabled,
                    owner_role=self.security.owner_role_for_create(ctx),
                    comment=comment,
                )
                s.add(integ)
                s.flush()
                return self._integration_row(integ)
        except IntegrityError:
            raise ObjectExistsError(
                f"external access integration {integ_name} already exists"
            ) from None

    def drop_external_access_integration(
        self, ctx: RequestContext, name: str, if_exists: bool = False
    ) -> bool:
        integ_name = ident(name, kind="integration name")
        with self.catalog.transaction() as s:
            integ = self._owned_for_drop(s, ctx, m.ExternalAccessIntegration, integ_name, if_exists)
            if integ is None:
                return False
            self.security.on_drop(s, integ)
            s.delete(integ)
        return True

    def show_external_access_integrations(
        self, ctx: RequestContext, like: str | None = None
    ) -> list[dict]:
        with self.catalog.transaction() as s:
            rows = [
                self._integration_row(i)
                for i in s.scalars(
                    select(m.ExternalAccessIntegration).order_by(m.ExternalAccessIntegration.name)
                )
                if self._may_use(s, ctx, i)
            ]
        return filter_like(rows, like)

    def describe_external_access_integration(self, ctx: RequestContext, name: str) -> dict:
        integ_name = ident(name, kind="integration name")
        with self.catalog.transaction() as s:
            integ = lookup.account_level(
                s, m.ExternalAccessIntegration, integ_name, "external access integration"
            )
            if not self._may_use(s, ctx, integ):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} needs USAGE on INTEGRATION "
                    f"{integ_name}"
                )
            return self._integration_row(integ)
