"""The privilege matrix: for each operation x role, the expected allow/deny, on every surface.

Rows are operations, columns are roles; each operation is written once per surface: "api" (the
manager methods every surface ends in), "http" (raw HTTP to the REST API and the ingress),
"sql" (the statement, run by the SQL engine) and "client" (the same statement through the Python
client, ``neve.connect(url=..., token=...).sql(...)``, over HTTP). An operation without a SQL form
(calling the ingress, tokens) is checked on api and http only. To add a surface, give ``Op`` a
field for it and add one ``run_<surface>`` entry to ``SURFACES``.

Roles: ADMIN (ACCOUNTADMIN); OWNER (APP_OWNER: owns service ML.APPS.MATRIX_SVC); CALLER
(APP_CALLER: USAGE on it); OUTSIDER (USAGE on the database and schema only); NOBODY (PUBLIC).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gateway_harness import add_service

import neve
from neve.context import RequestContext, admin_context
from neve.errors import PermissionDeniedError

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

ROLES = ["ADMIN", "OWNER", "CALLER", "OUTSIDER", "NOBODY"]
SERVICE = "ML.APPS.MATRIX_SVC"
_unique = itertools.count()


@dataclass
class Actor:
    name: str
    ctx: RequestContext  # for the api and sql surfaces
    headers: dict[str, str]  # for the http surface
    session: Any = None  # for the client surface: neve.connect(url=..., token=...)


@dataclass
class Env:
    account: Any
    http: httpx.Client
    actors: dict[str, Actor]

    @property
    def sec(self):
        return self.account.security


@dataclass
class Op:
    name: str
    allowed: set[str]  # roles that may do it; every other role must be refused
    api: Callable[[Env, Actor], Any]
    http: Callable[[Env, Actor], httpx.Response]
    sql: Callable[[], str] | None = None  # the statement (a function: names may be fresh)
    undo: Callable[[Env, str], None] | None = None  # run as admin after an allowed attempt


def fresh(prefix: str) -> str:
    return f"{prefix}_{next(_unique)}"


def _call_api(env: Env, actor: Actor) -> None:
    # what every manager does before calling a service (ServiceManager.invoke, SQL functions)
    from sqlalchemy import select

    from neve.catalog import models as m

    with env.account.catalog.transaction() as s:
        svc = s.scalar(select(m.Service).where(m.Service.name == "MATRIX_SVC"))
        env.sec.require(s, actor.ctx, "USAGE", svc)


OPS = [
    Op(
        "call the service",
        {"ADMIN", "OWNER", "CALLER"},
        api=_call_api,
        http=lambda env, a: env.http.post(
            f"/svc/{SERVICE}/predict", json={"data": [[0, 1.0]]}, headers=a.headers
        ),
    ),
    Op(
        "show grants on the service",
        {"ADMIN", "OWNER", "CALLER"},
        api=lambda env, a: env.sec.show_grants(a.ctx, on=("SERVICE", SERVICE)),
        sql=lambda: f"SHOW GRANTS ON SERVICE {SERVICE}",
        http=lambda env, a: env.http.get(
            "/api/v1/grants", params={"on_type": "SERVICE", "on_name": SERVICE}, headers=a.headers
        ),
    ),
    Op(
        "grant MONITOR on the service",
        {"ADMIN", "OWNER"},
        api=lambda env, a: env.sec.grant(a.ctx, "MONITOR", "SERVICE", SERVICE, "PUBLIC"),
        sql=lambda: f"GRANT MONITOR ON SERVICE {SERVICE} TO ROLE PUBLIC",
        http=lambda env, a: env.http.post(
            "/api/v1/grants",
            json={
                "privilege": "MONITOR",
                "object_type": "SERVICE",
                "object_name": SERVICE,
                "to_role": "PUBLIC",
            },
            headers=a.headers,
        ),
        undo=lambda env, _: env.sec.revoke(
            admin_context(), "MONITOR", "SERVICE", SERVICE, "PUBLIC"
        ),
    ),
    Op(
        "transfer ownership of the service (to its owner)",
        {"ADMIN", "OWNER"},
        api=lambda env, a: env.sec.grant_ownership(a.ctx, "SERVICE", SERVICE, "APP_OWNER"),
        sql=lambda: f"GRANT OWNERSHIP ON SERVICE {SERVICE} TO ROLE APP_OWNER COPY CURRENT GRANTS",
        http=lambda env, a: env.http.post(
            "/api/v1/grants",
            json={
                "privilege": "OWNERSHIP",
                "object_type": "SERVICE",
                "object_name": SERVICE,
                "to_role": "APP_OWNER",
            },
            headers=a.headers,
        ),
    ),
    Op(
        "create a role",
        {"ADMIN"},
        api=lambda env, a: env.sec.create_role(a.ctx, fresh("m_role")),
        sql=lambda: f"CREATE ROLE {fresh('m_role')}",
        http=lambda env, a: env.http.post(
            "/api/v1/roles", json={"name": fresh("m_role")}, headers=a.headers
        ),
    ),
    Op(
        "create a user",
        {"ADMIN"},
        api=lambda env, a: env.sec.create_user(a.ctx, fresh("m_user")),
        sql=lambda: f"CREATE USER {fresh('m_user')}",
        http=lambda env, a: env.http.post(
            "/api/v1/users", json={"name": fresh("m_user")}, headers=a.headers
        ),
    ),
    Op(
        "grant role APP_CALLER to a user",
        {"ADMIN"},
        api=lambda env, a: env.sec.grant_role(a.ctx, "APP_CALLER", to_user="m_target"),
        sql=lambda: "GRANT ROLE APP_CALLER TO USER m_target",
        http=lambda env, a: env.http.post(
            "/api/v1/roles/APP_CALLER/grants", json={"to_user": "m_target"}, headers=a.headers
        ),
        undo=lambda env, _: env.sec.revoke_role(
            admin_context(), "APP_CALLER", from_user="m_target"
        ),
    ),
    Op(
        "create an own access token",
        set(ROLES),
        api=lambda env, a: env.sec.create_token(a.ctx, fresh("m_pat")),
        http=lambda env, a: env.http.post(
            "/api/v1/tokens", json={"name": fresh("m_pat")}, headers=a.headers
        ),
    ),
    Op(
        "list the admin's tokens",
        {"ADMIN"},
        api=lambda env, a: env.sec.list_tokens(a.ctx, user="ADMIN"),
        http=lambda env, a: env.http.get(
            "/api/v1/tokens", params={"user": "ADMIN"}, headers=a.headers
        ),
    ),
    Op(
        "show grants to role APP_CALLER",
        {"ADMIN", "CALLER"},
        api=lambda env, a: env.sec.show_grants(a.ctx, to_role="APP_CALLER"),
        sql=lambda: "SHOW GRANTS TO ROLE APP_CALLER",
        http=lambda env, a: env.http.get(
            "/api/v1/grants", params={"to_role": "APP_CALLER"}, headers=a.headers
        ),
    ),
]


def run_api(env: Env, op: Op, actor: Actor) -> bool:
    try:
        op.api(env, actor)
    except PermissionDeniedError:
        return False
    return True


def run_http(env: Env, op: Op, actor: Actor) -> bool:
    resp = op.http(env, actor)
    if resp.status_code == 403:
        return False
    assert resp.status_code < 300, f"{op.name} as {actor.name}: HTTP {resp.status_code} {resp.text}"
    return True


def run_sql(env: Env, op: Op, actor: Actor) -> bool:
    try:
        env.account.sql.execute(actor.ctx, op.sql())  # type: ignore[misc]
    except PermissionDeniedError:
        return False
    return True


def run_client(env: Env, op: Op, actor: Actor) -> bool:
    try:
        actor.session.sql(op.sql())  # type: ignore[misc]
    except PermissionDeniedError:  # the server's 403, re-raised by the client as the same class
        return False
    return True


SURFACES: dict[str, Callable[[Env, Op, Actor], bool]] = {
    "api": run_api,
    "http": run_http,
    "sql": run_sql,
    "client": run_client,
}
CASES = [
    pytest.param(op, surface, id=f"{op.name}-{surface}")
    for op in OPS
    for surface in SURFACES
    if surface in ("api", "http") or op.sql is not None
]


@pytest.fixture(scope="module")
def env(gw_account, backends, signatures, base_url) -> Env:
    sec = gw_account.security
    admin = admin_context()
    for role in ("app_owner", "app_caller", "app_outsider"):
        sec.create_role(admin, role)
    add_service(
        gw_account,
        "MATRIX_SVC",
        [(b.host, b.port) for b in backends],
        signatures=signatures,
        owner_role="APP_OWNER",
    )
    for role in ("app_owner", "app_caller", "app_outsider"):
        sec.grant(admin, "USAGE", "DATABASE", "ML", role)
        sec.grant(admin, "USAGE", "SCHEMA", "ML.APPS", role)
    sec.grant(admin, "USAGE", "SERVICE", SERVICE, "app_caller")
    sec.create_user(admin, "m_target", password="target password")
    actors = {
        "ADMIN": Actor("ADMIN", admin, {"Authorization": f"Bearer {sec.local_admin_token()}"})
    }
    for label, role in [
        ("OWNER", "APP_OWNER"),
        ("CALLER", "APP_CALLER"),
        ("OUTSIDER", "APP_OUTSIDER"),
        ("NOBODY", None),
    ]:
        user = f"m_{label.lower()}"
        sec.create_user(admin, user, password=f"{user} password")
        if role:
            sec.grant_role(admin, role, to_user=user)
        token = sec.login(user, f"{user} password", role=role)
        ctx = sec.authenticate_token(token)
        assert ctx.role == (role or "PUBLIC")
        actors[label] = Actor(label, ctx, {"Authorization": f"Bearer {token}"})
    for actor in actors.values():
        token = actor.headers["Authorization"].split(" ", 1)[1]
        actor.session = neve.connect(url=base_url, token=token)
        assert actor.session.whoami()["role"] == actor.ctx.role
    try:
        with httpx.Client(base_url=base_url, trust_env=False, timeout=30) as client:
            yield Env(gw_account, client, actors)
    finally:
        for actor in actors.values():
            actor.session.close()


@pytest.mark.parametrize(("op", "surface"), CASES)
def test_privilege_matrix(env: Env, op: Op, surface: str):
    got = {}
    for role in ROLES:
        got[role] = SURFACES[surface](env, op, env.actors[role])
        if got[role] and op.undo is not None:
            op.undo(env, role)
    expected = {role: role in op.allowed for role in ROLES}
    assert got == expected, f"{op.name} on {surface}: allowed {got}, expected {expected}"
