"""Compute pools, image repositories, network rules and integrations through SQL, against the
real compute and environments managers of an account."""

from __future__ import annotations

import pytest

from neve.errors import InvalidArgumentError, ObjectExistsError, ObjectNotFoundError


def col(result, name: str) -> list:
    return [row[result.columns.index(name)] for row in result.rows]


def test_compute_pool_statements(sql) -> None:
    created = sql(
        "CREATE COMPUTE POOL cpu_pool MIN_NODES = 1 MAX_NODES = 2 INSTANCE_FAMILY = 'CPU_X64_S' "
        "AUTO_RESUME = TRUE AUTO_SUSPEND_SECS = 600 COMMENT = 'test pool'"
    )
    assert created.rows == [["Compute pool CPU_POOL successfully created."]]
    again = sql("CREATE COMPUTE POOL IF NOT EXISTS cpu_pool INSTANCE_FAMILY = CPU_X64_S")
    assert again.rows == [["Compute pool CPU_POOL already exists, statement succeeded."]]
    with pytest.raises(ObjectExistsError, match="compute pool CPU_POOL already exists"):
        sql("CREATE COMPUTE POOL cpu_pool INSTANCE_FAMILY = 'CPU_X64_S'")
    with pytest.raises(InvalidArgumentError, match="CPU_X64_S"):
        sql("CREATE COMPUTE POOL bad_pool INSTANCE_FAMILY = 'CPU_X64_HUGE'")
    with pytest.raises(InvalidArgumentError, match="MIN_NODES .3. must not be greater"):
        sql(
            "CREATE COMPUTE POOL bad_pool MIN_NODES = 3 MAX_NODES = 1 INSTANCE_FAMILY = 'CPU_X64_S'"
        )
    shown = sql("SHOW COMPUTE POOLS")
    for column in ("name", "state", "min_nodes", "max_nodes", "instance_family", "owner"):
        assert column in shown.columns
    assert col(shown, "name") == ["CPU_POOL"]
    assert (col(shown, "min_nodes"), col(shown, "max_nodes")) == ([1], [2])
    assert col(shown, "comment") == ["test pool"]
    assert sql("SHOW COMPUTE POOLS LIKE 'gpu%'").rows == []
    described = sql("DESCRIBE COMPUTE POOL cpu_pool")
    assert col(described, "instance_family") == ["CPU_X64_S"]
    sql("ALTER COMPUTE POOL cpu_pool SET MAX_NODES = 3 COMMENT = 'bigger'")
    shown = sql("SHOW COMPUTE POOLS LIKE 'cpu%'")
    assert (col(shown, "max_nodes"), col(shown, "comment")) == ([3], ["bigger"])
    sql("ALTER COMPUTE POOL cpu_pool SUSPEND")
    assert col(sql("SHOW COMPUTE POOLS"), "state") == ["SUSPENDED"]
    sql("ALTER COMPUTE POOL cpu_pool RESUME")
    assert col(sql("SHOW COMPUTE POOLS"), "state") != ["SUSPENDED"]
    sql("ALTER COMPUTE POOL IF EXISTS no_such_pool SUSPEND")
    sql("DROP COMPUTE POOL cpu_pool")
    sql("DROP COMPUTE POOL IF EXISTS cpu_pool")
    with pytest.raises(ObjectNotFoundError, match="compute pool CPU_POOL"):
        sql("DESCRIBE COMPUTE POOL cpu_pool")


def test_image_repository_statements(sql) -> None:
    sql("CREATE DATABASE ml; CREATE SCHEMA ml.registry")
    first = sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.registry.images")
    again = sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.registry.images")
    assert first.rows == [["Image repository IMAGES successfully created."]]
    assert again.rows == [["Image repository IMAGES already exists, statement succeeded."]]
    with pytest.raises(ObjectExistsError):
        sql("CREATE IMAGE REPOSITORY images")  # current schema is ML.REGISTRY
    shown = sql("SHOW IMAGE REPOSITORIES IN SCHEMA ml.registry")
    assert col(shown, "name") == ["IMAGES"]
    assert col(shown, "database_name") == ["ML"]
    assert "repository_url" in shown.columns
    assert sql("SHOW IMAGE REPOSITORIES LIKE 'nothing%'").rows == []
    assert len(sql("SHOW IMAGE REPOSITORIES IN DATABASE ml").rows) == 1
    images = sql("SHOW IMAGES IN IMAGE REPOSITORY ml.registry.images")
    assert images.rows == [] and "image_name" in images.columns
    sql("DROP IMAGE REPOSITORY ml.registry.images")
    sql("DROP IMAGE REPOSITORY IF EXISTS ml.registry.images")
    with pytest.raises(ObjectNotFoundError, match="image repository"):
        sql("SHOW IMAGES IN IMAGE REPOSITORY ml.registry.images")


def test_network_rule_and_integration_statements(sql) -> None:
    sql("CREATE DATABASE ml")
    sql(
        "CREATE NETWORK RULE pypi_rule MODE = 'EGRESS' TYPE = 'HOST_PORT' "
        "VALUE_LIST = ('pypi.org:443', 'files.pythonhosted.org:443')"
    )
    rules = sql("SHOW NETWORK RULES")
    assert col(rules, "name") == ["PYPI_RULE"]
    assert col(rules, "entries_in_valuelist") == [2]
    created = sql(
        "CREATE EXTERNAL ACCESS INTEGRATION pypi_access ALLOWED_NETWORK_RULES = (pypi_rule) "
        "ENABLED = TRUE COMMENT = 'package index'"
    )
    assert created.rows == [["Integration PYPI_ACCESS successfully created."]]
    integrations = sql("SHOW EXTERNAL ACCESS INTEGRATIONS LIKE 'pypi%'")
    assert col(integrations, "name") == ["PYPI_ACCESS"]
    with pytest.raises(ObjectNotFoundError, match="network rule"):
        sql("CREATE EXTERNAL ACCESS INTEGRATION broken ALLOWED_NETWORK_RULES = (nope)")
    from neve.errors import ObjectInUseError

    with pytest.raises(ObjectInUseError, match="PYPI_ACCESS"):
        sql("DROP NETWORK RULE pypi_rule")
    sql("DROP EXTERNAL ACCESS INTEGRATION pypi_access")
    sql("DROP INTEGRATION IF EXISTS pypi_access")
    sql("DROP NETWORK RULE pypi_rule")
    assert sql("SHOW NETWORK RULES").rows == []
    assert sql("SHOW INTEGRATIONS").rows == []
