"""Databases and schemas: CREATE / DROP / SHOW / DESCRIBE, with ownership and IF [NOT] EXISTS.

A new database gets a PUBLIC schema (as on the reference platform). The creating role owns what
it creates. Dropping a database or schema that still holds services or models is refused with
the names of what is in the way (their processes and artifacts need their own DROP); other
objects in it (image repositories, network rules, functions) go with it, and so do its
warehouse tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import InvalidArgumentError, ObjectExistsError, ObjectInUseError
from neve.identifiers import ident, quote, split_name
from neve.security.objects import ACCOUNT

if TYPE_CHECKING:
    from neve.sql.managers import Managers

DEFAULT_SCHEMA = "PUBLIC"


def _schema_name(ctx: RequestContext, raw: str) -> tuple[str, str]:
    parts = split_name(raw)
    if len(parts) > 2:
        raise InvalidArgumentError(f"invalid schema name {raw!r}: at most database.schema")
    sch = ident(parts[-1], kind="schema name")
    db = ident(parts[0], kind="database name") if len(parts) == 2 else ctx.database
    if db is None:
        raise InvalidArgumentError(
            f"schema name {raw!r} is not qualified and no current database is set "
            "(USE DATABASE, or write database.schema)"
        )
    return db, sch


def _database_row(db: m.Database) -> dict:
    return {
        "created_on": db.created_on,
        "name": db.name,
        "owner": db.owner_role,
        "comment": db.comment,
    }


def _schema_row(db: m.Database, sch: m.Schema) -> dict:
    return {
        "created_on": sch.created_on,
        "name": sch.name,
        "database_name": db.name,
        "owner": sch.owner_role,
        "comment": sch.comment,
    }


def create_database(
    account: Managers,
    ctx: RequestContext,
    name: str,
    *,
    if_not_exists: bool = False,
    comment: str | None = None,
) -> dict:
    db_name = ident(name, kind="database name")
    if "__" in db_name:
        raise InvalidArgumentError(
            f"database name {db_name} must not contain '__' (reserved by the warehouse)"
        )
    security = account.security
    with account.catalog.transaction() as s:
        existing = s.scalar(select(m.Database).where(m.Database.name == db_name))
        if existing is not None:
            if if_not_exists:
                return _database_row(existing)
            raise ObjectExistsError(f"database {quote(db_name)} already exists")
        security.require(s, ctx, "CREATE DATABASE", ACCOUNT)
        owner = security.owner_role_for_create(ctx)
        db = m.Database(name=db_name, owner_role=owner, comment=comment)
        s.add(db)
        s.flush()
        s.add(m.Schema(database_id=db.id, name=DEFAULT_SCHEMA, owner_role=owner))
        s.flush()
        return _database_row(db)


def create_schema(
    account: Managers,
    ctx: RequestContext,
    name: str,
    *,
    if_not_exists: bool = False,
    comment: str | None = None,
) -> dict:
    db_name, sch_name = _schema_name(ctx, name)
    security = account.security
    with account.catalog.transaction() as s:
        db = lookup.database(s, db_name)
        existing = s.scalar(
            select(m.Schema).where(m.Schema.database_id == db.id, m.Schema.name == sch_name)
        )
        if existing is not None:
            if if_not_exists:
                return _schema_row(db, existing)
            raise ObjectExistsError(f"schema {quote(db_name)}.{quote(sch_name)} already exists")
        security.require(s, ctx, "CREATE SCHEMA", db)
        sch = m.Schema(
            database_id=db.id,
            name=sch_name,
            owner_role=security.owner_role_for_create(ctx),
            comment=comment,
        )
        s.add(sch)
        s.flush()
        return _schema_row(db, sch)


def _blockers(s: Session, schema_ids: list[int]) -> list[str]:
    found = []
    kinds: tuple[tuple[Any, str], ...] = ((m.Service, "service"), (m.Model, "model"))
    for cls, kind in kinds:
        for obj in s.scalars(select(cls).where(cls.schema_id.in_(schema_ids))):
            found.append(f"{kind} {lookup.qualified(s, obj.schema_id, obj.name)}")
    return found


def _drop_grants(account: Managers, s: Session, schema_ids: list[int]) -> None:
    """Grants on the objects inside the schemas (the rows themselves cascade)."""
    for cls in (m.ImageRepository, m.NetworkRule, m.Function, m.Service, m.Model):
        for obj in s.scalars(select(cls).where(cls.schema_id.in_(schema_ids))):  # type: ignore[attr-defined]
            account.security.on_drop(s, obj)


def drop_database(
    account: Managers, ctx: RequestContext, name: str, *, if_exists: bool = False
) -> bool:
    db_name = ident(name, kind="database name")
    with account.catalog.transaction() as s:
        db = s.scalar(select(m.Database).where(m.Database.name == db_name))
        if db is None:
            if if_exists:
                return False
            lookup.database(s, db_name)  # raises the standard not-found error
        assert db is not None
        account.security.require_owner(s, ctx, db)
        schema_ids = [sch.id for sch in db.schemas]
        blockers = _blockers(s, schema_ids) if schema_ids else []
        if blockers:
            raise ObjectInUseError(
                f"cannot drop database {quote(db_name)}: it still holds {', '.join(blockers)}; "
                "drop them first (DROP SERVICE / DROP MODEL)"
            )
        if schema_ids:
            _drop_grants(account, s, schema_ids)
        for sch in db.schemas:
            account.security.on_drop(s, sch)
        account.security.on_drop(s, db)
        s.delete(db)
    account.sql.warehouse.drop_database(db_name)
    return True


def drop_schema(
    account: Managers, ctx: RequestContext, name: str, *, if_exists: bool = False
) -> bool:
    db_name, sch_name = _schema_name(ctx, name)
    with account.catalog.transaction() as s:
        db = s.scalar(select(m.Database).where(m.Database.name == db_name))
        sch = (
            s.scalar(
                select(m.Schema).where(m.Schema.database_id == db.id, m.Schema.name == sch_name)
            )
            if db is not None
            else None
        )
        if sch is None:
            if if_exists:
                return False
            lookup.schema(s, db_name, sch_name)  # raises naming the database or the schema
        assert sch is not None
        account.security.require_owner(s, ctx, sch)
        blockers = _blockers(s, [sch.id])
        if blockers:
            raise ObjectInUseError(
                f"cannot drop schema {quote(db_name)}.{quote(sch_name)}: it still holds "
                f"{', '.join(blockers)}; drop them first (DROP SERVICE / DROP MODEL)"
            )
        _drop_grants(account, s, [sch.id])
        account.security.on_drop(s, sch)
        s.delete(sch)
    account.sql.warehouse.drop_schema(db_name, sch_name)
    return True


def show_databases(account: Managers, ctx: RequestContext) -> list[dict]:
    security = account.security
    with account.catalog.transaction() as s:
        rows = []
        for db in s.scalars(select(m.Database).order_by(m.Database.name)):
            if security.has_privilege(s, ctx, "USAGE", db):
                rows.append(_database_row(db))
        return rows


def show_schemas(account: Managers, ctx: RequestContext, database: str | None = None) -> list[dict]:
    security = account.security
    with account.catalog.transaction() as s:
        query = select(m.Schema, m.Database).join(m.Database)
        if database is not None:
            db = lookup.database(s, ident(database, kind="database name"))
            query = query.where(m.Schema.database_id == db.id)
        rows = []
        for sch, db in s.execute(query.order_by(m.Database.name, m.Schema.name)):
            if security.has_privilege(s, ctx, "USAGE", sch):
                rows.append(_schema_row(db, sch))
        return rows


def describe_database(account: Managers, ctx: RequestContext, name: str) -> list[dict]:
    db_name = ident(name, kind="database name")
    with account.catalog.transaction() as s:
        db = lookup.database(s, db_name)
        account.security.require(s, ctx, "USAGE", db)
        return [
            {"created_on": sch.created_on, "name": sch.name, "kind": "SCHEMA"}
            for sch in sorted(db.schemas, key=lambda x: x.name)
        ]


def describe_schema(account: Managers, ctx: RequestContext, name: str) -> list[dict]:
    db_name, sch_name = _schema_name(ctx, name)
    rows: list[dict] = []
    with account.catalog.transaction() as s:
        sch = lookup.schema(s, db_name, sch_name)
        account.security.require(s, ctx, "USAGE", sch)
        kinds: tuple[tuple[Any, str], ...] = (
            (m.Model, "MODEL"),
            (m.Service, "SERVICE"),
            (m.Function, "FUNCTION"),
            (m.ImageRepository, "IMAGE REPOSITORY"),
            (m.NetworkRule, "NETWORK RULE"),
        )
        for cls, kind in kinds:
            for obj in s.scalars(select(cls).where(cls.schema_id == sch.id).order_by(cls.name)):
                rows.append({"created_on": obj.created_on, "name": obj.name, "kind": kind})
    for table in account.sql.warehouse.tables(db_name, sch_name):
        rows.append({"created_on": None, "name": table["name"], "kind": table["kind"]})
    return rows


def use_database(account: Managers, ctx: RequestContext, name: str) -> dict:
    """USE DATABASE: the new current database, and PUBLIC as schema when it exists."""
    db_name = ident(name, kind="database name")
    with account.catalog.transaction() as s:
        db = lookup.database(s, db_name)
        account.security.require(s, ctx, "USAGE", db)
        has_public = s.scalar(
            select(func.count(m.Schema.id)).where(
                m.Schema.database_id == db.id, m.Schema.name == DEFAULT_SCHEMA
            )
        )
    return {"database": db_name, "schema": DEFAULT_SCHEMA if has_public else None}


def use_schema(account: Managers, ctx: RequestContext, name: str) -> dict:
    db_name, sch_name = _schema_name(ctx, name)
    with account.catalog.transaction() as s:
        sch = lookup.schema(s, db_name, sch_name)
        account.security.require(s, ctx, "USAGE", sch)
    return {"database": db_name, "schema": sch_name}
