"""Roles, grants, ownership, escalation attempts and the checks other managers call."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.security.manager import ACCOUNT


def as_role(user: str, role: str) -> RequestContext:
    return RequestContext(user=user, role=role, database="ML", schema="APPS")


def service_row(s) -> m.Service:
    return s.scalar(select(m.Service).where(m.Service.name == "SVC"))


@pytest.fixture
def team(sec, admin, objects):
    """Role DEV (user DEV_USER) and role APP (user APP_USER); DEV reaches ML.APPS."""
    for role in ("dev", "app"):
        sec.create_role(admin, role)
        sec.create_user(admin, f"{role}_user")
        sec.grant_role(admin, role, to_user=f"{role}_user")
    sec.grant(admin, "USAGE", "DATABASE", "ML", "dev")
    sec.grant(admin, "USAGE", "SCHEMA", "ML.APPS", "dev")
    return as_role("DEV_USER", "DEV"), as_role("APP_USER", "APP")


def test_require_names_privilege_and_object_and_containers(account, sec, admin, team):
    dev, app = team
    with account.catalog.transaction() as s:
        svc = service_row(s)
        with pytest.raises(
            PermissionDeniedError, match=r"DEV needs USAGE on SERVICE ML\.APPS\.SVC"
        ):
            sec.require(s, dev, "USAGE", svc)
        # APP lacks USAGE on the database: the error names the container, not the service
        with pytest.raises(PermissionDeniedError, match="needs USAGE on DATABASE ML to use"):
            sec.require(s, app, "USAGE", svc)
    sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "dev")
    with account.catalog.transaction() as s:
        sec.require(s, dev, "USAGE", service_row(s))
        assert not sec.has_privilege(s, dev, "OPERATE", service_row(s))


def test_implied_privileges(account, sec, admin, team):
    dev, _ = team
    sec.grant(admin, "OPERATE", "SERVICE", "ml.apps.svc", "dev")
    sec.grant(admin, "WRITE", "IMAGE REPOSITORY", "ml.apps.images", "dev")
    with account.catalog.transaction() as s:
        repo = s.scalar(select(m.ImageRepository))
        assert sec.has_privilege(s, dev, "MONITOR", service_row(s))
        assert sec.has_privilege(s, dev, "READ", repo)
        assert not sec.has_privilege(s, dev, "SERVICE READ", repo)


def test_create_on_schema_needs_usage_on_the_schema_too(account, sec, admin, team):
    _, app = team
    sec.grant(admin, "CREATE SERVICE", "SCHEMA", "ML.APPS", "app")
    sec.grant(admin, "USAGE", "DATABASE", "ML", "app")
    with account.catalog.transaction() as s:
        sch = s.scalar(select(m.Schema))
        with pytest.raises(PermissionDeniedError, match="needs USAGE on SCHEMA ML.APPS"):
            sec.require(s, app, "CREATE SERVICE", sch)
    sec.grant(admin, "USAGE", "SCHEMA", "ML.APPS", "app")
    with account.catalog.transaction() as s:
        sec.require(s, app, "CREATE SERVICE", s.scalar(select(m.Schema)))


def test_role_hierarchy_inherits_and_refuses_cycles(account, sec, admin, team):
    dev, app = team
    sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "dev")
    sec.grant_role(admin, "dev", to_role="app")  # APP inherits DEV
    with account.catalog.transaction() as s:
        sec.require(s, app, "USAGE", service_row(s))
    with pytest.raises(InvalidArgumentError, match="cycle"):
        sec.grant_role(admin, "app", to_role="dev")
    with pytest.raises(InvalidArgumentError, match="cycle"):
        sec.grant_role(admin, "dev", to_role="dev")
    # USE ROLE: APP_USER may use DEV (inherited through APP) but not SYSADMIN
    assert sec.use_role(app, "dev").role == "DEV"
    with pytest.raises(PermissionDeniedError, match="SYSADMIN is not granted to user APP_USER"):
        sec.use_role(app, "sysadmin")
    sec.revoke_role(admin, "dev", from_role="app")
    with account.catalog.transaction() as s:
        assert not sec.has_privilege(s, app, "USAGE", service_row(s))


def test_escalation_attempts_are_refused(account, sec, admin, team):
    dev, app = team
    sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "dev")
    # holding a privilege without GRANT OPTION does not let DEV pass it on
    with pytest.raises(PermissionDeniedError, match="cannot grant USAGE on SERVICE ML.APPS.SVC"):
        sec.grant(dev, "USAGE", "SERVICE", "ml.apps.svc", "app")
    # a privilege DEV does not hold at all
    with pytest.raises(PermissionDeniedError, match="cannot grant OPERATE"):
        sec.grant(dev, "OPERATE", "SERVICE", "ml.apps.svc", "dev")
    with pytest.raises(PermissionDeniedError, match="cannot grant CREATE ROLE on ACCOUNT"):
        sec.grant(dev, "CREATE ROLE", "ACCOUNT", None, "dev")
    # roles DEV does not own: not to others and not to itself
    with pytest.raises(PermissionDeniedError, match="does not own ROLE ACCOUNTADMIN"):
        sec.grant_role(dev, "accountadmin", to_user="dev_user")
    with pytest.raises(PermissionDeniedError, match="does not own ROLE SYSADMIN"):
        sec.grant_role(dev, "sysadmin", to_role="dev")
    with pytest.raises(PermissionDeniedError, match="does not own SERVICE"):
        sec.grant_ownership(dev, "SERVICE", "ml.apps.svc", "dev")
    with pytest.raises(PermissionDeniedError, match="needs CREATE USER on ACCOUNT"):
        sec.create_user(dev, "sneaky", password="sneaky password")
    with pytest.raises(PermissionDeniedError, match="does not own USER ADMIN"):
        sec.alter_user(dev, "admin", password="taken over!!")
    with account.catalog.transaction() as s:
        assert not sec.has_privilege(s, app, "USAGE", service_row(s))
        assert not sec.has_privilege(s, dev, "OPERATE", service_row(s))
        assert sec.usable_roles(s, "DEV_USER") == {"DEV", "PUBLIC"}


def test_grant_option_lets_a_holder_grant_and_revoke_its_own_grants(account, sec, admin, team):
    dev, _ = team
    sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "dev", with_grant_option=True)
    sec.grant(admin, "USAGE", "DATABASE", "ML", "app")
    sec.grant(admin, "USAGE", "SCHEMA", "ML.APPS", "app")
    sec.grant(dev, "USAGE", "SERVICE", "ml.apps.svc", "app")
    grants = sec.show_grants(admin, on=("SERVICE", "ml.apps.svc"))
    assert {(g["privilege"], g["grantee_name"], g["granted_by"]) for g in grants} == {
        ("OWNERSHIP", "SYSADMIN", "SYSADMIN"),
        ("USAGE", "DEV", "ACCOUNTADMIN"),
        ("USAGE", "APP", "DEV"),
    }
    assert {g["name"] for g in grants} == {"ML.APPS.SVC"}
    with pytest.raises(PermissionDeniedError, match="neither owns the object nor granted"):
        sec.revoke(dev, "USAGE", "SERVICE", "ml.apps.svc", "dev")
    assert sec.revoke(dev, "USAGE", "SERVICE", "ml.apps.svc", "app") == ["USAGE"]


def test_all_expands_and_unknown_privileges_are_named(sec, admin, team):
    assert sec.grant(admin, "ALL", "COMPUTE POOL", "cpu_pool", "dev") == [
        "MODIFY",
        "MONITOR",
        "OPERATE",
        "USAGE",
    ]
    with pytest.raises(InvalidArgumentError, match="privilege READ does not apply to SERVICE"):
        sec.grant(admin, "READ", "SERVICE", "ml.apps.svc", "dev")
    with pytest.raises(InvalidArgumentError, match="unknown object type 'WAREHOUSE'"):
        sec.grant(admin, "USAGE", "WAREHOUSE", "w", "dev")
    with pytest.raises(ObjectNotFoundError, match="service ML.APPS.NOPE does not exist"):
        sec.grant(admin, "USAGE", "SERVICE", "ml.apps.nope", "dev")
    with pytest.raises(ObjectNotFoundError, match="role GHOST does not exist"):
        sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "ghost")
    with pytest.raises(InvalidArgumentError, match="OWNERSHIP cannot be revoked"):
        sec.revoke(admin, "OWNERSHIP", "SERVICE", "ml.apps.svc", "sysadmin")


def test_grant_ownership_copies_or_revokes_current_grants(account, sec, admin, team):
    dev, app = team
    sec.grant(admin, "MONITOR", "SERVICE", "ml.apps.svc", "app")
    sec.grant_ownership(admin, "SERVICE", "ml.apps.svc", "dev", copy_current_grants=True)
    with account.catalog.transaction() as s:
        svc = service_row(s)
        assert svc.owner_role == "DEV"
        sec.require_owner(s, dev, svc)
        assert sec.is_owner(s, dev, svc)
    assert ("MONITOR", "APP") in {
        (g["privilege"], g["grantee_name"]) for g in sec.show_grants(dev, on=("SERVICE", "svc"))
    }
    # the new owner hands it on without the old grants
    sec.grant_ownership(dev, "SERVICE", "svc", "app", copy_current_grants=False)
    rows = sec.show_grants(admin, on=("SERVICE", "ml.apps.svc"))
    assert [(g["privilege"], g["grantee_name"]) for g in rows] == [("OWNERSHIP", "APP")]
    with account.catalog.transaction() as s, pytest.raises(PermissionDeniedError):
        sec.require_owner(s, dev, service_row(s))


def test_show_grants_to_role_of_role_to_user(sec, admin, team):
    dev, app = team
    sec.grant(admin, "USAGE", "COMPUTE POOL", "cpu_pool", "dev")
    sec.grant_role(admin, "app", to_role="dev")
    to_dev = {
        (g["privilege"], g["granted_on"], g["name"]) for g in sec.show_grants(dev, to_role="dev")
    }
    assert {
        ("USAGE", "DATABASE", "ML"),
        ("USAGE", "SCHEMA", "ML.APPS"),
        ("USAGE", "COMPUTE POOL", "CPU_POOL"),
        ("USAGE", "ROLE", "APP"),
    } <= to_dev
    of_app = {(g["granted_to"], g["grantee_name"]) for g in sec.show_grants(admin, of_role="app")}
    assert of_app == {("USER", "APP_USER"), ("ROLE", "DEV")}
    assert [g["role"] for g in sec.show_grants(app)] == ["APP"]
    with pytest.raises(PermissionDeniedError, match="may not see the grants of role SYSADMIN"):
        sec.show_grants(app, to_role="sysadmin")
    with pytest.raises(PermissionDeniedError):
        sec.show_grants(app, on=("SERVICE", "ml.apps.svc"))


def test_drop_role_passes_ownership_to_the_dropper_and_cleans_grants(account, sec, admin, team):
    sec.grant_ownership(admin, "COMPUTE POOL", "cpu_pool", "dev")
    sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "dev")
    sec.drop_role(admin, "dev")
    with account.catalog.transaction() as s:
        assert s.scalar(select(m.ComputePool.owner_role)) == "ACCOUNTADMIN"
        assert not list(s.scalars(select(m.Grant).where(m.Grant.grantee_role == "DEV")))
        assert sec.usable_roles(s, "DEV_USER") == {"PUBLIC"}
    with pytest.raises(InvalidArgumentError, match="system role SYSADMIN cannot be dropped"):
        sec.drop_role(admin, "sysadmin")
    sec.drop_role(admin, "dev", if_exists=True)


def test_delegated_user_and_role_administration(account, sec, admin):
    """A USERADMIN-style role with CREATE USER/ROLE manages what it created, nothing more."""
    sec.create_role(admin, "useradmin")
    sec.grant(admin, "CREATE USER", "ACCOUNT", None, "useradmin")
    sec.grant(admin, "CREATE ROLE", "ACCOUNT", None, "useradmin")
    ua = RequestContext(user="ADMIN", role="USERADMIN")
    sec.create_role(ua, "team")
    sec.create_user(ua, "member", password="member password")
    sec.grant_role(ua, "team", to_user="member")  # owns TEAM
    assert {u["name"] for u in sec.show_users(ua)} == {"ADMIN", "MEMBER"}  # self + owned
    sec.alter_user(ua, "member", comment="ok")
    with pytest.raises(ObjectExistsError):
        sec.create_role(ua, "team")
    assert sec.create_role(ua, "team", if_not_exists=True)["owner"] == "USERADMIN"
    with pytest.raises(PermissionDeniedError):
        sec.grant_role(ua, "sysadmin", to_user="member")
    sec.drop_user(ua, "member")
    sec.drop_role(ua, "team")
    with account.catalog.transaction() as s:
        assert s.scalar(select(m.User).where(m.User.name == "MEMBER")) is None


def test_on_drop_removes_grants_of_a_dropped_object(account, sec, admin, team):
    sec.grant(admin, "USAGE", "SERVICE", "ml.apps.svc", "dev")
    with account.catalog.transaction() as s:
        svc = service_row(s)
        sec.on_drop(s, svc)
        s.delete(svc)
    with account.catalog.transaction() as s:
        assert not list(s.scalars(select(m.Grant).where(m.Grant.object_type == "SERVICE")))


def test_accountadmin_passes_every_check(account, sec, admin, objects):
    with account.catalog.transaction() as s:
        for obj in [ACCOUNT, service_row(s), s.scalar(select(m.ComputePool))]:
            sec.require(s, admin, "OPERATE" if obj != ACCOUNT else "CREATE ROLE", obj)
            sec.require_owner(s, admin, obj)
