"""Find catalog objects by (normalized) name, raising errors that say what was looked for where."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.errors import ObjectNotFoundError
from neve.identifiers import QualifiedName, ident, quote

T = TypeVar("T")

#: Aliases every model has: its default version, its first and its last.
SYSTEM_ALIASES = ("DEFAULT", "FIRST", "LAST")


def database(s: Session, name: str) -> m.Database:
    obj = s.scalar(select(m.Database).where(m.Database.name == name))
    if obj is None:
        raise ObjectNotFoundError(f"database {name} does not exist or not authorized")
    return obj


def schema(s: Session, db: str, name: str) -> m.Schema:
    obj = s.scalar(
        select(m.Schema).join(m.Database).where(m.Database.name == db, m.Schema.name == name)
    )
    if obj is None:
        database(s, db)  # the more precise error first
        raise ObjectNotFoundError(f"schema {db}.{name} does not exist or not authorized")
    return obj


def in_schema(s: Session, cls: type[T], qn: QualifiedName, kind: str) -> T:
    """An object of ``cls`` (with schema_id and name) addressed db.schema.name."""
    sch = schema(s, qn.database, qn.schema)
    obj = s.scalar(select(cls).where(cls.schema_id == sch.id, cls.name == qn.name))  # type: ignore[attr-defined,arg-type]
    if obj is None:
        raise ObjectNotFoundError(f"{kind} {qn} does not exist or not authorized")
    return obj


def account_level(s: Session, cls: type[T], name: str, kind: str) -> T:
    """An account-level object (compute pool, integration, user, role) by name."""
    obj = s.scalar(select(cls).where(cls.name == name))  # type: ignore[attr-defined,arg-type]
    if obj is None:
        raise ObjectNotFoundError(f"{kind} {name} does not exist or not authorized")
    return obj


def qualified(s: Session, schema_id: int, name: str) -> QualifiedName:
    sch = s.get(m.Schema, schema_id)
    assert sch is not None
    return QualifiedName(sch.database.name, sch.name, name)


def model_versions(s: Session, model: m.Model) -> list[m.ModelVersion]:
    """A model's versions, oldest first."""
    return list(
        s.scalars(
            select(m.ModelVersion)
            .where(m.ModelVersion.model_id == model.id)
            .order_by(m.ModelVersion.id)
        )
    )


def model_version(
    s: Session, model: m.Model, qn: QualifiedName, version: str | None = None
) -> m.ModelVersion:
    """A version by name, by user alias, or by DEFAULT / FIRST / LAST (None: DEFAULT): the
    one rule the registry, services and SQL (``model!method``) resolve versions by."""
    versions = model_versions(s, model)
    if version is None and not versions:
        raise ObjectNotFoundError(f"model {qn} has no versions")
    name = "DEFAULT" if version is None else ident(version, kind="version name or alias")
    for row in versions:
        if row.name == name:
            return row
    for row in versions:
        if name in (row.aliases or []):
            return row
    if versions and name in SYSTEM_ALIASES:
        if name == "FIRST":
            return versions[0]
        if name == "LAST":
            return versions[-1]
        default = next((v for v in versions if v.name == model.default_version), None)
        return default or versions[-1]
    known = ", ".join(quote(v.name) for v in versions) or "none"
    raise ObjectNotFoundError(
        f"model {qn} has no version or alias {quote(name)}; versions: {known}"
    )
