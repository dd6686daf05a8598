"""Tokens scoped to services, in one process: accepted only for the ingress, where the context
carries the services' ids and the gateway's access check keeps the caller to them (the HTTP
path, the REST API's refusal and revocation at the proxies: tests/gateway/test_scoped_tokens.py
and tests/services/test_sharing.py)."""

from __future__ import annotations

import pytest

from neve.catalog import models as m
from neve.context import RequestContext
from neve.dataplane.routes import ctx_from_dict, ctx_to_dict
from neve.dataplane.targets import CatalogIngressTargets
from neve.errors import AuthenticationError, PermissionDeniedError
from neve.gateway.access import LocalAccess
from neve.sql.parser import parse_management


@pytest.fixture
def two_services(account, objects) -> dict[str, int]:
    with account.catalog.transaction() as s:
        svc = s.query(m.Service).filter_by(name="SVC").one()
        other = m.Service(
            schema_id=svc.schema_id,
            name="OTHER",
            pool_id=svc.pool_id,
            status="RUNNING",
            ingress_enabled=True,
            owner_role="SYSADMIN",
        )
        s.add(other)
        s.flush()
        return {"SVC": svc.id, "OTHER": other.id}


def test_a_scoped_token_authenticates_only_for_the_ingress(account, sec, admin, two_services):
    made = sec.create_token(admin, "share", services=["ml.apps.svc"], comment="for B")
    assert made["services"] == ["ML.APPS.SVC"] and made["comment"] == "for B"
    headers = {"authorization": f"Bearer {made['token']}"}
    with pytest.raises(PermissionDeniedError, match=r"scoped to the ingress endpoints of .*SVC"):
        sec.authenticate_request(headers)
    with pytest.raises(PermissionDeniedError, match="cannot call the REST API, run SQL"):
        sec.authenticate_token(made["token"])  # the console's path
    ctx, _ = sec.authenticate(headers, ingress=True)
    assert ctx.service_scope == (two_services["SVC"],) and ctx.user == "ADMIN"
    assert ctx_from_dict(ctx_to_dict(ctx)) == ctx  # as it travels between proxy and control

    access = LocalAccess(account.catalog, account.security, CatalogIngressTargets(account.catalog))
    assert access.authorized_target(ctx, None, "ml.apps.svc").service_id == two_services["SVC"]
    with pytest.raises(PermissionDeniedError, match=r"may not call service ML\.APPS\.OTHER"):
        access.authorized_target(ctx, None, "ml.apps.other")
    with pytest.raises(PermissionDeniedError, match="scoped to other services"):
        access.ensure_running(ctx, two_services["OTHER"], 1.0)

    # an unscoped token of the same user reaches both, and is accepted everywhere
    plain = sec.create_token(admin, "plain")["token"]
    unscoped = sec.authenticate_request({"authorization": f"Bearer {plain}"})
    assert unscoped.service_scope is None
    assert access.authorized_target(unscoped, None, "ml.apps.other").qualified_name.endswith(
        "OTHER"
    )

    listed = {t["name"]: t for t in sec.list_tokens(admin)}
    assert listed["SHARE"]["services"] == ["ML.APPS.SVC"] and listed["PLAIN"]["services"] is None
    sec.revoke_token(admin, "share")
    with pytest.raises(AuthenticationError, match="SHARE has been revoked"):
        sec.authenticate(headers, ingress=True)


def test_a_dropped_service_stays_out_of_reach(account, sec, admin, two_services):
    made = sec.create_token(admin, "share", services=["ml.apps.other"])
    with account.catalog.transaction() as s:
        s.delete(s.get(m.Service, two_services["OTHER"]))
    [listed] = [t for t in sec.list_tokens(admin) if t["name"] == "SHARE"]
    assert listed["services"] == [f"#{two_services['OTHER']} (dropped)"]
    ctx, _ = sec.authenticate({"authorization": f"Bearer {made['token']}"}, ingress=True)
    access = LocalAccess(account.catalog, account.security, CatalogIngressTargets(account.catalog))
    with pytest.raises(PermissionDeniedError):
        access.authorized_target(ctx, None, "ml.apps.svc")


def test_the_statements_parse() -> None:
    add = parse_management(
        "ALTER USER IF EXISTS bob ADD PROGRAMMATIC ACCESS TOKEN share ROLE_RESTRICTION = analyst "
        "DAYS_TO_EXPIRY = 7 SERVICES = (ml.apps.svc, other) COMMENT = 'for B'"
    )
    assert add is not None and (add.kind, add.name, add.if_exists) == (
        "ALTER USER ADD PAT",
        "bob",
        True,
    )
    assert add.args["token"] == "share"
    assert add.props == {
        "ROLE_RESTRICTION": "analyst",
        "DAYS_TO_EXPIRY": 7,
        "SERVICES": ["ml.apps.svc", "other"],
        "COMMENT": "for B",
    }
    own = parse_management("ALTER USER ADD PAT share SERVICES = (svc)")
    assert own is not None and (own.kind, own.name) == ("ALTER USER ADD PAT", None)
    remove = parse_management("ALTER USER REMOVE PROGRAMMATIC ACCESS TOKEN share")
    assert remove is not None and (remove.kind, remove.args["token"]) == (
        "ALTER USER REMOVE PAT",
        "share",
    )
    shown = parse_management("SHOW USER PROGRAMMATIC ACCESS TOKENS FOR USER bob")
    assert shown is not None and (shown.kind, shown.name) == ("SHOW USER PATS", "bob")
    still = parse_management("ALTER USER bob SET COMMENT = 'x'")
    assert still is not None and still.kind == "ALTER USER"
    ext = parse_management(
        "CREATE OR REPLACE EXTERNAL FUNCTION f(a NUMBER, b VARCHAR) RETURNS OBJECT "
        "API_INTEGRATION = i MAX_BATCH_ROWS = 10 AS 'https://h/svc/s/predict'"
    )
    assert ext is not None and ext.kind == "CREATE EXTERNAL FUNCTION" and ext.or_replace
    assert ext.args == {
        "arguments": [("a", "NUMBER"), ("b", "VARCHAR")],
        "returns": "OBJECT",
        "url": "https://h/svc/s/predict",
    }
    for text, kind in (
        ("SHOW API INTEGRATIONS LIKE 'a%'", "SHOW API INTEGRATIONS"),
        ("DESCRIBE API INTEGRATION i", "DESCRIBE API INTEGRATION"),
        ("DESC INTEGRATION i", "DESCRIBE INTEGRATION"),
        ("DROP API INTEGRATION IF EXISTS i", "DROP API INTEGRATION"),
        ("ALTER API INTEGRATION i SET ENABLED = FALSE", "ALTER API INTEGRATION"),
        ("SHOW EXTERNAL FUNCTIONS IN SCHEMA ml.apps", "SHOW FUNCTIONS"),
    ):
        st = parse_management(text)
        assert st is not None and st.kind == kind, text


def test_an_unscoped_context_is_unchanged(sec, admin) -> None:
    assert RequestContext(user="A", role="B").service_scope is None
    token = sec.create_token(admin, "plain")["token"]
    assert (
        sec.authenticate({"authorization": f"Bearer {token}"}, ingress=True)[0].service_scope
        is None
    )
