"""Tables and functions (service, warehouse and external)."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import ObjectNotFoundError
from neve.identifiers import ident, qualify
from neve.sql import external, objects
from neve.sql import functions as fns
from neve.sql.parser import Statement
from neve.sql.result import SqlResult
from neve.sql.statements.base import _dropped, _executed, _one, _result, _status, handles

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts


@handles("SHOW TABLES")
def _show_tables(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    scope = st.args.get("scope")
    db, sch = ctx.database, ctx.schema
    if scope == "DATABASE":
        db, sch = ident(st.args["scope_name"], kind="database name"), None
    elif scope == "SCHEMA":
        db, sch = objects._schema_name(ctx, st.args["scope_name"])
    elif scope == "ACCOUNT":
        db, sch = None, None
    with engine.account.catalog.transaction() as s:
        security = engine.account.security
        if sch is not None and db is not None:
            security.require(s, ctx, "USAGE", lookup.schema(s, db, sch))
        elif db is not None:
            security.require(s, ctx, "USAGE", lookup.database(s, db))
        visible = {
            (d.name, x.name)
            for x, d in s.execute(select(m.Schema, m.Database).join(m.Database))
            if security.has_privilege(s, ctx, "USAGE", x)
        }
    rows = engine.warehouse.tables(db, sch, visible=visible)  # opens only visible schemas
    return _result(st.kind, rows, st.like)


def _function_rows(s: Any, fn_rows: list[m.Function]) -> list[dict]:
    rows = []
    for fn in fn_rows:
        qn = lookup.qualified(s, fn.schema_id, fn.name)
        service = s.get(m.Service, fn.service_id) if fn.service_id else None
        sig = fns.ModelSignature.from_dict(fn.signature)
        is_external = fn.kind == external.KIND_EXTERNAL
        details = external.function_details(fn) if is_external else {}
        arguments = f"{fn.name}{fns.describe_signature(sig)}"
        if is_external:
            args = ", ".join(f"{f.name} {fns.duck_type(f)}" for f in sig.inputs)
            arguments = f"{fn.name}({args}) RETURN {(fn.details or {}).get('returns')}"
        rows.append(
            {
                "created_on": fn.created_on
                if fn.created_on is None or fn.created_on.tzinfo
                else fn.created_on.replace(tzinfo=UTC),
                "name": fn.name,
                "schema_name": qn.schema,
                "database_name": qn.database,
                "service_name": service.name if service is not None else None,
                "method": fn.method or None,
                "arguments": arguments,
                "options": dict(fns.effective_options(fn)),
                "is_external_function": is_external,
                "api_integration": details.get("api_integration"),
                "url": details.get("url"),
            }
        )
    return rows


def _may_see_function(engine: EngineParts, s: Any, ctx: RequestContext, fn: m.Function) -> bool:
    """A service's function with USAGE on the service; an external one with USAGE on it."""
    security = engine.account.security
    if fn.kind == external.KIND_EXTERNAL:
        return bool(security.has_privilege(s, ctx, "USAGE", fn))
    service = s.get(m.Service, fn.service_id) if fn.service_id else None
    return service is None or bool(security.has_privilege(s, ctx, "USAGE", service))


