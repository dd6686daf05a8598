"""Running management statements: each parsed ``Statement`` becomes one manager call.

Compute pools go to ``account.compute``, image repositories, network rules and integrations to
``account.environments``, models and versions to ``account.registry``, services to
``account.services``, users, roles and grants to ``account.security``, databases and schemas to
``neve.sql.objects``, tables to the warehouse, functions to ``neve.sql.functions``, and API
integrations and external functions to ``neve.sql.external``.

Managers return dicts keyed by the reference platform's SHOW column names; they become rows
here, and ``SHOW ... LIKE 'pat%'`` is applied in one place (:func:`filter_like`), on the
``name`` column, case-insensitively as on the reference platform.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import InvalidArgumentError, NotSupportedError, ObjectNotFoundError
from neve.identifiers import ident, qualify, quote
from neve.like import filter_like
from neve.sql import external, objects
from neve.sql import functions as fns
from neve.sql.parser import Statement
from neve.sql.result import SqlResult

if TYPE_CHECKING:
    from neve.sql.engine import SqlEngine

Handler = Callable[["SqlEngine", RequestContext, Statement], "SqlResult"]
_HANDLERS: dict[str, Handler] = {}

#: Columns of SHOW output when there is no row to take them from (reference platform names).
SHOW_COLUMNS: dict[str, list[str]] = {
    "SHOW COMPUTE POOLS": [
        "name",
        "state",
        "min_nodes",
        "max_nodes",
        "instance_family",
        "num_services",
        "num_jobs",
        "auto_suspend_secs",
        "auto_resume",
        "active_nodes",
        "idle_nodes",
        "created_on",
        "resumed_on",
        "updated_on",
        "owner",
        "comment",
        "backend",
    ],
    "SHOW IMAGE REPOSITORIES": [
        "created_on",
        "name",
        "database_name",
        "schema_name",
        "repository_url",
        "owner",
        "comment",
        "images",
        "size_bytes",
    ],
    "SHOW IMAGES": [
        "created_on",
        "image_name",
        "tags",
        "digest",
        "image_path",
        "size_bytes",
        "status",
        "build_seconds",
        "repository",
        "model",
        "version",
        "inputs",
        "image",
    ],
    "SHOW NETWORK RULES": [
        "created_on",
        "name",
        "database_name",
        "schema_name",
        "owner",
        "comment",
        "type",
        "mode",
        "entries_in_valuelist",
        "value_list",
    ],
    "SHOW INTEGRATIONS": [
        "name",
        "type",
        "category",
        "enabled",
        "comment",
        "created_on",
        "allowed_network_rules",
        "owner",
    ],
    "SHOW SERVICES": [
        "name",
        "database_name",
        "schema_name",
        "owner",
        "compute_pool",
        "status",
        "state",
        "status_reason",
        "min_instances",
        "max_instances",
        "current_instances",
        "target_instances",
        "dns_name",
        "inference_endpoint",
        "ingress_url",
        "internal_endpoint",
        "model_name",
        "model_version",
        "ingress_enabled",
        "auto_suspend_secs",
        "comment",
        "created_on",
        "updated_on",
        "last_request_on",
        "spec",
        "qualified_name",
    ],
    "SHOW ENDPOINTS": [
        "name",
        "port",
        "protocol",
        "ingress_enabled",
        "ingress_url",
        "ingress_host",
        "is_public",
        "target_instances",
    ],
    "SHOW SERVICE CONTAINERS": [
        "database_name",
        "schema_name",
        "service_name",
        "instance_id",
        "container_name",
        "status",
        "message",
        "image_name",
        "restart_count",
        "start_time",
        "host",
        "port",
        "pid",
        "node",
    ],
    "SHOW MODELS": [
        "created_on",
        "name",
        "model_type",
        "database_name",
        "schema_name",
        "comment",
        "owner",
        "default_version_name",
        "versions",
        "aliases",
        "tags",
    ],
    "SHOW VERSIONS": [
        "created_on",
        "name",
        "aliases",
        "comment",
        "database_name",
        "schema_name",
        "model_name",
        "is_default_version",
        "functions",
        "metadata",
        "user_data",
        "model_type",
        "target_platforms",
        "python_version",
        "conda_dependencies",
        "pip_requirements",
        "dependencies",
        "gpu_capable",
        "options",
        "artifact_sha256",
        "inference_services",
        "owner",
    ],
    "SHOW DATABASES": ["created_on", "name", "owner", "comment"],
    "SHOW SCHEMAS": ["created_on", "name", "database_name", "owner", "comment"],
    "SHOW ROLES": ["name", "created_on", "owner", "comment"],
    "SHOW USERS": [
        "name",
        "created_on",
        "default_role",
        "disabled",
        "has_password",
        "has_rsa_public_key",
        "rsa_public_key_fp",
        "owner",
        "comment",
    ],
    "SHOW GRANTS": [
        "created_on",
        "privilege",
        "granted_on",
        "name",
        "granted_to",
        "grantee_name",
        "grant_option",
        "granted_by",
    ],
    "SHOW TABLES": ["name", "database_name", "schema_name", "kind", "rows", "columns"],
    "SHOW FUNCTIONS": [
        "created_on",
        "name",
        "schema_name",
        "database_name",
        "service_name",
        "method",
        "arguments",
        "options",
        "is_external_function",
        "api_integration",
        "url",
    ],
    "SHOW API INTEGRATIONS": [
        "name",
        "type",
        "category",
        "enabled",
        "comment",
        "created_on",
        "owner",
    ],
    "SHOW USER PATS": [
        "name",
        "user_name",
        "role_restriction",
        "services",
        "expires_at",
        "status",
        "comment",
        "created_on",
    ],
}


def handles(*kinds: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for kind in kinds:
            _HANDLERS[kind] = fn
        return fn

    return register


def run_statement(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    handler = _HANDLERS.get(st.kind)
    if handler is None:
        raise NotSupportedError(f"{st.kind} is not supported")
    return handler(engine, ctx, st)


# -- helpers -------------------------------------------------------------------------------------


def _result(kind: str, rows: list[dict], like: str | None = None) -> SqlResult:

    key = "image_name" if kind == "SHOW IMAGES" else "name"
    rows = filter_like(list(rows), like, key)
    return SqlResult.from_dicts(rows, SHOW_COLUMNS.get(kind) if not rows else None)


def _status(message: str, **changes: Any) -> SqlResult:

    return SqlResult.status(message, **changes)


def _created(what: str, row: dict, started: datetime, **changes: Any) -> SqlResult:
    """The status of CREATE [IF NOT EXISTS]: whether the object is new or was there already
    (then nothing changed, its properties included)."""
    created_on = row.get("created_on")
    if isinstance(created_on, datetime):
        if created_on.tzinfo is None:
            created_on = created_on.replace(tzinfo=UTC)
        if created_on < started:
            return _status(f"{what} already exists, statement succeeded.", **changes)
    return _status(f"{what} successfully created.", **changes)


def _executed(**changes: Any) -> SqlResult:
    """The status of a statement that has no message of its own."""
    return _status("Statement executed successfully.", **changes)


def _dropped(name: str, kind: str) -> SqlResult:
    """DROP's status: the object's name, normalized as an identifier of ``kind``."""
    return _status(f"{ident(name, kind=kind)} successfully dropped.")


def _one(row: dict | list[dict]) -> SqlResult:

    if isinstance(row, dict):
        row = [row]
    return SqlResult.from_dicts(row)


def _lower_props(props: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in props.items()}


def _scope_kwargs(st: Statement, *, account: bool = False) -> dict[str, Any]:
    """Manager keywords of ``IN DATABASE d | IN SCHEMA s | IN COMPUTE POOL p | IN ACCOUNT``.

    ``IN ACCOUNT`` means "no scope" for managers without an ``in_account`` flag.
    """
    scope = st.args.get("scope")
    if scope == "DATABASE":
        return {"in_database": st.args["scope_name"]}
    if scope == "SCHEMA":
        return {"in_schema": st.args["scope_name"]}
    if scope == "COMPUTE POOL":
        return {"in_compute_pool": st.args["scope_name"]}
    if scope == "ACCOUNT" and account:
        return {"in_account": True}
    return {}


def _no_replace(st: Statement) -> None:
    if st.or_replace:
        raise NotSupportedError(
            f"CREATE OR REPLACE is not supported for {st.kind.removeprefix('CREATE ').lower()}s: "
            "DROP it first, or use IF NOT EXISTS"
        )


# -- databases, schemas, USE ---------------------------------------------------------------------


@handles("CREATE DATABASE")
def _create_database(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _create_schema(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_database(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_schema(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _show_databases(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, objects.show_databases(engine.account, ctx), st.like)


@handles("SHOW SCHEMAS")
def _show_schemas(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    database = st.args.get("scope_name") or ctx.database
    return _result(st.kind, objects.show_schemas(engine.account, ctx, database), st.like)


@handles("DESCRIBE DATABASE")
def _describe_database(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(objects.describe_database(engine.account, ctx, st.name or ""))


@handles("DESCRIBE SCHEMA")
def _describe_schema(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(objects.describe_schema(engine.account, ctx, st.name or ""))


@handles("USE DATABASE")
def _use_database(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _executed(**objects.use_database(engine.account, ctx, st.name or ""))


@handles("USE SCHEMA")
def _use_schema(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _executed(**objects.use_schema(engine.account, ctx, st.name or ""))


@handles("USE ROLE")
def _use_role(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    new_ctx = engine.account.security.use_role(ctx, st.name or "")
    return _executed(role=new_ctx.role)


# -- users, roles, grants ------------------------------------------------------------------------


@handles("CREATE ROLE")
def _create_role(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.security.create_role(
        ctx, st.name or "", comment=st.props.get("COMMENT"), if_not_exists=st.if_not_exists
    )
    return _created(
        f"Role {quote(row['name'])}",
        row,
        started,
    )


@handles("DROP ROLE")
def _drop_role(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.drop_role(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "role name")


@handles("SHOW ROLES")
def _show_roles(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.security.show_roles(ctx), st.like)


@handles("CREATE USER")
def _create_user(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    props = st.props
    row = engine.account.security.create_user(
        ctx,
        st.name or "",
        password=props.get("PASSWORD"),
        rsa_public_key=props.get("RSA_PUBLIC_KEY"),
        default_role=props.get("DEFAULT_ROLE"),
        comment=props.get("COMMENT"),
        disabled=bool(props.get("DISABLED", False)),
        if_not_exists=st.if_not_exists,
    )
    return _created(
        f"User {quote(row['name'])}",
        row,
        started,
    )


@handles("ALTER USER")
def _alter_user(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.alter_user(ctx, st.name or "", **_lower_props(st.props))
    return _executed()


@handles("ALTER USER ADD PAT")
def _add_token(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    """ALTER USER [u] ADD PROGRAMMATIC ACCESS TOKEN t [ROLE_RESTRICTION = r] [DAYS_TO_EXPIRY =
    n] [SERVICES = (s, ...)] [COMMENT = '...']: the secret is in this result and nowhere else."""
    if st.if_exists and not _user_exists(engine, st.name):
        return _executed()
    props = st.props
    kwargs: dict[str, Any] = {
        "role": props.get("ROLE_RESTRICTION"),
        "user": st.name,
        "comment": props.get("COMMENT"),
        "services": props.get("SERVICES"),
    }
    if "DAYS_TO_EXPIRY" in props:
        kwargs["days_to_expiry"] = props["DAYS_TO_EXPIRY"]
    row = engine.account.security.create_token(ctx, st.args["token"], **kwargs)
    return _one(
        {
            "token_name": row["name"],
            "token_secret": row["token"],
            "user_name": row["user"],
            "role_restriction": row["role"],
            "services": row["services"],
            "expires_at": row["expires_on"],
        }
    )


@handles("ALTER USER REMOVE PAT")
def _remove_token(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    """ALTER USER [u] REMOVE PROGRAMMATIC ACCESS TOKEN t: revoked at once, at the ingress too."""
    if st.if_exists and not _user_exists(engine, st.name):
        return _executed()
    engine.account.security.revoke_token(ctx, st.args["token"], user=st.name)
    return _executed()


@handles("SHOW USER PATS")
def _show_tokens(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = [
        {
            "name": t["name"],
            "user_name": t["user"],
            "role_restriction": t["role"],
            "services": t["services"],
            "expires_at": t["expires_on"],
            "status": t["status"],
            "comment": t["comment"],
            "created_on": t["created_on"],
        }
        for t in engine.account.security.list_tokens(ctx, user=st.name)
    ]
    return _result(st.kind, rows)


def _user_exists(engine: SqlEngine, name: str | None) -> bool:
    if name is None:
        return True
    user = ident(name, kind="user name")
    with engine.account.catalog.transaction() as s:
        return s.scalar(select(m.User.id).where(m.User.name == user)) is not None


@handles("DROP USER")
def _drop_user(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.drop_user(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "user name")


@handles("SHOW USERS")
def _show_users(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.security.show_users(ctx), st.like)


@handles("DESCRIBE USER")
def _describe_user(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    row = engine.account.security.describe_user(ctx, st.name or "")
    return _one([{"property": k, "value": v} for k, v in row.items()])


@handles("GRANT ROLE")
def _grant_role(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.grant_role(
        ctx, st.name or "", to_user=st.args.get("to_user"), to_role=st.args.get("to_role")
    )
    return _executed()


@handles("REVOKE ROLE")
def _revoke_role(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.revoke_role(
        ctx,
        st.name or "",
        from_user=st.args.get("from_user"),
        from_role=st.args.get("from_role"),
    )
    return _executed()


@handles("GRANT")
def _grant(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    for privilege in st.args["privileges"]:
        engine.account.security.grant(
            ctx,
            privilege,
            st.args["object_type"],
            st.name,
            st.args["to_role"],
            with_grant_option=st.args.get("with_grant_option", False),
        )
    return _executed()


@handles("GRANT OWNERSHIP")
def _grant_ownership(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.grant_ownership(
        ctx,
        st.args["object_type"],
        st.name,
        st.args["to_role"],
        copy_current_grants=st.args.get("copy_current_grants", True),
    )
    return _executed()


@handles("REVOKE")
def _revoke(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    for privilege in st.args["privileges"]:
        engine.account.security.revoke(
            ctx,
            privilege,
            st.args["object_type"],
            st.name,
            st.args["from_role"],
            grant_option_only=st.args.get("grant_option_only", False),
            cascade=st.args.get("cascade", False),
        )
    return _executed()


@handles("SHOW GRANTS")
def _show_grants(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    kwargs = {k: st.args[k] for k in ("to_role", "to_user", "of_role", "on") if k in st.args}
    rows = engine.account.security.show_grants(ctx, **kwargs)
    return _result(st.kind, rows)


# -- compute pools -------------------------------------------------------------------------------


@handles("CREATE COMPUTE POOL")
def _create_pool(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_pool(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.compute.drop_pool(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "compute pool name")


@handles("ALTER COMPUTE POOL")
def _alter_pool(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _show_pools(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.compute.show_pools(ctx), st.like)


@handles("DESCRIBE COMPUTE POOL")
def _describe_pool(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.compute.describe_pool(ctx, st.name or ""))


# -- image repositories, network rules, integrations ---------------------------------------------


@handles("CREATE IMAGE REPOSITORY")
def _create_repo(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.environments.create_image_repository(
        ctx, st.name or "", if_not_exists=st.if_not_exists, comment=st.props.get("COMMENT")
    )
    return _created(f"Image repository {quote(row['name'])}", row, started)


@handles("DROP IMAGE REPOSITORY")
def _drop_repo(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.environments.drop_image_repository(ctx, st.name or "", if_exists=st.if_exists)
    return _executed()


@handles("SHOW IMAGE REPOSITORIES")
def _show_repos(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.environments.show_image_repositories(ctx, **_scope_kwargs(st))
    return _result(st.kind, rows, st.like)


@handles("DESCRIBE IMAGE REPOSITORY")
def _describe_repo(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.environments.describe_image_repository(ctx, st.name or ""))


@handles("SHOW IMAGES")
def _show_images(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.environments.show_images(ctx, st.name or ""), st.like)


@handles("CREATE NETWORK RULE")
def _create_rule(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    _no_replace(st)
    started = datetime.now(UTC)
    row = engine.account.environments.create_network_rule(
        ctx, st.name or "", if_not_exists=st.if_not_exists, **_lower_props(st.props)
    )
    return _created(f"Network rule {quote(row['name'])}", row, started)


@handles("DROP NETWORK RULE")
def _drop_rule(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.environments.drop_network_rule(ctx, st.name or "", if_exists=st.if_exists)
    return _executed()


@handles("SHOW NETWORK RULES")
def _show_rules(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.environments.show_network_rules(ctx, **_scope_kwargs(st))
    return _result(st.kind, rows, st.like)


@handles("CREATE INTEGRATION")
def _create_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.environments.drop_external_access_integration(
        ctx, st.name or "", if_exists=st.if_exists
    )
    return _executed()


@handles("CREATE API INTEGRATION")
def _create_api_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _alter_api_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    external.ApiIntegrations(engine.account).alter(
        ctx, st.name or "", if_exists=st.if_exists, **_lower_props(st.props)
    )
    return _executed()


@handles("SHOW API INTEGRATIONS")
def _show_api_integrations(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, external.ApiIntegrations(engine.account).show(ctx), st.like)


@handles("DESCRIBE API INTEGRATION")
def _describe_api_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(external.ApiIntegrations(engine.account).describe(ctx, st.name or ""))


@handles("DESCRIBE INTEGRATION")
def _describe_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_api_integration(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    external.ApiIntegrations(engine.account).drop(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "integration name")


@handles("SHOW INTEGRATIONS")
def _show_integrations(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.environments.show_external_access_integrations(ctx)
    return _result(st.kind, rows, st.like)


# -- services ------------------------------------------------------------------------------------


@handles("SHOW SERVICES")
def _show_services(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.services.show_services(ctx, **_scope_kwargs(st))
    return _result(st.kind, rows, st.like)


@handles("CREATE SERVICE")
def _create_service(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    props = st.props
    started = datetime.now(UTC)
    row = engine.account.services.create_service_from_specification(
        ctx,
        service_name=st.name or "",
        compute_pool=st.args["compute_pool"],
        specification=st.args["specification"],
        if_not_exists=st.if_not_exists,
        min_instances=props.get("MIN_INSTANCES"),
        max_instances=props.get("MAX_INSTANCES"),
        auto_resume=props.get("AUTO_RESUME", True),
        auto_suspend_secs=props.get("AUTO_SUSPEND_SECS"),
        external_access_integrations=props.get("EXTERNAL_ACCESS_INTEGRATIONS") or (),
        comment=props.get("COMMENT"),
    )
    return _created(f"Service {row['name']}", row, started)


@handles("DESCRIBE SERVICE")
def _describe_service(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.services.describe_service(ctx, st.name or ""))


@handles("ALTER SERVICE")
def _alter_service(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    action = st.args["action"]
    services = engine.account.services
    if st.if_exists:
        try:
            services.describe_service(ctx, st.name or "")
        except ObjectNotFoundError:
            return _executed()
    if action == "SUSPEND":
        services.alter_service(ctx, st.name or "", suspend=True)
    elif action == "RESUME":
        services.alter_service(ctx, st.name or "", resume=True)
    else:
        services.alter_service(ctx, st.name or "", **_lower_props(st.props))
    return _executed()


@handles("DROP SERVICE")
def _drop_service(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.services.drop_service(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name.split(".")[-1] if st.name else "", "service name")


@handles("SHOW ENDPOINTS")
def _show_endpoints(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.services.show_endpoints(ctx, st.name or ""))


@handles("SHOW SERVICE CONTAINERS")
def _show_containers(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.services.show_containers(ctx, st.name or ""))


@handles("CALL SYSTEM$GET_SERVICE_LOGS")
def _service_logs(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:

    args = st.args["args"]
    name, instance, container = args[0], args[1], args[2]
    last = args[3] if len(args) > 3 else None
    if not isinstance(name, str) or not isinstance(container, str):
        raise InvalidArgumentError(
            "SYSTEM$GET_SERVICE_LOGS(service_name, instance_id, container_name[, last_n_lines]): "
            "service and container names are strings"
        )
    if not isinstance(instance, int):
        instance = _int_arg(instance, "instance_id")
    if last is not None and not isinstance(last, int):
        last = _int_arg(last, "last_n_lines")
    text = engine.account.services.get_service_logs(ctx, name, instance, container, last)
    return SqlResult(columns=["SYSTEM$GET_SERVICE_LOGS"], rows=[[text]], types=["VARCHAR"])


@handles("CALL SYSTEM$GET_SERVICE_STATUS")
def _service_status(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:

    name = st.args["args"][0]
    if not isinstance(name, str):
        raise InvalidArgumentError("SYSTEM$GET_SERVICE_STATUS(service_name): a string")
    status = engine.account.services.get_service_status(ctx, name)
    text = orjson.dumps(status, default=_json_default).decode()
    return SqlResult(columns=["SYSTEM$GET_SERVICE_STATUS"], rows=[[text]], types=["VARCHAR"])


def _int_arg(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be an integer, got {value!r}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


# -- models --------------------------------------------------------------------------------------


@handles("SHOW MODELS")
def _show_models(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.registry.show_models(ctx, **_scope_kwargs(st, account=True))
    return _result(st.kind, rows, st.like)


@handles("SHOW VERSIONS")
def _show_versions(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.registry.show_versions(ctx, st.name or ""), st.like)


@handles("DROP MODEL")
def _drop_model(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.registry.delete_model(ctx, st.name or "", if_exists=st.if_exists)
    return _executed()


@handles("ALTER MODEL")
def _alter_model(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _describe_model(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.registry.describe_model(ctx, st.name or ""))


# -- tables and functions ------------------------------------------------------------------------


@handles("SHOW TABLES")
def _show_tables(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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


def _may_see_function(engine: SqlEngine, s: Any, ctx: RequestContext, fn: m.Function) -> bool:
    """A service's function with USAGE on the service; an external one with USAGE on it."""
    security = engine.account.security
    if fn.kind == external.KIND_EXTERNAL:
        return bool(security.has_privilege(s, ctx, "USAGE", fn))
    service = s.get(m.Service, fn.service_id) if fn.service_id else None
    return service is None or bool(security.has_privilege(s, ctx, "USAGE", service))


@handles("SHOW FUNCTIONS")
def _show_functions(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _create_function(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
    """A function on any service's endpoint: CREATE FUNCTION on the schema, USAGE on the
    service."""
    from neve.services.specification import document_of

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
        document = document_of(service.spec or {})
        endpoints = [str(e.get("name")) for e in document["spec"].get("endpoints") or []]
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
def _create_external_function(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_function(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _describe_function(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _alter_function(engine: SqlEngine, ctx: RequestContext, st: Statement) -> SqlResult:
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
