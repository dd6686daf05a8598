"""Securable objects: their type names, how to find one by type and name, how to print one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import InvalidArgumentError
from neve.identifiers import ident, qualify, quote, split_name
from neve.security.privileges import normalize_type

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
    m.Role: "ROLE",
    m.User: "USER",
}
CLASSES: dict[str, type] = {name: cls for cls, name in OBJECT_TYPES.items()}
SCHEMA_LEVEL = {"MODEL", "IMAGE REPOSITORY", "NETWORK RULE", "SERVICE", "FUNCTION"}
ACCOUNT_LEVEL = {"COMPUTE POOL", "INTEGRATION", "ROLE", "USER", "DATABASE"}


def object_type(obj: Any) -> str:
    return ACCOUNT if obj == ACCOUNT else OBJECT_TYPES[type(obj)]


def object_id(obj: Any) -> int:
    return 0 if obj == ACCOUNT else int(obj.id)


def object_name(obj: Any, s: Session | None = None) -> str:
    """The name an object is addressed by: qualified (db.schema.name) for schema-level objects."""
    if obj == ACCOUNT:
        return ACCOUNT
    s = s or object_session(obj)
    if isinstance(obj, m.Schema):
        db = s.get(m.Database, obj.database_id) if s is not None else None
        return f"{quote(db.name)}.{quote(obj.name)}" if db is not None else quote(obj.name)
    schema_id = getattr(obj, "schema_id", None)
    if schema_id is not None and s is not None:
        return str(lookup.qualified(s, schema_id, obj.name))
    return quote(obj.name)


def object_label(obj: Any, s: Session | None = None) -> str:
    """``SERVICE ML.REGISTRY.FORECAST_SVC``: how errors and SHOW GRANTS name an object."""
    if obj == ACCOUNT:
        return ACCOUNT
    return f"{object_type(obj)} {object_name(obj, s)}"


def owner_of(obj: Any) -> str | None:
    from neve.context import ACCOUNTADMIN

    return ACCOUNTADMIN if obj == ACCOUNT else getattr(obj, "owner_role", None)


def containers(s: Session, obj: Any) -> list[Any]:
    """The database and schema an object lives in (outermost first)."""
    if obj == ACCOUNT or isinstance(obj, m.Database):
        return []
    if isinstance(obj, m.Schema):
        db = s.get(m.Database, obj.database_id)
        return [db] if db is not None else []
    schema_id = getattr(obj, "schema_id", None)
    if schema_id is None:
        return []
    sch = s.get(m.Schema, schema_id)
    if sch is None:
        return []
    db = s.get(m.Database, sch.database_id)
    return [x for x in (db, sch) if x is not None]


def resolve(s: Session, ctx: RequestContext, object_type: str, name: str | None) -> Any:
    """Find the object a GRANT/REVOKE/SHOW GRANTS names: ``("SERVICE", "ml.registry.svc")``."""
    kind = normalize_type(object_type)
    if kind == ACCOUNT:
        return ACCOUNT
    if not name:
        raise InvalidArgumentError(f"{kind} name is required")
    label = kind.lower()
    if kind in ACCOUNT_LEVEL:
        return lookup.account_level(s, CLASSES[kind], ident(name, kind=f"{label} name"), label)
    if kind == "SCHEMA":
        parts = split_name(name)
        if len(parts) > 2:
            raise InvalidArgumentError(f"invalid schema name {name!r}: at most database.schema")
        sch = ident(parts[-1], kind="schema name")
        db = ident(parts[0], kind="database name") if len(parts) == 2 else ctx.database
        if db is None:
            raise InvalidArgumentError(
                f"schema name {name!r} is not qualified and no current database is set"
            )
        return lookup.schema(s, db, sch)
    qn = qualify(name, database=ctx.database, schema=ctx.schema, kind=label)
    return lookup.in_schema(s, CLASSES[kind], qn, label)


def by_id(s: Session, object_type: str, oid: int) -> Any:
    if object_type == ACCOUNT:
        return ACCOUNT
    cls = CLASSES.get(object_type)
    return s.get(cls, oid) if cls is not None else None


def owned_by(s: Session, role: str) -> list[Any]:
    """Every object whose owner is ``role`` (for SHOW GRANTS TO ROLE and DROP ROLE)."""
    found: list[Any] = []
    for cls in OBJECT_TYPES:
        owner = getattr(cls, "owner_role", None)  # functions are owned through their service
        if owner is not None:
            found.extend(s.scalars(select(cls).where(owner == role)))
    return found
