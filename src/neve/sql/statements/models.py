"""Models and versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from neve.context import RequestContext
from neve.errors import ObjectNotFoundError
from neve.sql.parser import Statement
from neve.sql.result import SqlResult
from neve.sql.statements.base import _executed, _one, _result, _scope_kwargs, handles

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts


@handles("SHOW MODELS")
def _show_models(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.registry.show_models(ctx, **_scope_kwargs(st, account=True))
    return _result(st.kind, rows, st.like)


@handles("SHOW VERSIONS")
def _show_versions(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.registry.show_versions(ctx, st.name or ""), st.like)


@handles("DROP MODEL")
def _drop_model(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.registry.delete_model(ctx, st.name or "", if_exists=st.if_exists)
    return _executed()


@handles("ALTER MODEL")
def _alter_model(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    registry = engine.account.registry
    if st.if_exists:
        try:
            registry.describe_model(ctx, st.name or "")
        except ObjectNotFoundError:
            return _executed()
    if st.args["action"] == "DROP VERSION":
        registry.delete_version(ctx, st.name or "", st.args["version"])
    else:
        props = st.props
        if "DEFAULT_VERSION" in props:
            registry.set_default_version(ctx, st.name or "", props["DEFAULT_VERSION"])
        if "COMMENT" in props:
            registry.set_model_comment(ctx, st.name or "", props["COMMENT"])
    return _executed()


@handles("DESCRIBE MODEL")
def _describe_model(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.registry.describe_model(ctx, st.name or ""))
