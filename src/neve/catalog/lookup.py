"""Find catalog objects by (normalized) name, raising errors that say what was looked for where."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.errors import ObjectNotFoundError
from neve.identifiers import QualifiedName

T = TypeVar("T")


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
