"""Compute pools."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from neve.context import RequestContext
from neve.identifiers import quote
from neve.sql.parser import Statement
from neve.sql.result import SqlResult
from neve.sql.statements.base import (
    _created,
    _dropped,
    _executed,
    _lower_props,
    _no_replace,
    _one,
    _result,
    handles,
)

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts


@handles("CREATE COMPUTE POOL")
def _create_pool(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.compute.create_pool(
        ctx, st.name or "", if_not_exists=st.if_not_exists, **_lower_props(st.props)
    )
    return _created(
        f"Compute pool {quote(row['name'])}",
        row,
        started,
    )


@handles("DROP COMPUTE POOL")
def _drop_pool(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.compute.drop_pool(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "compute pool name")


@handles("ALTER COMPUTE POOL")
def _alter_pool(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    action = st.args["action"]
    kwargs: dict[str, Any] = {}
    if action == "SUSPEND":
        kwargs["suspend"] = True
    elif action == "RESUME":
        kwargs["resume"] = True
    elif action == "STOP ALL":
        kwargs["stop_all"] = True
    else:
        kwargs.update(_lower_props(st.props))
    engine.account.compute.alter_pool(ctx, st.name or "", if_exists=st.if_exists, **kwargs)
    return _executed()


@handles("SHOW COMPUTE POOLS")
def _show_pools(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.compute.show_pools(ctx), st.like)


@handles("DESCRIBE COMPUTE POOL")
def _describe_pool(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.compute.describe_pool(ctx, st.name or ""))
