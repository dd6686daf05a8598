"""Users, roles, tokens and grants."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from neve.catalog import models as m
from neve.context import RequestContext
from neve.identifiers import ident, quote
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


@handles("CREATE ROLE")
def _create_role(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _drop_role(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.drop_role(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "role name")


@handles("SHOW ROLES")
def _show_roles(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.security.show_roles(ctx), st.like)


@handles("CREATE USER")
def _create_user(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _alter_user(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.alter_user(ctx, st.name or "", **_lower_props(st.props))
    return _executed()


@handles("ALTER USER ADD PAT")
def _add_token(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _remove_token(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    """ALTER USER [u] REMOVE PROGRAMMATIC ACCESS TOKEN t: revoked at once, at the ingress too."""
    if st.if_exists and not _user_exists(engine, st.name):
        return _executed()
    engine.account.security.revoke_token(ctx, st.args["token"], user=st.name)
    return _executed()


@handles("SHOW USER PATS")
def _show_tokens(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
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


def _user_exists(engine: EngineParts, name: str | None) -> bool:
    if name is None:
        return True
    user = ident(name, kind="user name")
    with engine.account.catalog.transaction() as s:
        return s.scalar(select(m.User.id).where(m.User.name == user)) is not None


@handles("DROP USER")
def _drop_user(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.drop_user(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name or "", "user name")


@handles("SHOW USERS")
def _show_users(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.security.show_users(ctx), st.like)


@handles("DESCRIBE USER")
def _describe_user(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    row = engine.account.security.describe_user(ctx, st.name or "")
    return _one([{"property": k, "value": v} for k, v in row.items()])


@handles("GRANT ROLE")
def _grant_role(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.grant_role(
        ctx, st.name or "", to_user=st.args.get("to_user"), to_role=st.args.get("to_role")
    )
    return _executed()


@handles("REVOKE ROLE")
def _revoke_role(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.revoke_role(
        ctx,
        st.name or "",
        from_user=st.args.get("from_user"),
        from_role=st.args.get("from_role"),
    )
    return _executed()


@handles("GRANT")
def _grant(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _grant_ownership(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.security.grant_ownership(
        ctx,
        st.args["object_type"],
        st.name,
        st.args["to_role"],
        copy_current_grants=st.args.get("copy_current_grants", True),
    )
    return _executed()


@handles("REVOKE")
def _revoke(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
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
def _show_grants(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    kwargs = {k: st.args[k] for k in ("to_role", "to_user", "of_role", "on") if k in st.args}
    rows = engine.account.security.show_grants(ctx, **kwargs)
    return _result(st.kind, rows)