@handles("SHOW FUNCTIONS")
def _show_functions(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    scope = st.args.get("scope")
    with engine.account.catalog.transaction() as s:
        query = select(m.Function).join(m.Schema).join(m.Database)
        if scope == "DATABASE":
            query = query.where(
                m.Database.name == ident(st.args["scope_name"], kind="database name")
            )
        elif scope == "SCHEMA" or (scope is None and ctx.database and ctx.schema):
            db, sch = (
                objects._schema_name(ctx, st.args["scope_name"])
                if scope == "SCHEMA"
                else (ctx.database, ctx.schema)
            )
            query = query.where(m.Database.name == db, m.Schema.name == sch)
        if st.args.get("external"):
            query = query.where(m.Function.kind == external.KIND_EXTERNAL)
        visible = [
            fn
            for fn in s.scalars(query.order_by(m.Function.name))
            if _may_see_function(engine, s, ctx, fn)
        ]
        rows = _function_rows(s, visible)
    return _result(st.kind, rows, st.like)


def _find_function(s: Any, ctx: RequestContext, name: str) -> m.Function:
    qn = qualify(name, database=ctx.database, schema=ctx.schema, kind="function")
    return lookup.in_schema(s, m.Function, qn, "function")


@handles("CREATE FUNCTION")
def _create_function(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    """A function on any service's endpoint: CREATE FUNCTION on the schema, USAGE on the
    service."""
    qn = qualify(st.name or "", database=ctx.database, schema=ctx.schema, kind="function")
    props = dict(st.props)
    service_name, endpoint = str(props.pop("SERVICE")), str(props.pop("ENDPOINT"))
    security = engine.account.security
    with engine.account.catalog.transaction() as s:
        sch = lookup.schema(s, qn.database, qn.schema)
        security.require(s, ctx, "CREATE FUNCTION", sch)
        sq = qualify(service_name, database=ctx.database, schema=ctx.schema, kind="service")
        service = lookup.in_schema(s, m.Service, sq, "service")
        security.require(s, ctx, "USAGE", service)
        if st.if_not_exists and s.scalar(
            select(m.Function).where(m.Function.schema_id == sch.id, m.Function.name == qn.name)
        ):
            return _status(f"Function {qn.name} already exists, statement succeeded.")
        endpoints = engine.account.services.endpoint_names(service)
        fns.create_endpoint_function(
            s,
            schema_id=sch.id,
            name=qn.name,
            label=str(qn),
            service_row=service,
            service_label=str(sq),
            endpoint=endpoint,
            endpoints=endpoints,
            path=st.args["path"],
            args=st.args["arguments"],
            returns=st.args["returns"],
            options=props,
            or_replace=st.or_replace,
        )
    return _status(f"Function {qn.name} successfully created.")


@handles("CREATE EXTERNAL FUNCTION")
def _create_external_function(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    """A function calling a URL through an API integration: CREATE FUNCTION on the schema,
    USAGE on the integration (see ``neve.sql.external``)."""
    message = external.create_external_function(
        engine.account,
        ctx,
        st.name or "",
        args=st.args["arguments"],
        returns=st.args["returns"],
        url=st.args["url"],
        props=st.props,
        or_replace=st.or_replace,
        if_not_exists=st.if_not_exists,
    )
    return _status(message)


@handles("DROP FUNCTION")
def _drop_function(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    """Needs what creating it needed: CREATE FUNCTION on its schema."""
    qn = qualify(st.name or "", database=ctx.database, schema=ctx.schema, kind="function")
    with engine.account.catalog.transaction() as s:
        try:
            fn = lookup.in_schema(s, m.Function, qn, "function")
        except ObjectNotFoundError:
            if st.if_exists:
                return _executed()
            raise
        engine.account.security.require(s, ctx, "CREATE FUNCTION", s.get(m.Schema, fn.schema_id))
        fns.drop_endpoint_function(s, fn, label=str(qn))
    return _dropped(qn.name, "function name")


@handles("DESCRIBE FUNCTION")
def _describe_function(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    with engine.account.catalog.transaction() as s:
        fn = _find_function(s, ctx, st.name or "")
        service = s.get(m.Service, fn.service_id) if fn.service_id else None
        if service is not None:
            engine.account.security.require(s, ctx, "USAGE", service)
        elif fn.kind == external.KIND_EXTERNAL:
            engine.account.security.require(s, ctx, "USAGE", fn)
        row = _function_rows(s, [fn])[0]
    sig = fns.ModelSignature.from_dict(fn.signature)
    props: list[dict[str, Any]] = [
        {
            "property": "signature",
            "value": "(" + ", ".join(f"{f.name} {fns.duck_type(f)}" for f in sig.inputs) + ")",
        },
    ]
    if fn.kind == external.KIND_EXTERNAL:
        details = external.function_details(fn)
        props += [
            {"property": "returns", "value": (fn.details or {}).get("returns")},
            {"property": "api_integration", "value": details["api_integration"]},
            {"property": "url", "value": details["url"]},
            {"property": "comment", "value": details["comment"]},
        ]
    else:
        props += [
            {"property": "returns", "value": fns.return_duck_type(sig)},
            {"property": "service", "value": row["service_name"]},
            {"property": "method", "value": fn.method},
        ]
    props += [{"property": k, "value": str(v)} for k, v in row["options"].items()]
    return _one(props)


@handles("ALTER FUNCTION")
def _alter_function(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    with engine.account.catalog.transaction() as s:
        try:
            fn = _find_function(s, ctx, st.name or "")
        except ObjectNotFoundError:
            if st.if_exists:
                return _executed()
            raise
        service = s.get(m.Service, fn.service_id) if fn.service_id else None
        if service is not None:
            engine.account.security.require_owner(s, ctx, service)
        else:  # an external function: its owner
            engine.account.security.require_owner(s, ctx, fn)
        options = dict(fn.options or {})
        if st.args["action"] == "SET":
            options.update(fns.validate_options(st.props, function=fn.name))
        else:
            for key in st.args["unset"]:
                options.pop(key, None)
            spec_rows = (service.spec or {}).get("max_batch_rows") if service else None
            if "MAX_BATCH_ROWS" in st.args["unset"] and spec_rows:
                options["MAX_BATCH_ROWS"] = int(spec_rows)  # back to the service's own value
        fn.options = options
    return _status(f"Function {fn.name} successfully altered.")
