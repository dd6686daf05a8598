"""REST routes for login, tokens, users, roles and grants.

``PUBLIC_PATHS`` are the paths the authentication middleware must let through without a token
(only the login itself); every other route here runs with ``request.state.ctx`` set.

    POST   /api/v1/login                 {"user", "password", "role"?} -> {"token", "expires_on"}
    POST   /api/v1/logout                revoke the session token the request carries
    GET    /api/v1/session               who am I: {"user", "role", "database", "schema", "roles"}
    POST   /api/v1/session/role          {"role"} -> checks USE ROLE (send it as X-Neve-Role after)
    POST   /api/v1/keypair/verify        same answer as /session, for checking a key-pair JWT
    POST   /api/v1/tokens                {"name", "days_to_expiry"?, "role"?, "user"?} -> PAT secret
    GET    /api/v1/tokens[?user=]        list programmatic access tokens (no secrets)
    DELETE /api/v1/tokens/{name}[?user=] revoke one
    GET/POST        /api/v1/users        SHOW USERS / CREATE USER
    GET/PATCH/DELETE /api/v1/users/{name}
    GET/POST        /api/v1/roles        SHOW ROLES / CREATE ROLE
    DELETE          /api/v1/roles/{name}
    POST/DELETE     /api/v1/roles/{name}/grants   {"to_user"|"to_role"} GRANT / REVOKE ROLE
    GET    /api/v1/grants?to_role=|of_role=|to_user=|on_type=&on_name=   SHOW GRANTS
    POST   /api/v1/grants                {"privilege","object_type","object_name","to_role",
                                          "with_grant_option"?, "copy_current_grants"?}
    DELETE /api/v1/grants                {"privilege","object_type","object_name","from_role",
                                          "grant_option_only"?}
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from neve.control.routes._base import (
    Call,
    body_fields,
    endpoint,
    error_response,
    json_response,
)
from neve.errors import InvalidArgumentError, NeveError, check_fields
from neve.kinds import PROGRAMMATIC_ACCESS_TOKEN, USER
from neve.security.auth import bearer_token

LOGIN_PATH = "/api/v1/login"
PUBLIC_PATHS: frozenset[str] = frozenset({LOGIN_PATH})
MAX_LOGIN_BODY = 16 * 1024


def _required(body: dict[str, Any], key: str, *, what: str) -> Any:
    value = body.get(key)
    if value in (None, ""):
        raise InvalidArgumentError(f"{what} needs the field {key!r}")
    return value


async def login(request: Request) -> Response:
    """POST /api/v1/login: public (no token yet). Password check runs off the event loop."""
    raw = await request.body()
    try:
        if len(raw) > MAX_LOGIN_BODY:
            raise InvalidArgumentError("login request body is too large")
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise InvalidArgumentError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError("login body must be a JSON object")
        check_fields(body, {"user", "password", "role"}, what="login")
        user = _required(body, "user", what="login")
        password = _required(body, "password", what="login")
        security = request.app.state.account.security
        result = await run_in_threadpool(
            security.login_session, str(user), str(password), role=body.get("role")
        )
    except NeveError as err:
        return error_response(err)
    return json_response(result)


@endpoint
def logout(call: Call) -> dict:
    """Revoke the session token this request carries."""
    token = bearer_token(call.request.headers.get("authorization"))
    call.account.security.logout(token)
    return {"status": "logged out"}


@endpoint
def whoami(call: Call) -> dict:
    """Who the credentials are: user, role, current database/schema, usable roles."""
    ctx = call.ctx
    with call.account.catalog.transaction() as s:
        roles = sorted(call.account.security.usable_roles(s, ctx.user))
    return {
        "user": ctx.user,
        "role": ctx.role,
        "database": ctx.database,
        "schema": ctx.schema,
        "roles": roles,
        "request_id": ctx.request_id,
    }


@endpoint
def use_role(call: Call) -> dict:
    """Check USE ROLE {"role"} (then send the role as X-Neve-Role)."""
    body = body_fields(call, {"role"}, what="USE ROLE")
    ctx = call.account.security.use_role(call.ctx, str(_required(body, "role", what="USE ROLE")))
    return {"user": ctx.user, "role": ctx.role}


@endpoint(status=201)
def create_token(call: Call) -> dict:
    """Create a programmatic access token {"name", "days_to_expiry", "role", "user", "comment",
    "services"} (``services``: scoped to those services' ingress endpoints, nothing else).

    The secret is in the answer and nowhere else (the catalog keeps its SHA-256)."""
    body = body_fields(
        call,
        PROGRAMMATIC_ACCESS_TOKEN.body_fields("create", "name", "user"),
        what="a token",
    )
    kwargs: dict[str, Any] = {
        k: body[k] for k in ("role", "user", "comment", "services") if k in body
    }
    if "days_to_expiry" in body:
        kwargs["days_to_expiry"] = body["days_to_expiry"]
    return call.account.security.create_token(
        call.ctx, str(_required(body, "name", what="a token")), **kwargs
    )


@endpoint
def list_tokens(call: Call) -> list[dict]:
    """List programmatic access tokens (?user=) without their secrets."""
    return call.account.security.list_tokens(call.ctx, user=call.query.get("user"))


@endpoint
def revoke_token(call: Call) -> dict:
    """Revoke a programmatic access token (?user=)."""
    call.account.security.revoke_token(call.ctx, call.path["name"], user=call.query.get("user"))
    return {"status": f"token {call.path['name']} revoked"}


@endpoint
def show_users(call: Call) -> list[dict]:
    """SHOW USERS."""
    return call.account.security.show_users(call.ctx)


@endpoint(status=201)
def create_user(call: Call) -> dict:
    """CREATE USER {"name", "password", "rsa_public_key", "default_role", "comment", "disabled"}."""
    body = body_fields(
        call,
        USER.body_fields("create", "name", "if_not_exists"),
        what="CREATE USER",
    )
    name = str(_required(body, "name", what="CREATE USER"))
    return call.account.security.create_user(
        call.ctx, name, **{k: v for k, v in body.items() if k != "name"}
    )


@endpoint
def describe_user(call: Call) -> dict:
    """DESCRIBE USER."""
    return call.account.security.describe_user(call.ctx, call.path["name"])


@endpoint
def alter_user(call: Call) -> dict:
    """ALTER USER {"password", "rsa_public_key", "default_role", "disabled", "comment"}."""
    body = body_fields(
        call,
        USER.body_fields("alter"),
        what="ALTER USER",
    )
    return call.account.security.alter_user(call.ctx, call.path["name"], **body)


@endpoint
def drop_user(call: Call) -> dict:
    """DROP USER (?if_exists=true)."""
    if_exists = call.query.get("if_exists", "").lower() in {"1", "true", "yes"}
    call.account.security.drop_user(call.ctx, call.path["name"], if_exists=if_exists)
    return {"status": f"user {call.path['name']} dropped"}


@endpoint
def show_roles(call: Call) -> list[dict]:
    """SHOW ROLES."""
    return call.account.security.show_roles(call.ctx)


@endpoint(status=201)
def create_role(call: Call) -> dict:
    """CREATE ROLE {"name", "comment", "if_not_exists"}."""
    body = body_fields(call, {"name", "comment", "if_not_exists"}, what="CREATE ROLE")
    name = str(_required(body, "name", what="CREATE ROLE"))
    return call.account.security.create_role(
        call.ctx, name, comment=body.get("comment"), if_not_exists=bool(body.get("if_not_exists"))
    )


@endpoint
def drop_role(call: Call) -> dict:
    """DROP ROLE (?if_exists=true); objects it owned pass to the caller's role."""
    if_exists = call.query.get("if_exists", "").lower() in {"1", "true", "yes"}
    call.account.security.drop_role(call.ctx, call.path["name"], if_exists=if_exists)
    return {"status": f"role {call.path['name']} dropped"}


@endpoint
def grant_role(call: Call) -> dict:
    """GRANT ROLE {name} TO {"to_user"} or {"to_role"}."""
    body = body_fields(call, {"to_user", "to_role"}, what="GRANT ROLE")
    call.account.security.grant_role(call.ctx, call.path["name"], **body)
    return {"status": "granted"}


@endpoint
def revoke_role(call: Call) -> dict:
    """REVOKE ROLE {name} FROM {"from_user"} or {"from_role"}."""
    body = body_fields(call, {"from_user", "from_role"}, what="REVOKE ROLE")
    call.account.security.revoke_role(call.ctx, call.path["name"], **body)
    return {"status": "revoked"}


@endpoint
def show_grants(call: Call) -> list[dict]:
    """SHOW GRANTS (?to_role=, ?of_role=, ?to_user=, ?on_type=&on_name=)."""
    q = call.query
    on = (q["on_type"], q.get("on_name")) if "on_type" in q else None
    return call.account.security.show_grants(
        call.ctx,
        to_role=q.get("to_role"),
        of_role=q.get("of_role"),
        to_user=q.get("to_user"),
        on=on,
    )


@endpoint(status=201)
def grant(call: Call) -> dict:
    """GRANT {"privilege", "object_type", "object_name", "to_role", "with_grant_option"}.

    Privilege OWNERSHIP transfers ownership ("copy_current_grants", default true)."""
    body = body_fields(
        call,
        {
            "privilege",
            "object_type",
            "object_name",
            "to_role",
            "with_grant_option",
            "copy_current_grants",
        },
        what="GRANT",
    )
    what = "GRANT"
    privilege = str(_required(body, "privilege", what=what))
    object_type = str(_required(body, "object_type", what=what))
    to_role = str(_required(body, "to_role", what=what))
    security = call.account.security
    if privilege.strip().upper() == "OWNERSHIP":
        security.grant_ownership(
            call.ctx,
            object_type,
            body.get("object_name"),
            to_role,
            copy_current_grants=bool(body.get("copy_current_grants", True)),
        )
        return {"granted": ["OWNERSHIP"]}
    granted = security.grant(
        call.ctx,
        privilege,
        object_type,
        body.get("object_name"),
        to_role,
        with_grant_option=bool(body.get("with_grant_option", False)),
    )
    return {"granted": granted}


@endpoint
def revoke(call: Call) -> dict:
    """REVOKE {"privilege", "object_type", "object_name", "from_role", "grant_option_only",
    "cascade"}."""
    body = body_fields(
        call,
        {"privilege", "object_type", "object_name", "from_role", "grant_option_only", "cascade"},
        what="REVOKE",
    )
    revoked = call.account.security.revoke(
        call.ctx,
        str(_required(body, "privilege", what="REVOKE")),
        str(_required(body, "object_type", what="REVOKE")),
        body.get("object_name"),
        str(_required(body, "from_role", what="REVOKE")),
        grant_option_only=bool(body.get("grant_option_only", False)),
        cascade=bool(body.get("cascade", False)),
    )
    return {"revoked": revoked}


routes = [
    Route(LOGIN_PATH, login, methods=["POST"]),
    Route("/api/v1/logout", logout, methods=["POST"]),
    Route("/api/v1/session", whoami, methods=["GET"]),
    Route("/api/v1/session/role", use_role, methods=["POST"]),
    Route("/api/v1/keypair/verify", whoami, methods=["POST"]),
    Route("/api/v1/tokens", create_token, methods=["POST"]),
    Route("/api/v1/tokens", list_tokens, methods=["GET"]),
    Route("/api/v1/tokens/{name}", revoke_token, methods=["DELETE"]),
    Route("/api/v1/users", show_users, methods=["GET"]),
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{name}", describe_user, methods=["GET"]),
    Route("/api/v1/users/{name}", alter_user, methods=["PATCH"]),
    Route("/api/v1/users/{name}", drop_user, methods=["DELETE"]),
    Route("/api/v1/roles", show_roles, methods=["GET"]),
    Route("/api/v1/roles", create_role, methods=["POST"]),
    Route("/api/v1/roles/{name}", drop_role, methods=["DELETE"]),
    Route("/api/v1/roles/{name}/grants", grant_role, methods=["POST"]),
    Route("/api/v1/roles/{name}/grants", revoke_role, methods=["DELETE"]),
    Route("/api/v1/grants", show_grants, methods=["GET"]),
    Route("/api/v1/grants", grant, methods=["POST"]),
    Route("/api/v1/grants", revoke, methods=["DELETE"]),
]
