"""Tokens scoped to services: they call those services' ingress endpoints and nothing else.

Made with SQL (``ALTER USER u ADD PROGRAMMATIC ACCESS TOKEN t SERVICES = (...)``) and over REST;
refused by the REST API, SQL and the console; kept off every other service at the ingress (even
one the same user and role just reached with an unscoped token, whose answer the gateway
cached); listed with their services; revoked at once.
"""

from __future__ import annotations

import pytest
from gateway_harness import add_service

from neve.context import RequestContext, admin_context
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SqlSyntaxError,
)

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

BODY = {"data": [[0, 1.0], [1, 2.0]]}


def sql(account, text: str, ctx: RequestContext | None = None):
    return account.sql.execute(ctx or admin_context("ML", "APPS"), text)


def column(result, name: str) -> list:
    return [row[result.columns.index(name)] for row in result.rows]


@pytest.fixture(scope="module")
def other(gw_account, backends, signatures) -> str:
    """ML.APPS.SCOPE_OTHER: a second service with ingress that the caller's role may use."""
    add_service(
        gw_account,
        "SCOPE_OTHER",
        [(b.host, b.port) for b in backends],
        signatures=signatures,
    )
    gw_account.security.grant(
        admin_context(), "USAGE", "SERVICE", "ML.APPS.SCOPE_OTHER", "caller_role"
    )
    return "/svc/ml.apps.scope_other/predict"


def test_a_scoped_token_reaches_its_service_and_nothing_else(
    gw_account, service, other, callers, http
):
    made = sql(
        gw_account,
        "ALTER USER caller ADD PROGRAMMATIC ACCESS TOKEN share_svc SERVICES = (ml.apps.svc) "
        "DAYS_TO_EXPIRY = 2 COMMENT = 'for the other installation'",
    )
    assert made.columns[:2] == ["token_name", "token_secret"]
    row = dict(zip(made.columns, made.rows[0], strict=True))
    assert (row["token_name"], row["user_name"], row["services"]) == (
        "SHARE_SVC",
        "CALLER",
        ["ML.APPS.SVC"],
    )
    scoped = {"Authorization": f"Bearer {row['token_secret']}"}

    # its service, in both path forms
    resp = http.post("/svc/ml.apps.svc/predict", json=BODY, headers=scoped)
    assert resp.status_code == 200, resp.text
    assert http.get("/svc/ml.apps.svc/openapi.json", headers=scoped).status_code == 200

    # another service: refused, even right after the same user and role reached it unscoped
    # (the gateway caches who may reach which service: the scope is part of that answer)
    assert http.post(other, json=BODY, headers=callers["caller"].headers).status_code == 200
    denied = http.post(other, json=BODY, headers=scoped)
    assert denied.status_code == 403, denied.text
    assert "scoped to other services" in denied.json()["message"]
    assert "ML.APPS.SCOPE_OTHER" in denied.json()["message"]

    # the REST API, SQL and the console refuse it
    for method, path, body in (
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/sql", {"sql": "SELECT 1"}),
        ("POST", "/api/v1/routes/lookup", {"service": "ml.apps.svc", "method": "predict"}),
        ("GET", "/api/v1/services", None),
    ):
        refused = http.request(method, path, json=body, headers=scoped)
        assert refused.status_code == 403, (path, refused.text)
        message = refused.json()["message"]
        assert "token SHARE_SVC is scoped to the ingress endpoints of service(s) ML.APPS.SVC" in (
            message
        )
    console = http.get("/console/", cookies={"neve_console": row["token_secret"]})
    assert console.status_code == 303 and "/console/login" in console.headers["location"]

    # listed with its services, never its secret; revoked at once
    listed = sql(gw_account, "SHOW USER PROGRAMMATIC ACCESS TOKENS FOR USER caller")
    mine = [dict(zip(listed.columns, r, strict=True)) for r in listed.rows]
    [share] = [t for t in mine if t["name"] == "SHARE_SVC"]
    assert (share["services"], share["status"], share["comment"]) == (
        ["ML.APPS.SVC"],
        "ACTIVE",
        "for the other installation",
    )
    assert row["token_secret"] not in repr(listed.rows)
    sql(gw_account, "ALTER USER caller REMOVE PAT share_svc")
    gone = http.post("/svc/ml.apps.svc/predict", json=BODY, headers=scoped)
    assert gone.status_code == 401 and "SHARE_SVC has been revoked" in gone.json()["message"]
    listed = sql(gw_account, "SHOW USER PATS FOR USER caller")
    assert [r[listed.columns.index("status")] for r in listed.rows if r[0] == "SHARE_SVC"] == [
        "REVOKED"
    ]


