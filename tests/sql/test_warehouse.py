"""Warehouse tables and queries on DuckDB: name resolution, privileges, errors, pandas I/O."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from neve.errors import (
    InvalidArgumentError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SqlSyntaxError,
)


@pytest.fixture
def ml(sql):
    sql("CREATE DATABASE ml; CREATE SCHEMA ml.features; USE SCHEMA ml.public")
    return sql


def test_tables_resolve_in_three_forms(ml) -> None:
    ml("CREATE TABLE t (a DOUBLE, b VARCHAR)")
    ml("INSERT INTO t VALUES (1, 'x'), (2, 'y')")
    ml("CREATE TABLE ml.features.u AS SELECT a, a * 10 AS c FROM public.t")
    assert ml.rows("SELECT t.a, b FROM t ORDER BY a") == [[1.0, "x"], [2.0, "y"]]
    assert ml.rows("SELECT count(*) FROM public.t") == [[2]]
    assert ml.rows("SELECT t.b, u.c FROM ml.public.t JOIN features.u USING (a) ORDER BY a") == [
        ["x", 10.0],
        ["y", 20.0],
    ]
    # names are case-insensitive unless quoted; a CTE and a table function are left alone
    assert ml.rows("WITH t AS (SELECT 5 AS a) SELECT a FROM t") == [[5]]
    assert ml.rows("SELECT count(*) FROM range(3)") == [[3]]
    ml("USE SCHEMA features")
    assert ml.rows("SELECT max(c) FROM U") == [[20.0]]
    shown = ml("SHOW TABLES IN DATABASE ml")
    assert [r[:3] for r in shown.rows] == [["U", "ML", "FEATURES"], ["T", "ML", "PUBLIC"]] or [
        r[:3] for r in shown.rows
    ] == [["T", "ML", "PUBLIC"], ["U", "ML", "FEATURES"]]
    assert [r[0] for r in ml("SHOW TABLES LIKE 'u%'").rows] == ["U"]


def test_unknown_objects_name_where_they_were_looked_for(ml) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"table ML\.PUBLIC\.NOPE does not exist"):
        ml("SELECT * FROM nope")
    with pytest.raises(ObjectNotFoundError, match=r"schema ML\.MISSING does not exist"):
        ml("SELECT * FROM missing.t")
    with pytest.raises(ObjectNotFoundError, match="database OTHER does not exist"):
        ml("SELECT * FROM other.public.t")
    ml("CREATE TABLE t (a INT)")
    with pytest.raises(InvalidArgumentError, match='column "nope" not found'):
        ml("SELECT nope FROM t")


def test_unqualified_table_needs_a_current_schema(sql) -> None:
    with pytest.raises(InvalidArgumentError, match="no current database"):
        sql("SELECT * FROM t")
    assert sql.rows("SELECT 1 + 1") == [[2]]


def test_query_syntax_errors_report_position(ml) -> None:
    with pytest.raises(SqlSyntaxError) as info:
        ml("SELECT 1;\nSELECT a FROM\n  WHERE a > 1")
    assert (info.value.line, info.value.col) == (3, 3)
    assert "'WHERE'" in info.value.message
    with pytest.raises(SqlSyntaxError) as info:
        ml("SELEC 1")
    assert (info.value.line, info.value.col) == (1, 1)
    assert "unknown statement 'SELEC'" in info.value.message


def test_a_failing_statement_of_a_script_is_named(ml) -> None:
    script = "CREATE TABLE t2 AS SELECT 1 AS x;\nINSERT INTO t2 VALUES (2);\nSELECT nosuch FROM t2"
    with pytest.raises(InvalidArgumentError) as info:
        ml(script)
    assert info.value.message.startswith(
        "statement 3 of 3 (line 3) failed (statements 1-2 were applied): "
    ), info.value.message
    assert '"nosuch" not found' in info.value.message
    assert ml("SELECT count(*) FROM t2").rows == [[2]]  # what was applied stays: as it says
    with pytest.raises(
        ObjectNotFoundError,
        match=r"^statement 2 of 2 \(line 1\) failed "
        r"\(statement 1 was applied\): compute pool NOPE does not exist",
    ):
        ml("SELECT 1; DROP COMPUTE POOL nope")
    with pytest.raises(InvalidArgumentError) as info:  # one statement: no prefix
        ml("SELECT nosuch FROM t2")
    assert info.value.message.startswith("Binder Error")


def test_files_of_the_control_plane_cannot_be_read(ml) -> None:
    with pytest.raises(PermissionDeniedError, match="file system operations are disabled"):
        ml("SELECT * FROM read_csv('/etc/passwd')")


def test_write_and_read_tables_from_python(ml, account) -> None:
    frame = pd.DataFrame(
        {"a": [1.5, 2.5, None], "n": [1, 2, 3], "s": ["x", None, "z"], "f": [True, False, True]}
    )
    out = account.sql.write_table(ml.ctx, "scores", pa.Table.from_pandas(frame))
    assert out == {"table": "ML.PUBLIC.SCORES", "rows": 3, "created": True}
    account.sql.write_table(ml.ctx, "scores", pa.Table.from_pandas(frame.head(1)))
    back = account.sql.read_table(ml.ctx, "ml.public.scores").to_pandas()
    assert len(back) == 4
    pd.testing.assert_frame_equal(back.head(3), frame, check_dtype=False)
    account.sql.write_table(ml.ctx, "scores", pa.Table.from_pandas(frame), overwrite=True)
    assert ml.rows("SELECT count(*) FROM scores") == [[3]]
    with pytest.raises(ObjectNotFoundError, match="auto_create_table"):
        account.sql.write_table(
            ml.ctx, "absent", pa.Table.from_pandas(frame), auto_create_table=False
        )


def test_table_privileges_follow_the_schema(ml, sql_factory) -> None:
    from neve.context import RequestContext

    ml("CREATE TABLE t AS SELECT 1 AS a")
    ml("CREATE ROLE analyst; CREATE USER alice PASSWORD = 'Secret-pass-123'")
    ml("GRANT ROLE analyst TO USER alice")
    alice = sql_factory(RequestContext(user="ALICE", role="ANALYST"))
    with pytest.raises(PermissionDeniedError, match="USAGE on DATABASE ML"):
        alice("SELECT * FROM ml.public.t")
    ml("GRANT USAGE ON DATABASE ml TO ROLE analyst")
    ml("GRANT USAGE ON SCHEMA ml.public TO ROLE analyst")
    assert alice.rows("SELECT a FROM ml.public.t") == [[1]]
    with pytest.raises(PermissionDeniedError, match="CREATE TABLE on SCHEMA"):
        alice("CREATE TABLE ml.public.mine (x INT)")
    ml("GRANT CREATE TABLE ON SCHEMA ml.public TO ROLE analyst")
    alice("CREATE TABLE ml.public.mine (x INT)")
    assert [r[0] for r in alice("SHOW TABLES IN SCHEMA ml.public").rows] == ["MINE", "T"]


def test_dropping_a_schema_drops_its_tables(ml) -> None:
    ml("CREATE TABLE features.t AS SELECT 1 AS a")
    ml("DROP SCHEMA ml.features")
    assert ml("SHOW TABLES IN ACCOUNT").rows == []
    ml("CREATE SCHEMA ml.features")
    with pytest.raises(ObjectNotFoundError):
        ml("SELECT * FROM ml.features.t")
