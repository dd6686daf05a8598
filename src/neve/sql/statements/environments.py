"""Image repositories, network rules, external access and API integrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.identifiers import ident, quote
from neve.sql import external
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
    _scope_kwargs,
    handles,
)

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts


@handles("CREATE IMAGE REPOSITORY")
def _create_repo(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.environments.create_image_repository(
        ctx, st.name or "", if_not_exists=st.if_not_exists, comment=st.props.get("COMMENT")
    )
    return _created(f"Image repository {quote(row['name'])}", row, started)


@handles("DROP IMAGE REPOSITORY")
def _drop_repo(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.environments.drop_image_repository(ctx, st.name or "", if_exists=st.if_exists)
    return _executed()


@handles("SHOW IMAGE REPOSITORIES")
def _show_repos(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.environments.show_image_repositories(ctx, **_scope_kwargs(st))
    return _result(st.kind, rows, st.like)


@handles("DESCRIBE IMAGE REPOSITORY")
def _describe_repo(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.environments.describe_image_repository(ctx, st.name or ""))


@handles("SHOW IMAGES")
def _show_images(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.environments.show_images(ctx, st.name or ""), st.like)


@handles("CREATE NETWORK RULE")
def _create_rule(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.environments.create_network_rule(
        ctx, st.name or "", if_not_exists=st.if_not_exists, **_lower_props(st.props)
    )
    return _created(f"Network rule {quote(row['name'])}", row, started)


@handles("DROP NETWORK RULE")
def _drop_rule(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.environments.drop_network_rule(ctx, st.name or "", if_exists=st.if_exists)
    return _executed()


@handles("SHOW NETWORK RULES")
def _show_rules(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.environments.show_network_rules(ctx, **_scope_kwargs(st))
    return _result(st.kind, rows, st.like)


@handles("CREATE INTEGRATION")
def _create_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.environments.create_external_access_integration(
        ctx, st.name or "", if_not_exists=st.if_not_exists, **_lower_props(st.props)
    )
    return _created(
        f"Integration {quote(row['name'])}",
        row,
        started,
    )


@handles("DROP INTEGRATION")
def _drop_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.environments.drop_external_access_integration(
        ctx, st.name or "", if_exists=st.if_exists
    )
    return _executed()


@handles("CREATE API INTEGRATION")
def _create_api_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    started = datetime.now(UTC)
    row = external.ApiIntegrations(engine.account).create(
        ctx,
        st.name or "",
        or_replace=st.or_replace,
        if_not_exists=st.if_not_exists,
        **_lower_props(st.props),
    )
    return _created(f"Integration {quote(row['name'])}", row, started)


@handles("ALTER API INTEGRATION")
def _alter_api_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    external.ApiIntegrations(engine.account).alter(
        ctx, st.name or "", if_exists=st.if_exists, **_lower_props(st.props)
    )
    return _executed()


@handles("SHOW API INTEGRATIONS")
def _show_api_integrations(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, external.ApiIntegrations(engine.account).show(ctx), st.like)


@handles("DESCRIBE API INTEGRATION")
def _describe_api_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(external.ApiIntegrations(engine.account).describe(ctx, st.name or ""))


@handles("DESCRIBE INTEGRATION")
def _describe_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    """Either kind of integration: an API integration's properties (never its key), or an
    external access integration's row."""
    name = ident(st.name or "", kind="integration name")
    with engine.account.catalog.transaction() as s:
        integ = lookup.account_level(s, m.ExternalAccessIntegration, name, "integration")
        kind = integ.integration_type
    if kind == external.API:
        return _one(external.ApiIntegrations(engine.account).describe(ctx, name))
    return _one(engine.account.environments.describe_external_access_integration(ctx, name))


@handles("DROP API INTEGRATION")
def _drop_api_integration(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    external.ApiIntegrations(engine.account).drop(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "integration name")


@handles("SHOW INTEGRATIONS")
def _show_integrations(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.environments.show_external_access_integrations(ctx)
    return _result(st.kind, rows, st.like)
