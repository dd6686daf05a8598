"""``neve.connect`` and ``Session`` against a real control plane daemon: SQL results, the
session context (role, database, schema) as the server sees it, remote logins, tokens."""

from __future__ import annotations

import pickle

import httpx
import pandas as pd
import pytest

import neve
from neve.client.results import Row, SqlResult
from neve.errors import (
    AuthenticationError,
    InvalidArgumentError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SqlSyntaxError,
)

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def session(shared_control_plane):
    s = shared_control_plane
    s.sql(
        "CREATE DATABASE IF NOT EXISTS sess_db; CREATE SCHEMA IF NOT EXISTS sess_db.s1; "
        "CREATE SCHEMA IF NOT EXISTS sess_db.s2"
    )
    s.sql(f"CREATE USER IF NOT EXISTS alice PASSWORD = '{PASSWORD}'")
    return s


@pytest.fixture
def fresh(session):
    """A second admin session on the same daemon, so context changes stay in the test."""
    with neve.connect(session.account_home) as s:
        yield s


def test_row_is_a_tuple_addressable_by_column_name() -> None:
    row = Row([1, "x", None], ["ID", "name", "Comment"])
    assert row == (1, "x", None) and len(row) == 3
    assert row[0] == row["ID"] == row["id"] == row.ID == 1
    assert row["NAME"] == row.name == "x"
    assert row.as_dict() == row.asDict() == {"ID": 1, "name": "x", "Comment": None}
    assert repr(row) == "Row(ID=1, name='x', Comment=None)"
    assert pickle.loads(pickle.dumps(row)).as_dict() == row.as_dict()
    with pytest.raises(KeyError, match="no column 'missing'; columns: ID, name, Comment"):
        row["missing"]
    with pytest.raises(AttributeError):
        row.missing  # noqa: B018


def test_sql_results(fresh) -> None:
    fresh.use_schema("sess_db.s1")
    fresh.sql("CREATE OR REPLACE TABLE t AS SELECT range AS a, range * 0.5 AS b FROM range(4)")
    result = fresh.sql("SELECT a, b FROM t ORDER BY a")
    assert isinstance(result, SqlResult) and len(result) == 4
    rows = result.collect()
    assert [tuple(r) for r in rows] == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5)]
    assert rows[3]["B"] == rows[3].b == 1.5
    assert result.first() == (0, 0.0)
    frame = result.to_pandas()
    assert list(frame.columns) == ["a", "b"] and frame["b"].sum() == 3.0
    empty = fresh.sql("SELECT a FROM t WHERE a > 100")
    assert empty.collect() == [] and list(empty.to_pandas().columns) == ["a"]
    shown = fresh.sql("SHOW SCHEMAS IN DATABASE sess_db").collect()
    assert {"S1", "S2"} <= {r["name"] for r in shown}


def test_sql_errors_are_raised_as_neve_errors(fresh) -> None:
    with pytest.raises(SqlSyntaxError):
        fresh.sql("SELEKT 1")
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        fresh.sql("   ")


def test_context_follows_use_statements_and_reaches_the_server(fresh) -> None:
    assert fresh.current_user == "ADMIN" and fresh.current_role == "ACCOUNTADMIN"
    assert fresh.current_database is None and fresh.current_schema is None
    fresh.use_database("sess_db")
    assert (fresh.current_database, fresh.current_schema) == ("SESS_DB", "PUBLIC")
    fresh.use_schema("s2")
    fresh.use_role("sysadmin")
    me = fresh.whoami()  # the server-side context of the next call
    assert (me["role"], me["database"], me["schema"]) == ("SYSADMIN", "SESS_DB", "S2")
    # the SQL USE statements change the session the same way
    fresh.sql("USE ROLE accountadmin; USE SCHEMA sess_db.s1")
    assert fresh.context() == {"role": "ACCOUNTADMIN", "database": "SESS_DB", "schema": "S1"}
    assert fresh.whoami()["schema"] == "S1"
    # refused changes leave the context as it was
    with pytest.raises(ObjectNotFoundError):
        fresh.use_schema("no_such_schema")
    with pytest.raises((PermissionDeniedError, ObjectNotFoundError)):
        fresh.use_role("no_such_role")
    assert fresh.context() == {"role": "ACCOUNTADMIN", "database": "SESS_DB", "schema": "S1"}


def test_connect_with_an_initial_context(session) -> None:
    with neve.connect(session.account_home, role="sysadmin", database="sess_db", schema="s2") as s:
        me = s.whoami()
        assert (me["role"], me["database"], me["schema"]) == ("SYSADMIN", "SESS_DB", "S2")
    with pytest.raises(AuthenticationError, match="role NOPE is not granted"):
        neve.connect(session.account_home, role="nope")


def test_remote_login_with_password_and_logout_on_close(session) -> None:
    remote = neve.connect(url=session.url, user="alice", password=PASSWORD)
    assert remote.account_home is None
    assert (remote.current_user, remote.current_role) == ("ALICE", "PUBLIC")
    token = remote.token
    assert remote.whoami()["user"] == "ALICE"
    remote.close()
    # closing a password session revokes its token
    resp = httpx.get(f"{session.url}/api/v1/session", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and "revoked" in resp.json()["message"]
    with pytest.raises(AuthenticationError, match="incorrect user name or password"):
        neve.connect(url=session.url, user="alice", password="wrong password!!")
    with pytest.raises(InvalidArgumentError, match="needs user= with password="):
        neve.connect(url=session.url)


def test_remote_login_with_a_token_from_the_environment(session, monkeypatch) -> None:
    pat = session.create_token("session_test_pat", days_to_expiry=1)
    monkeypatch.setenv("NEVE_URL", session.url)
    monkeypatch.setenv("NEVE_TOKEN", pat)
    with neve.connect() as s:
        assert s.url == session.url and s.current_user == "ADMIN"
        assert s.sql("SHOW DATABASES").first() is not None
    with pytest.raises(AuthenticationError, match="invalid token"):
        neve.connect(url=session.url, token="nvp_not_a_real_token")


def test_write_pandas_into_another_schema_and_read_it_back(fresh) -> None:
    fresh.use_schema("sess_db.s1")
    df = pd.DataFrame({"A": [1.0, 2.0], "B": ["x", "y"]})
    table = fresh.write_pandas(df, "uploaded", database="sess_db", schema="s2", overwrite=True)
    assert table.name.upper() == "SESS_DB.S2.UPLOADED"
    back = fresh.table("sess_db.s2.uploaded").to_pandas()
    assert back.to_dict("list") == {"A": [1.0, 2.0], "B": ["x", "y"]}
    assert fresh.sql("SELECT count(*) AS n FROM sess_db.s2.uploaded").first()["N"] == 2
    with pytest.raises(InvalidArgumentError, match="qualified already"):
        fresh.write_pandas(df, "sess_db.s2.uploaded", schema="s2")


def test_create_compute_pool_takes_every_pool_property(session) -> None:
    session.create_compute_pool(
        "py_pool",
        instance_family="CPU_X64_XS",
        auto_suspend_secs=120,
        initially_suspended=True,
        comment="from Python",
    )
    row = session.sql("DESCRIBE COMPUTE POOL py_pool").collect()[0]
    assert (row["state"], row["auto_suspend_secs"], row["comment"]) == (
        "SUSPENDED",
        120,
        "from Python",
    )
    with pytest.raises(InvalidArgumentError, match="auto_suspend_secs must be an integer"):
        session.create_compute_pool("bad_pool", instance_family="CPU_X64_XS", auto_suspend_secs="1")
    session.sql("DROP COMPUTE POOL py_pool").collect()
