"""Management statements executed against a real account: databases, schemas, USE, users,
roles, grants (each statement parsed and run through the managers)."""

from __future__ import annotations

import pytest

from neve.context import RequestContext
from neve.errors import (
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.like import filter_like, like_regex


def column(result, name: str) -> list:
    return [row[result.columns.index(name)] for row in result.rows]


def test_databases_and_schemas(sql) -> None:
    result = sql("CREATE DATABASE ml")
    assert result.rows == [["Database ML successfully created."]]
    assert sql.ctx.database == "ML" and sql.ctx.schema == "PUBLIC"
    again = sql("CREATE DATABASE IF NOT EXISTS ml")  # says so: nothing was created
    assert again.rows == [["Database ML already exists, statement succeeded."]]
    with pytest.raises(ObjectExistsError, match="database ML already exists"):
        sql("CREATE DATABASE ml")
    sql("CREATE SCHEMA registry COMMENT = 'models'")
    assert (sql.ctx.database, sql.ctx.schema) == ("ML", "REGISTRY")
    sql("CREATE SCHEMA IF NOT EXISTS ml.registry")
    sql('CREATE DATABASE "Lab"')
    shown = sql("SHOW DATABASES")
    assert column(shown, "name") == ["Lab", "ML"]
    assert shown.columns == ["created_on", "name", "owner", "comment"]
    assert column(sql("SHOW DATABASES LIKE 'l%'"), "name") == ["Lab"]
    schemas = sql("SHOW SCHEMAS IN DATABASE ml")
    assert column(schemas, "name") == ["PUBLIC", "REGISTRY"]
    assert column(schemas, "comment") == [None, "models"]
    assert column(schemas, "owner") == ["ACCOUNTADMIN", "ACCOUNTADMIN"]
    described = sql("DESCRIBE DATABASE ml")
    assert column(described, "name") == ["PUBLIC", "REGISTRY"]
    sql("USE SCHEMA ml.registry")
    sql("DROP SCHEMA ml.registry")
    assert sql.ctx.schema is None
    sql("DROP SCHEMA IF EXISTS ml.registry")
    with pytest.raises(ObjectNotFoundError, match=r"schema ML\.REGISTRY does not exist"):
        sql("DROP SCHEMA ml.registry")
    sql("DROP DATABASE ml")
    assert sql.ctx.database is None
    assert column(sql("SHOW DATABASES"), "name") == ["Lab"]
    assert sql('SHOW SCHEMAS IN DATABASE "Lab"').rows[0][1] == "PUBLIC"
    empty = sql("SHOW DATABASES LIKE 'zzz%'")
    assert empty.rows == [] and empty.columns == ["created_on", "name", "owner", "comment"]


def test_use_statements(sql) -> None:
    sql("CREATE DATABASE ml; CREATE SCHEMA ml.registry; CREATE DATABASE other")
    result = sql("USE DATABASE ml")
    assert result.ctx_changes == {"database": "ML", "schema": "PUBLIC"}
    sql("USE SCHEMA registry")
    assert (sql.ctx.database, sql.ctx.schema) == ("ML", "REGISTRY")
    sql("USE other")
    assert (sql.ctx.database, sql.ctx.schema) == ("OTHER", "PUBLIC")
    sql("USE ml.registry")
    assert (sql.ctx.database, sql.ctx.schema) == ("ML", "REGISTRY")
    with pytest.raises(ObjectNotFoundError, match="database NOPE does not exist"):
        sql("USE DATABASE nope")
    # a script: the USE applies to the statements after it, and the result carries it
    result = sql("USE DATABASE other; SELECT current_date IS NOT NULL")
    assert result.ctx_changes == {"database": "OTHER", "schema": "PUBLIC"}
    sql("CREATE ROLE analyst; GRANT ROLE analyst TO USER admin; CREATE ROLE outsider")
    assert sql("USE ROLE analyst").ctx_changes == {"role": "ANALYST"}
    with pytest.raises(PermissionDeniedError, match="role OUTSIDER is not granted to user ADMIN"):
        sql("USE ROLE outsider")
    with pytest.raises(ObjectNotFoundError, match="role NOPE does not exist"):
        sql("USE ROLE nope")


def test_users_roles_and_grants(sql, sql_factory) -> None:
    sql("CREATE DATABASE ml")
    sql("CREATE ROLE analyst COMMENT = 'reads'")
    sql("CREATE ROLE IF NOT EXISTS analyst")
    sql("CREATE USER alice PASSWORD = 'Secret-pass-123' DEFAULT_ROLE = analyst")
    assert "ALICE" in column(sql("SHOW USERS"), "name")
    assert column(sql("SHOW ROLES LIKE 'ana%'"), "name") == ["ANALYST"]
    sql("GRANT ROLE analyst TO USER alice")
    sql("GRANT USAGE, MONITOR ON DATABASE ml TO ROLE analyst")
    sql("GRANT CREATE SCHEMA ON DATABASE ml TO ROLE analyst WITH GRANT OPTION")
    grants = sql("SHOW GRANTS TO ROLE analyst")
    privs = sorted(zip(column(grants, "privilege"), column(grants, "name"), strict=True))
    assert privs == [("CREATE SCHEMA", "ML"), ("MONITOR", "ML"), ("USAGE", "ML")]
    on_db = sql("SHOW GRANTS ON DATABASE ml")
    assert "ANALYST" in column(on_db, "grantee_name")
    of_role = sql("SHOW GRANTS OF ROLE analyst")
    assert column(of_role, "grantee_name") == ["ALICE"]

    alice = sql_factory(RequestContext(user="ALICE", role="ANALYST"))
    alice("CREATE SCHEMA ml.scratch")  # CREATE SCHEMA on the database, USAGE on it
    owner = column(alice("SHOW SCHEMAS IN DATABASE ml"), "owner")
    assert "ANALYST" in owner
    with pytest.raises(PermissionDeniedError, match="CREATE DATABASE"):
        alice("CREATE DATABASE mine")
    with pytest.raises(PermissionDeniedError):
        alice("GRANT USAGE ON DATABASE ml TO ROLE public")  # holds no grant option for USAGE

    sql("REVOKE USAGE ON DATABASE ml FROM ROLE analyst")
    with pytest.raises(PermissionDeniedError, match="USAGE on DATABASE ML"):
        alice("USE SCHEMA ml.scratch")
    sql("GRANT OWNERSHIP ON DATABASE ml TO ROLE analyst COPY CURRENT GRANTS")
    assert column(sql("SHOW DATABASES"), "owner") == ["ANALYST"]
    alice("USE SCHEMA ml.scratch")  # the owner needs no USAGE grant
    sql("REVOKE ROLE analyst FROM USER alice")
    assert sql("SHOW GRANTS OF ROLE analyst").rows == []
    sql("ALTER USER alice SET COMMENT = 'left'")
    described = dict((r[0], r[1]) for r in sql("DESCRIBE USER alice").rows)
    assert described["comment"] == "left"
    sql("DROP USER alice")
    sql("DROP USER IF EXISTS alice")
    sql("DROP ROLE analyst")
    assert "ANALYST" not in column(sql("SHOW ROLES"), "name")


def test_dropping_a_database_with_a_model_is_refused(sql, account) -> None:
    from sqlalchemy import select

    from neve.catalog import models as m

    sql("CREATE DATABASE ml")
    with account.catalog.transaction() as s:
        schema = s.scalar(select(m.Schema).where(m.Schema.name == "PUBLIC"))
        s.add(m.Model(schema_id=schema.id, name="FORECAST", owner_role="ACCOUNTADMIN"))
    with pytest.raises(ObjectInUseError, match=r"model ML\.PUBLIC\.FORECAST"):
        sql("DROP DATABASE ml")


def test_like_patterns() -> None:
    assert like_regex("cpu%").match("CPU_POOL")
    assert like_regex("a_c").match("abc") and not like_regex("a_c").match("abbc")
    assert like_regex(r"a\_c").match("a_c") and not like_regex(r"a\_c").match("abc")
    rows = [{"name": "FORECAST_SVC"}, {"name": "EMBED"}]
    assert filter_like(rows, "%svc") == [{"name": "FORECAST_SVC"}]
    assert filter_like(rows, None) == rows


def test_revoke_restricts_or_cascades_onward_grants(sql, sql_factory) -> None:
    """admin -> r1 (WITH GRANT OPTION) -> r2 (WITH GRANT OPTION) -> r3: revoking r1's grant
    is refused while r2 and r3 hold what r1 passed on, and CASCADE takes all three."""
    sql("CREATE DATABASE gdb")
    for n in (1, 2, 3):
        sql(f"CREATE ROLE r{n}")
        sql(f"CREATE USER u{n} PASSWORD = 'Secret-pass-123'")
        sql(f"GRANT ROLE r{n} TO USER u{n}")
    sql("GRANT USAGE ON DATABASE gdb TO ROLE r1 WITH GRANT OPTION")
    sql_factory(RequestContext(user="U1", role="R1"))(
        "GRANT USAGE ON DATABASE gdb TO ROLE r2 WITH GRANT OPTION"
    )
    sql_factory(RequestContext(user="U2", role="R2"))("GRANT USAGE ON DATABASE gdb TO ROLE r3")

    def holders() -> list[str]:
        shown = sql("SHOW GRANTS ON DATABASE gdb")
        pairs = zip(column(shown, "privilege"), column(shown, "grantee_name"), strict=True)
        return sorted(grantee for privilege, grantee in pairs if privilege == "USAGE")

    assert holders() == ["R1", "R2", "R3"]
    with pytest.raises(ObjectInUseError, match="it granted the privilege on to R2.*CASCADE"):
        sql("REVOKE USAGE ON DATABASE gdb FROM ROLE r1")
    with pytest.raises(ObjectInUseError, match="on to R2"):
        sql("REVOKE USAGE ON DATABASE gdb FROM ROLE r1 RESTRICT")
    assert holders() == ["R1", "R2", "R3"]  # refused: nothing changed
    with pytest.raises(ObjectInUseError, match="GRANT OPTION FOR USAGE.*on to R2"):
        sql("REVOKE GRANT OPTION FOR USAGE ON DATABASE gdb FROM ROLE r1")
    sql("REVOKE USAGE ON DATABASE gdb FROM ROLE r1 CASCADE")
    assert holders() == []
    # the owner's own grants do not depend on a grant it also holds
    sql("GRANT USAGE ON DATABASE gdb TO ROLE r1")
    sql("GRANT USAGE ON DATABASE gdb TO ROLE accountadmin")
    sql("REVOKE USAGE ON DATABASE gdb FROM ROLE accountadmin")
    assert holders() == ["R1"]
