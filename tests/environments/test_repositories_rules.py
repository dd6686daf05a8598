"""Image repositories, network rules and external access integrations in the catalog."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from neve.catalog import models as m
from neve.context import RequestContext, admin_context
from neve.environments.network import index_policy, parse_host_port
from neve.errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
)


@pytest.fixture
def admin(account) -> RequestContext:
    account.security.bootstrap()
    with account.catalog.transaction() as s:  # the ML.REG schema, as CREATE SCHEMA makes it
        db = m.Database(name="ML", owner_role="ACCOUNTADMIN")
        s.add(db)
        s.flush()
        s.add(m.Schema(database_id=db.id, name="REG", owner_role="ACCOUNTADMIN"))
    return admin_context("ML", "REG")


def _count(account, cls) -> int:
    with account.catalog.transaction() as s:
        return s.scalar(select(func.count()).select_from(cls))


def test_image_repository_lifecycle(account, admin) -> None:
    env = account.environments
    row = env.create_image_repository(admin, "images", comment="model images")
    assert (row["name"], row["database_name"], row["schema_name"]) == ("IMAGES", "ML", "REG")
    assert row["repository_url"] == "local.registry.neve.localhost/ml/reg/images"
    assert env.create_image_repository(admin, "ml.reg.images", if_not_exists=True)["comment"] == (
        "model images"
    )
    with pytest.raises(ObjectExistsError, match="image repository ML.REG.IMAGES already exists"):
        env.create_image_repository(admin, "ML.REG.IMAGES")
    assert [r["name"] for r in env.show_image_repositories(admin)] == ["IMAGES"]
    assert env.show_image_repositories(admin, in_schema="ml.reg", like="IMA%")
    assert env.show_image_repositories(admin, in_database="ml", like="other%") == []
    assert env.describe_image_repository(admin, "images")["owner"] == "ACCOUNTADMIN"
    assert env.show_images(admin, "images") == []
    assert env.drop_image_repository(admin, "images") is True
    assert env.drop_image_repository(admin, "images", if_exists=True) is False
    with pytest.raises(ObjectNotFoundError, match="image repository ML.REG.IMAGES does not exist"):
        env.show_images(admin, "images")


def test_repository_bad_input_creates_nothing(account, admin) -> None:
    env = account.environments
    with pytest.raises(ObjectNotFoundError, match="schema ML.NOPE does not exist"):
        env.create_image_repository(admin, "ml.nope.images")
    with pytest.raises(InvalidIdentifierError, match="invalid image repository name"):
        env.create_image_repository(admin, "ml.reg.bad-name")
    with pytest.raises(InvalidIdentifierError, match="at most database.schema.name"):
        env.create_image_repository(admin, "a.b.c.d")
    no_schema = RequestContext(user="ADMIN", role="ACCOUNTADMIN")
    with pytest.raises(InvalidIdentifierError, match="not qualified and no current database"):
        env.create_image_repository(no_schema, "images")
    assert _count(account, m.ImageRepository) == 0


def test_network_rules_and_integrations(account, admin) -> None:
    env = account.environments
    rule = env.create_network_rule(
        admin, "pypi_rule", mode="egress", type="host_port",
        value_list=["PyPI.org:443", "files.pythonhosted.org", "pypi.org"],
    )  # fmt: skip
    assert rule["value_list"] == ["pypi.org:443", "files.pythonhosted.org:443"]  # normalized
    assert rule["entries_in_valuelist"] == 2 and rule["mode"] == "EGRESS"
    integ = env.create_external_access_integration(admin, "pypi_access", ["pypi_rule"], True)
    assert integ["allowed_network_rules"] == ["ML.REG.PYPI_RULE"] and integ["enabled"] is True
    assert [r["name"] for r in env.show_external_access_integrations(admin)] == ["PYPI_ACCESS"]
    assert [r["name"] for r in env.show_network_rules(admin, in_schema="ML.REG")] == ["PYPI_RULE"]
    with pytest.raises(ObjectInUseError, match="integration\\(s\\) PYPI_ACCESS use it"):
        env.drop_network_rule(admin, "pypi_rule")
    assert env.drop_external_access_integration(admin, "pypi_access") is True
    assert env.drop_network_rule(admin, "pypi_rule") is True
    assert env.drop_external_access_integration(admin, "pypi_access", if_exists=True) is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"value_list": ["https://pypi.org/simple"]}, "must be host or host:port"),
        ({"value_list": ["pypi.org:99999"]}, "invalid port '99999'"),
        ({"value_list": ["bad host:443"]}, "is not a valid host name"),
        ({"value_list": []}, "VALUE_LIST is empty"),
        ({"value_list": ["pypi.org"], "mode": "INGRESS"}, "MODE 'INGRESS' is not supported"),
        ({"value_list": ["pypi.org"], "type": "IPV4"}, "TYPE 'IPV4' is not supported"),
    ],
)
def test_network_rule_bad_input(account, admin, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        account.environments.create_network_rule(admin, "r", **kwargs)
    assert _count(account, m.NetworkRule) == 0


def test_integration_bad_input(account, admin) -> None:
    env = account.environments
    with pytest.raises(ObjectNotFoundError, match="network rule ML.REG.MISSING does not exist"):
        env.create_external_access_integration(admin, "i", ["missing"])
    with pytest.raises(InvalidArgumentError, match="ALLOWED_NETWORK_RULES is empty"):
        env.create_external_access_integration(admin, "i", [])
    assert _count(account, m.ExternalAccessIntegration) == 0


def test_privileges(account, admin) -> None:
    sec, env = account.security, account.environments
    sec.create_role(admin, "dev")
    dev = RequestContext(user="DEV", role="DEV", database="ML", schema="REG")
    env.create_image_repository(admin, "images")
    with pytest.raises(PermissionDeniedError, match="needs USAGE on DATABASE ML"):
        env.create_image_repository(dev, "mine")
    sec.grant(admin, "USAGE", "DATABASE", "ML", "dev")
    sec.grant(admin, "USAGE", "SCHEMA", "ML.REG", "dev")
    with pytest.raises(PermissionDeniedError, match="needs CREATE IMAGE REPOSITORY on SCHEMA"):
        env.create_image_repository(dev, "mine")
    assert env.show_image_repositories(dev) == []  # no privilege on IMAGES: not listed
    sec.grant(admin, "READ", "IMAGE REPOSITORY", "ML.REG.IMAGES", "dev")
    assert [r["name"] for r in env.show_image_repositories(dev)] == ["IMAGES"]
    with pytest.raises(PermissionDeniedError, match="does not own IMAGE REPOSITORY"):
        env.drop_image_repository(dev, "images")
    with pytest.raises(PermissionDeniedError, match="needs CREATE INTEGRATION on ACCOUNT"):
        env.create_external_access_integration(dev, "i", ["r"])
    sec.grant(admin, "CREATE IMAGE REPOSITORY", "SCHEMA", "ML.REG", "dev")
    assert env.create_image_repository(dev, "mine")["owner"] == "DEV"


def test_index_policy_from_allowed_hosts() -> None:
    assert index_policy({}).index_urls == []
    half = index_policy({"I": ["pypi.org:443"]})
    assert not half.pypi_allowed and half.missing_pypi_hosts() == ["files.pythonhosted.org:443"]
    pypi = index_policy({"I": ["pypi.org:443", "*.pythonhosted.org:443"]})
    assert pypi.pypi_allowed and pypi.uv_args() == ["--index-url", "https://pypi.org/simple"]
    both = index_policy(
        {"A": ["pypi.org", "files.pythonhosted.org"], "B": ["repo.example.com:8443"]},
        {"download.example.org": "https://download.example.org/whl"},
    )
    assert both.index_urls == ["https://pypi.org/simple", "https://repo.example.com:8443/simple"]
    internal = index_policy(
        {"B": ["download.example.org"]},
        {"download.example.org": "https://download.example.org/whl"},
    )
    assert internal.uv_args() == ["--index-url", "https://download.example.org/whl"]
    assert str(parse_host_port("Example.COM", rule="r")) == "example.com:443"


def test_statements_through_sql(account, admin) -> None:
    run = lambda text: account.sql.execute(admin, text)  # noqa: E731
    run("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.reg.images")
    run(
        "CREATE NETWORK RULE pypi_rule MODE = 'EGRESS' TYPE = 'HOST_PORT' "
        "VALUE_LIST = ('pypi.org:443', 'files.pythonhosted.org:443')"
    )
    run(
        "CREATE EXTERNAL ACCESS INTEGRATION pypi ALLOWED_NETWORK_RULES = (pypi_rule) ENABLED = TRUE"
    )
    repos = run("SHOW IMAGE REPOSITORIES IN SCHEMA ml.reg")
    assert repos.columns[:5] == [
        "created_on",
        "name",
        "database_name",
        "schema_name",
        "repository_url",
    ]
    assert [r[1] for r in repos.rows] == ["IMAGES"]
    assert run("SHOW IMAGES IN IMAGE REPOSITORY ml.reg.images").rows == []
    rules = run("SHOW NETWORK RULES")
    assert rules.rows[0][rules.columns.index("entries_in_valuelist")] == 2
    integrations = run("SHOW EXTERNAL ACCESS INTEGRATIONS")
    assert integrations.rows[0][:4] == ["PYPI", "EXTERNAL_ACCESS", "SECURITY", True]
    run("DROP INTEGRATION pypi")
    run("DROP NETWORK RULE pypi_rule")
    run("DROP IMAGE REPOSITORY ml.reg.images")
    assert run("SHOW IMAGE REPOSITORIES").rows == []
