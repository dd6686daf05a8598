"""Databases, schemas and USE."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from neve.context import RequestContext
from neve.identifiers import ident, quote
from neve.sql import objects
from neve.sql.parser import Statement
from neve.sql.result import SqlResult
from neve.sql.statements.base import (
    _created,
    _executed,
    _no_replace,
    _one,
    _result,
    _status,
    handles,
)

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts

# -- databases, schemas, USE ---------------------------------------------------------------------


@handles("CREATE DATABASE")
def _create_database(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = objects.create_database(
        engine.account,
        ctx,
        st.name or "",
        if_not_exists=st.if_not_exists,
        comment=st.props.get("COMMENT"),
    )
    return _created(
        f"Database {quote(row['name'])}",
        row,
        started,
        database=row["name"],
        schema=objects.DEFAULT_SCHEMA,
    )


@handles("CREATE SCHEMA")
def _create_schema(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = objects.create_schema(
        engine.account,
        ctx,
        st.name or "",
        if_not_exists=st.if_not_exists,
        comment=st.props.get("COMMENT"),
    )
    return _created(
        f"Schema {quote(row['name'])}",
        row,
        started,
        database=row["database_name"],
        schema=row["name"],
    )


@handles("DROP DATABASE")
def _drop_database(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    dropped = objects.drop_database(engine.account, ctx, st.name or "", if_exists=st.if_exists)
    name = ident(st.name or "", kind="database name")
    changes: dict[str, Any] = {}
    if dropped and ctx.database == name:
        changes = {"database": None, "schema": None}
    return _status(
        f"{quote(name)} successfully dropped." if dropped else f"{quote(name)} does not exist.",
        **changes,
    )


@handles("DROP SCHEMA")
def _drop_schema(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    dropped = objects.drop_schema(engine.account, ctx, st.name or "", if_exists=st.if_exists)
    db, sch = objects._schema_name(ctx, st.name or "")
    changes: dict[str, Any] = {}
    if dropped and (ctx.database, ctx.schema) == (db, sch):
        changes = {"schema": None}
    return _status(
        f"{quote(sch)} successfully dropped." if dropped else f"{quote(sch)} does not exist.",
        **changes,
    )


@handles("SHOW DATABASES")
def _show_databases(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, objects.show_databases(engine.account, ctx), st.like)


@handles("SHOW SCHEMAS")
def _show_schemas(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    database = st.args.get("scope_name") or ctx.database
    return _result(st.kind, objects.show_schemas(engine.account, ctx, database), st.like)


@handles("DESCRIBE DATABASE")
def _describe_database(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(objects.describe_database(engine.account, ctx, st.name or ""))


@handles("DESCRIBE SCHEMA")
def _describe_schema(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(objects.describe_schema(engine.account, ctx, st.name or ""))


@handles("USE DATABASE")
def _use_database(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _executed(**objects.use_database(engine.account, ctx, st.name or ""))


@handles("USE SCHEMA")
def _use_schema(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _executed(**objects.use_schema(engine.account, ctx, st.name or ""))


@handles("USE ROLE")
def _use_role(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    new_ctx = engine.account.security.use_role(ctx, st.name or "")
    return _executed(role=new_ctx.role)
