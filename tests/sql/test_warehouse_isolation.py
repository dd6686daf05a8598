"""The warehouse's privilege matrix over real HTTP: every way of reaching a table, run by a role
without the grant (refused, or shown nothing) and by a role with it (works).

One control plane daemon for the module (``shared_control_plane``), users logged in with
passwords, statements sent to ``POST /api/v1/sql`` as ``session.sql`` sends them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SECRET = 987654321  # the private salary: must never appear in an answer to NOBODY
PASSWORD = "Matrix-pass-123"
LEVELS = {"NOBODY": 0, "READER": 1, "WRITER": 2}


@dataclass
class Client:
    http: httpx.Client
    role: str

    def sql(self, text: str) -> httpx.Response:
        return self.http.post("/api/v1/sql", json={"sql": text})


def _login(base_url: str, user: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, trust_env=False, timeout=60) as anon:
        resp = anon.post("/api/v1/login", json={"user": user, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    return httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {resp.json()['token']}"},
        trust_env=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def world(shared_control_plane) -> Iterator[dict[str, Client]]:
    """SECRETDB.PRIVATE.SALARIES (the secret), PUB.PUBLIC (everyone reads it, holds a view over
    the secret and a warehouse model), and three roles: NOBODY (PUB only), READER (USAGE on
    SECRETDB and its PRIVATE schema), WRITER (READER + CREATE TABLE on SECRETDB.PRIVATE)."""
    from sklearn.linear_model import LinearRegression

    import neve

    admin = shared_control_plane

    def run(text: str) -> None:
        admin.sql(text).collect()

    run("CREATE DATABASE IF NOT EXISTS secretdb")
    run("CREATE SCHEMA IF NOT EXISTS secretdb.private")
    run(
        "CREATE OR REPLACE TABLE secretdb.private.salaries AS "
        f"SELECT 'alice' AS name, {SECRET} AS amount"
    )
    run("CREATE OR REPLACE VIEW secretdb.private.private_v AS SELECT 1 AS z")
    run("CREATE DATABASE IF NOT EXISTS pub")
    run("CREATE OR REPLACE TABLE pub.public.t AS SELECT 1 AS y")
    run("CREATE OR REPLACE VIEW pub.public.leak AS SELECT * FROM secretdb.private.salaries")
    train = pd.DataFrame({"A": np.arange(20.0), "B": np.arange(20.0) * 2})
    model = LinearRegression().fit(train, train.A + train.B)
    reg = neve.Registry(admin, database_name="pub", schema_name="public")
    reg.log_model(model, model_name="lin", version_name="v1", sample_input_data=train)
    clients: dict[str, Client] = {}
    for role in LEVELS:
        run(f"CREATE ROLE IF NOT EXISTS {role}")
        run(f"CREATE USER IF NOT EXISTS u_{role} PASSWORD = '{PASSWORD}' DEFAULT_ROLE = {role}")
        run(f"GRANT ROLE {role} TO USER u_{role}")
        run(f"GRANT USAGE ON DATABASE pub TO ROLE {role}")
        run(f"GRANT USAGE ON SCHEMA pub.public TO ROLE {role}")
        run(f"GRANT USAGE ON MODEL pub.public.lin TO ROLE {role}")
    for role in ("READER", "WRITER"):
        run(f"GRANT USAGE ON DATABASE secretdb TO ROLE {role}")
        run(f"GRANT USAGE ON SCHEMA secretdb.private TO ROLE {role}")
    run("GRANT CREATE TABLE ON SCHEMA secretdb.private TO ROLE writer")
    base_url = str(admin._transport.base_url)
    for role in LEVELS:
        clients[role] = Client(_login(base_url, f"u_{role}"), role)
    clients["ADMIN"] = Client(
        httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {admin.token}"},
            trust_env=False,
            timeout=120,
        ),
        "ACCOUNTADMIN",
    )
    try:
        yield clients
    finally:
        for c in clients.values():
            c.http.close()


# (id, statement, what it shows when allowed) for every way of reading the secret table.
READS = [
    ("select", "SELECT amount FROM secretdb.private.salaries", SECRET),
    ("query_table", """SELECT amount FROM query_table('"SECRETDB__PRIVATE"."SALARIES"')""", SECRET),
    (
        "query",
        """SELECT * FROM query('SELECT amount FROM "SECRETDB__PRIVATE"."SALARIES"')""",
        SECRET,
    ),
    ("cte", "WITH s AS (SELECT * FROM secretdb.private.salaries) SELECT amount FROM s", SECRET),
    ("scalar-subquery", "SELECT (SELECT max(amount) FROM secretdb.private.salaries) AS m", SECRET),
    (
        "in-subquery",
        "SELECT y, (SELECT amount FROM secretdb.private.salaries) FROM pub.public.t "
        "WHERE y IN (SELECT 1 FROM secretdb.private.salaries)",
        SECRET,
    ),
    ("view-over-private", "SELECT amount FROM pub.public.leak", SECRET),
    ("summarize", "SUMMARIZE secretdb.private.salaries", str(SECRET)),
    ("describe", "DESCRIBE secretdb.private.salaries", "AMOUNT"),
    ("pragma", """PRAGMA table_info('"SECRETDB__PRIVATE"."SALARIES"')""", "AMOUNT"),
    (
        "model-function",
        "SELECT MODEL(pub.public.lin, v1)!predict(amount::DOUBLE, 0.0) AS p, amount "
        "FROM secretdb.private.salaries",
        SECRET,
    ),
]

# Catalog functions answer a role without the grant, but show it nothing of the schema. (A view
# in a schema the role may read shows its definition, as its schema's other objects do; what it
# selects from a schema the role may not read stays out of reach: "view-over-private" above.)
CATALOG = [
    ("duckdb_tables", "SELECT table_name FROM duckdb_tables()", "SALARIES"),
    ("duckdb_columns", "SELECT table_name FROM duckdb_columns()", "SALARIES"),
    ("duckdb_views", "SELECT view_name FROM duckdb_views() WHERE NOT internal", "PRIVATE_V"),
    ("information_schema", "SELECT table_name FROM information_schema.tables", "SALARIES"),
    (
        "information_schema.columns",
        "SELECT table_name FROM information_schema.columns",
        "PRIVATE_V",
    ),
    ("duckdb_databases", "SELECT database_name FROM duckdb_databases()", "SECRETDB__PRIVATE"),
]


def _cells(resp: httpx.Response) -> list:
    return [v for row in resp.json()["rows"] for v in (row if isinstance(row, list) else [row])]


def _shows(resp: httpx.Response, marker: object) -> bool:
    text = str(marker).lower()
    return any(marker == v or (isinstance(v, str) and text in v.lower()) for v in _cells(resp))


@pytest.mark.parametrize("role", list(LEVELS))
@pytest.mark.parametrize(("case", "statement", "marker"), READS, ids=[r[0] for r in READS])
def test_reading_the_private_table(world, role, case, statement, marker) -> None:
    resp = world[role].sql(statement)
    if LEVELS[role] >= LEVELS["READER"]:
        assert resp.status_code == 200, resp.text
        assert _shows(resp, marker), resp.text
        return
    assert resp.status_code in (403, 404), resp.text
    assert str(SECRET) not in resp.text
    body = resp.json()
    if resp.status_code == 403:  # a refusal names the role and what it lacks
        assert "NOBODY" in body["message"] and "SECRETDB" in body["message"], body


@pytest.mark.parametrize("role", list(LEVELS))
@pytest.mark.parametrize(("case", "statement", "marker"), CATALOG, ids=[c[0] for c in CATALOG])
def test_catalog_functions_show_only_what_the_role_may_use(
    world, role, case, statement, marker
) -> None:
    resp = world[role].sql(statement)
    assert resp.status_code == 200, resp.text
    assert _shows(resp, marker) == (LEVELS[role] >= LEVELS["READER"]), resp.text
    if case == "duckdb_tables":
        assert "T" in _cells(resp)  # the PUB table is there for everyone


def _writes(role: str) -> list[tuple[str, str]]:
    """(id, statement) changing SECRETDB.PRIVATE; names are per role so runs do not collide."""
    t = f"secretdb.private.made_by_{role}"
    return [
        ("insert", "INSERT INTO secretdb.private.salaries VALUES ('x', 1)"),
        ("update", "UPDATE secretdb.private.salaries SET amount = amount WHERE name = 'x'"),
        ("delete", "DELETE FROM secretdb.private.salaries WHERE name = 'x'"),
        ("create-table", f"CREATE TABLE {t} AS SELECT 1 AS a"),
        ("create-view", f"CREATE VIEW {t}_v AS SELECT 1 AS a"),
        ("drop-table", f"DROP TABLE secretdb.private.doomed_{role}"),
        (
            "insert-from-query",
            "INSERT INTO secretdb.private.salaries "
            """SELECT * FROM query('SELECT ''y'', 2') WHERE false""",
        ),
    ]


@pytest.mark.parametrize("role", list(LEVELS))
def test_changing_the_private_schema_needs_create_table(world, role) -> None:
    admin = world["ADMIN"]
    made = admin.sql(f"CREATE OR REPLACE TABLE secretdb.private.doomed_{role} AS SELECT 1 AS a")
    assert made.status_code == 200, made.text
    for case, statement in _writes(role):
        resp = world[role].sql(statement)
        if role == "WRITER":
            assert resp.status_code == 200, (case, resp.text)
            continue
        assert resp.status_code == 403, (case, resp.text)
        needed = "USAGE on DATABASE SECRETDB" if role == "NOBODY" else "CREATE TABLE on SCHEMA"
        assert needed in resp.json()["message"], (case, resp.text)
    # nothing a refused role ran changed the table
    rows = admin.sql("SELECT count(*) FROM secretdb.private.salaries WHERE name = 'x'").json()
    assert rows["rows"] == [[0]]
    tables = admin.sql("SHOW TABLES IN SCHEMA secretdb.private").json()
    names = {r[tables["columns"].index("name")] for r in tables["rows"]}
    assert (f"DOOMED_{role}" in names) == (role != "WRITER")
    assert (f"MADE_BY_{role}" in names) == (role == "WRITER")


@pytest.mark.parametrize("role", list(LEVELS))
def test_table_writes_from_python_need_create_table(world, role) -> None:
    resp = world[role].http.post(
        "/api/v1/sql/tables/write",
        params={"table": "secretdb.private.uploaded"},
        json={"columns": ["a"], "rows": [[1], [2]]},
    )
    if role == "WRITER":
        assert resp.status_code == 200, resp.text
        assert resp.json()["rows"] == 2
    else:
        assert resp.status_code == 403, resp.text
        assert "SECRETDB" in resp.json()["message"]


def test_show_tables_lists_only_usable_schemas(world) -> None:
    def names(role: str) -> set[str]:
        body = world[role].sql("SHOW TABLES IN ACCOUNT").json()
        return {r[body["columns"].index("name")] for r in body["rows"]}

    assert "SALARIES" not in names("NOBODY") and "T" in names("NOBODY")
    assert "SALARIES" in names("READER")


def test_a_statement_the_planner_reads_as_a_write_needs_create_table(world) -> None:
    """COMMENT ON is not a write the planner names a target for: it counts as changing every
    schema it names, so CREATE TABLE is checked (and the attach would refuse it anyway)."""
    resp = world["READER"].sql("COMMENT ON TABLE secretdb.private.salaries IS 'mine'")
    assert resp.status_code == 403, resp.text
    assert "CREATE TABLE on SCHEMA SECRETDB.PRIVATE" in resp.json()["message"]


LOCKED = [
    "SET GLOBAL threads = 1",
    "SET GLOBAL memory_limit = '2MB'",
    "SET GLOBAL extension_directory = '/tmp'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "PRAGMA threads = 1",
]


@pytest.mark.parametrize("statement", LOCKED)
def test_configuration_is_locked(world, statement) -> None:
    base = world["ADMIN"].sql("SELECT current_setting('threads')").json()["rows"]
    resp = world["NOBODY"].sql(statement)
    assert resp.status_code == 403, resp.text
    assert "locked" in resp.json()["message"] and "TimeZone" in resp.json()["message"]
    # the next query of anyone runs with the configured limits
    assert world["READER"].sql("SELECT current_setting('threads')").json()["rows"] == base


def test_threads_are_not_changed_for_others(world) -> None:
    base = world["ADMIN"].sql("SELECT current_setting('threads')").json()["rows"][0][0]
    world["NOBODY"].sql("SET GLOBAL threads = 1")
    assert world["ADMIN"].sql("SELECT current_setting('threads')").json()["rows"] == [[base]]


def test_user_settings_last_for_the_request_only(world) -> None:
    resp = world["NOBODY"].sql("SET TimeZone = 'Asia/Tokyo'; SELECT current_setting('TimeZone')")
    assert resp.status_code == 200, resp.text
    assert resp.json()["rows"] == [["Asia/Tokyo"]]
    other = world["READER"].sql("SELECT current_setting('TimeZone')").json()["rows"]
    assert other != [["Asia/Tokyo"]]
    again = world["NOBODY"].sql("SELECT current_setting('TimeZone')").json()["rows"]
    assert again != [["Asia/Tokyo"]]