def test_a_scoped_token_over_rest_and_its_checks(gw_account, service, other, callers, http):
    caller = callers["caller"]
    made = http.post(
        "/api/v1/tokens",
        json={"name": "rest_share", "services": ["ml.apps.scope_other"], "days_to_expiry": 1},
        headers=caller.headers,
    )
    assert made.status_code == 201, made.text
    assert made.json()["services"] == ["ML.APPS.SCOPE_OTHER"]
    scoped = {"Authorization": f"Bearer {made.json()['token']}"}
    assert http.post(other, json=BODY, headers=scoped).status_code == 200
    assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=scoped).status_code == 403
    listed = http.get("/api/v1/tokens", headers=caller.headers).json()
    assert [t["services"] for t in listed if t["name"] == "REST_SHARE"] == [["ML.APPS.SCOPE_OTHER"]]

    def add(text: str, ctx: RequestContext | None = None):
        return sql(gw_account, f"ALTER USER {text}", ctx)

    with pytest.raises(InvalidArgumentError, match=r"SERVICES = \(\) names no service"):
        add("caller ADD PAT t1 SERVICES = ()")
    with pytest.raises(ObjectNotFoundError, match=r"service ML\.APPS\.NOPE does not exist"):
        add("caller ADD PAT t1 SERVICES = (nope)")
    add_service(gw_account, "SCOPE_PRIVATE", [], signatures=None, ingress_enabled=False)
    with pytest.raises(InvalidArgumentError, match="has no ingress endpoint"):
        add("caller ADD PAT t1 SERVICES = (scope_private)")
    # the role the token is restricted to must be able to use the service
    with pytest.raises(PermissionDeniedError, match="role PUBLIC has no USAGE on service"):
        add("caller ADD PAT t1 ROLE_RESTRICTION = public SERVICES = (svc)")
    # the caller must be able to use it too
    outsider = RequestContext(user="OUTSIDER", role="OUTSIDER_ROLE", database="ML", schema="APPS")
    with pytest.raises(PermissionDeniedError, match=r"needs USAGE on SERVICE ML\.APPS\.SVC"):
        add("ADD PAT t1 SERVICES = (svc)", outsider)
    add("caller ADD PAT t1 ROLE_RESTRICTION = caller_role SERVICES = (svc, svc)")
    with pytest.raises(ObjectExistsError, match="T1 already exists"):
        add("caller ADD PAT t1 SERVICES = (svc)")
    with pytest.raises(SqlSyntaxError, match="unknown property SERVICE "):
        add("caller ADD PAT t2 SERVICE = (svc)")
    assert add("IF EXISTS nobody ADD PAT t1 SERVICES = (svc)").rows == [
        ["Statement executed successfully."]
    ]
    add("caller REMOVE PROGRAMMATIC ACCESS TOKEN t1")


def test_a_scoped_token_from_the_cli(base_url, service, callers, http, monkeypatch):
    from typer.testing import CliRunner

    from neve.cli.users import app

    monkeypatch.setenv("NEVE_URL", base_url)
    monkeypatch.setenv("NEVE_TOKEN", callers["admin"].token)
    monkeypatch.delenv("NEVE_ROLE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no truncated cells
    runner = CliRunner()
    made = runner.invoke(
        app,
        ["tokens", "create", "cli_share", "--service", "ml.apps.svc", "--days", "1"]
        + ["--comment", "for B"],
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert "scoped to service(s) ML.APPS.SVC" in made.stderr
    scoped = {"Authorization": f"Bearer {token}"}
    assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=scoped).status_code == 200
    assert http.get("/api/v1/tokens", headers=scoped).status_code == 403
    listed = runner.invoke(app, ["tokens", "list"])
    assert listed.exit_code == 0, listed.output
    [line] = [ln for ln in listed.stdout.splitlines() if "CLI_SHARE" in ln]
    assert "ML.APPS.SVC" in line and "ACTIVE" in line and "for B" in line
    assert token not in listed.stdout
    assert runner.invoke(app, ["tokens", "revoke", "cli_share"]).exit_code == 0
    assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=scoped).status_code == 401
