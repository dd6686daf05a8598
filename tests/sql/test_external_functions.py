"""API integrations and external functions on one account, calling a remote endpoint on loopback.

The remote here is a small HTTP server speaking the external-function data format (another
system, as an external function may call any); the test of two neve installations sharing a
service is tests/services/test_sharing.py. Each bad input is refused with an error naming it:
a URL outside the allowed prefixes (or blocked), a disabled integration, missing USAGE on the
integration or the function, an unreachable URL, and malformed answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ModelExecutionError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    SqlSyntaxError,
)
from neve.sql.external import matches

KEY = "remote-key-123"


class Remote(BaseHTTPRequestHandler):
    """POST /<kind>: answers each row [i, a, b, ...] per ``kind``; counts the batches."""

    batches: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        rows = body["data"]
        kind = self.path.strip("/").split("/")[-1]
        if self.headers.get("authorization") != f"Bearer {KEY}":
            return self._send(401, {"code": "UNAUTHENTICATED", "message": "invalid token"})
        Remote.batches.append(len(rows))
        if kind == "sum":  # neve's shape: an object of the one output
            out = [[r[0], {"total": sum(r[1:])}] for r in rows]
        elif kind == "plain":  # the bare value
            out = [[r[0], r[1] * 10] for r in reversed(rows)]
        elif kind == "both":
            out = [[r[0], {"low": min(r[1:]), "high": max(r[1:])}] for r in rows]
        elif kind == "echo":
            out = [[r[0], r[1]] for r in rows]
        elif kind == "short":
            out = [[r[0], 1] for r in rows[:-1]]
        elif kind == "text":
            out = [[r[0], "not a number"] for r in rows]
        else:
            return self._send(404, {"code": "NOT_FOUND", "message": f"no method {kind}"})
        self._send(200, {"data": out})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def remote() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Remote)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Remote.batches = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def column(result, name: str) -> list:
    return [row[result.columns.index(name)] for row in result.rows]


@pytest.fixture
def ready(sql, remote):
    """A schema with a table of 10 rows and an enabled API integration for ``remote``/svc/."""
    sql("CREATE DATABASE ml; CREATE SCHEMA ml.reg")
    sql("CREATE TABLE feats AS SELECT range::DOUBLE AS a, 2.0 AS b FROM range(10)")
    sql(
        f"CREATE API INTEGRATION remote_api API_PROVIDER = neve "
        f"API_ALLOWED_PREFIXES = ('{remote}/svc/') API_BLOCKED_PREFIXES = ('{remote}/svc/hidden/')"
        f" API_KEY = '{KEY}' ENABLED = TRUE COMMENT = 'the other installation'"
    )
    return sql


def test_an_external_function_scores_a_table_in_batches(ready, remote) -> None:
    sql = ready
    created = sql(
        "CREATE EXTERNAL FUNCTION remote_sum(a NUMBER, b NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = remote_api MAX_BATCH_ROWS = 4 AS '{remote}/svc/ML.REG.SVC/sum'"
    )
    assert created.rows == [["Function REMOTE_SUM successfully created."]]
    result = sql("SELECT a, remote_sum(a, b) AS y FROM feats ORDER BY a")
    assert [row[1] for row in result.rows] == [a + 2.0 for a in range(10)]
    assert sorted(Remote.batches) == [2, 4, 4] and result.stats == {"batches": 3, "rows": 10}
    # answers come back in any order, matched by row index; a bare value is taken as it is
    sql(
        "CREATE EXTERNAL FUNCTION times_ten(a INTEGER) RETURNS INTEGER "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/plain'"
    )
    assert column(sql("SELECT times_ten(a::INTEGER) AS t FROM feats ORDER BY a"), "t") == [
        10 * i for i in range(10)
    ]
    # several outputs: RETURNS OBJECT gives the JSON text
    sql(
        "CREATE EXTERNAL FUNCTION bounds(a NUMBER, b NUMBER) RETURNS OBJECT "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/both'"
    )
    first = sql("SELECT bounds(a, b) AS o FROM feats WHERE a = 5").rows[0][0]
    assert json.loads(first) == {"low": 2.0, "high": 5.0}
    # NULL arguments are not sent: their result is NULL
    assert sql("SELECT remote_sum(NULL::DOUBLE, 1.0) AS y").rows == [[None]]
    # strings, booleans and timestamps travel too
    sql(
        "CREATE EXTERNAL FUNCTION echo_text(s VARCHAR) RETURNS VARCHAR "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/echo'"
    )
    assert sql("SELECT echo_text('héllo') AS t").rows == [["héllo"]]
    sql(
        "CREATE EXTERNAL FUNCTION echo_ts(t TIMESTAMP) RETURNS TIMESTAMP "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/echo'"
    )
    assert str(sql("SELECT echo_ts(TIMESTAMP '2026-01-02 03:04:05') AS t").rows[0][0]).startswith(
        "2026-01-02 03:04:05"
    )

    shown = sql("SHOW EXTERNAL FUNCTIONS")
    assert column(shown, "name") == ["BOUNDS", "ECHO_TEXT", "ECHO_TS", "REMOTE_SUM", "TIMES_TEN"]
    assert set(column(shown, "is_external_function")) == {True}
    assert set(column(shown, "api_integration")) == {"REMOTE_API"}
    assert "REMOTE_SUM" in column(sql("SHOW FUNCTIONS"), "name")
    described = {r[0]: r[1] for r in sql("DESCRIBE FUNCTION remote_sum").rows}
    assert described["url"] == f"{remote}/svc/ML.REG.SVC/sum"
    assert described["MAX_BATCH_ROWS"] == "4" and described["returns"] == "FLOAT"

    # OR REPLACE, IF NOT EXISTS, ALTER FUNCTION, DROP FUNCTION
    with pytest.raises(ObjectExistsError, match="OR REPLACE"):
        sql(
            "CREATE EXTERNAL FUNCTION remote_sum(a NUMBER) RETURNS FLOAT "
            f"API_INTEGRATION = remote_api AS '{remote}/svc/x/plain'"
        )
    sql(
        "CREATE EXTERNAL FUNCTION IF NOT EXISTS remote_sum(a NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/plain'"
    )
    assert sql("SELECT remote_sum(1.0, 2.0)").rows == [[3.0]]  # unchanged
    sql("ALTER FUNCTION remote_sum SET MAX_BATCH_ROWS = 100")
    Remote.batches = []
    sql("SELECT remote_sum(a, b) FROM feats")
    assert Remote.batches == [10]
    sql(
        "CREATE OR REPLACE EXTERNAL FUNCTION remote_sum(a NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/plain'"
    )
    assert sql("SELECT remote_sum(1.5)").rows == [[15.0]]
    assert sql("DROP FUNCTION remote_sum(NUMBER)").rows == [["REMOTE_SUM successfully dropped."]]
    with pytest.raises(ObjectNotFoundError):
        sql("DESCRIBE FUNCTION remote_sum")


def test_the_key_is_sealed_and_never_shown(ready, remote, account) -> None:
    sql = ready
    shown = sql("SHOW API INTEGRATIONS")
    assert shown.columns == [
        "name",
        "type",
        "category",
        "enabled",
        "comment",
        "created_on",
        "owner",
    ]
    assert shown.rows[0][:5] == [
        "REMOTE_API",
        "EXTERNAL_API",
        "API",
        True,
        "the other installation",
    ]
    assert column(sql("SHOW INTEGRATIONS"), "type") == ["EXTERNAL_API"]
    described = {r[0]: r[2] for r in sql("DESCRIBE API INTEGRATION remote_api").rows}
    assert described["API_KEY"] == "********"
    assert described["API_ALLOWED_PREFIXES"] == f"{remote}/svc/"
    assert described["API_PROVIDER"] == "NEVE"
    assert {r[0]: r[2] for r in sql("DESCRIBE INTEGRATION remote_api").rows} == described
    for path in account.settings.home.rglob("*"):  # the catalog holds it sealed, not in clear
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert (account.settings.home / "sealing.key").stat().st_mode & 0o777 == 0o600
    # a new key applies to the next query
    sql(
        "CREATE EXTERNAL FUNCTION remote_sum(a NUMBER, b NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/ML.REG.SVC/sum'"
    )
    sql("ALTER API INTEGRATION remote_api SET API_KEY = 'wrong'")
    with pytest.raises(PermissionDeniedError) as err:
        sql("SELECT remote_sum(a, b) FROM feats")
    message = str(err.value)
    assert "external function ML.REG.REMOTE_SUM" in message
    assert f"{remote}/svc/ML.REG.SVC/sum (remote service ML.REG.SVC)" in message
    assert "refused the key of API integration REMOTE_API (HTTP 401: invalid token)" in message
    assert err.value.code == "REMOTE_REFUSED_KEY"
    sql(f"ALTER API INTEGRATION remote_api SET API_KEY = '{KEY}'")
    assert sql("SELECT remote_sum(1.0, 1.0)").rows == [[2.0]]


def test_urls_outside_the_allowed_prefixes_are_refused(ready, remote) -> None:
    sql = ready

    def create(url: str) -> None:
        sql(
            "CREATE OR REPLACE EXTERNAL FUNCTION f(a NUMBER) RETURNS FLOAT "
            f"API_INTEGRATION = remote_api AS '{url}'"
        )

    port = int(remote.rsplit(":", 1)[1])
    for url in (
        f"{remote}/other/x/sum",  # another path
        f"http://127.0.0.1:{port + 1}/svc/x/sum",  # another port
        f"http://localhost:{port}/svc/x/sum",  # another host
        f"https://127.0.0.1:{port}/svc/x/sum",  # another scheme
    ):
        with pytest.raises(PermissionDeniedError, match="outside the API_ALLOWED_PREFIXES"):
            create(url)
    with pytest.raises(PermissionDeniedError, match="in the API_BLOCKED_PREFIXES"):
        create(f"{remote}/svc/hidden/sum")
    for url, why in (
        (f"{remote}/svc/../other/sum", "'..' path segments"),
        (f"{remote}/svc/%2e%2e/other/sum", "encoded"),
        (f"http://user:pw@127.0.0.1:{port}/svc/x/sum", "user name or password"),
        ("ftp://127.0.0.1/svc/x", "not an http"),
        (f"{remote}/svc/x/sum#frag", "fragment"),
    ):
        with pytest.raises(InvalidArgumentError, match=why):
            create(url)
    assert not matches("http://h:8000/svc/x", "http://h:80/svc/")
    assert matches("http://h/svc/x", "http://h:80/svc/")
    # narrowing the prefixes later stops an existing function before it sends anything
    create(f"{remote}/svc/x/sum")
    sql(f"ALTER API INTEGRATION remote_api SET API_ALLOWED_PREFIXES = ('{remote}/svc/y/')")
    Remote.batches = []
    with pytest.raises(PermissionDeniedError, match="outside the API_ALLOWED_PREFIXES"):
        sql("SELECT f(a) FROM feats")
    assert Remote.batches == []


def test_a_disabled_or_dropped_integration_stops_its_functions(ready, remote) -> None:
    sql = ready
    sql(
        "CREATE EXTERNAL FUNCTION f(a NUMBER, b NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/sum'"
    )
    sql("ALTER API INTEGRATION remote_api SET ENABLED = FALSE")
    with pytest.raises(InvalidStateError, match=r"API integration REMOTE_API is disabled"):
        sql("SELECT f(a, b) FROM feats")
    with pytest.raises(InvalidStateError, match=r"ML\.REG\.G: API integration REMOTE_API is disa"):
        sql(
            "CREATE EXTERNAL FUNCTION g(a NUMBER) RETURNS FLOAT "
            f"API_INTEGRATION = remote_api AS '{remote}/svc/x/sum'"
        )
    assert Remote.batches == []
    sql("ALTER API INTEGRATION remote_api SET ENABLED = TRUE")
    assert sql("SELECT f(1.0, 2.0)").rows == [[3.0]]
    sql("DROP API INTEGRATION remote_api")
    with pytest.raises(ObjectNotFoundError, match="API integration REMOTE_API does not exist"):
        sql("SELECT f(a, b) FROM feats")
    with pytest.raises(ObjectNotFoundError):
        sql(
            "CREATE EXTERNAL FUNCTION g(a NUMBER) RETURNS FLOAT "
            f"API_INTEGRATION = remote_api AS '{remote}/svc/x/sum'"
        )
    sql("DROP API INTEGRATION IF EXISTS remote_api")


def test_privileges_usage_on_the_integration_and_on_the_function(ready, remote) -> None:
    sql = ready
    sql("CREATE ROLE analyst; CREATE USER ann PASSWORD = 'Secret-pass-123'")
    sql("GRANT ROLE analyst TO USER ann")
    sql("GRANT USAGE ON DATABASE ml TO ROLE analyst")
    sql("GRANT USAGE, CREATE FUNCTION ON SCHEMA ml.reg TO ROLE analyst")
    ann = sql.as_("ANN", "ANALYST")
    ann("USE SCHEMA ml.reg")
    create = (
        "CREATE EXTERNAL FUNCTION ann_sum(a NUMBER, b NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = remote_api AS '{remote}/svc/x/sum'"
    )
    with pytest.raises(PermissionDeniedError, match=r"needs USAGE on INTEGRATION REMOTE_API"):
        ann(create)
    assert ann("SHOW API INTEGRATIONS").rows == []
    with pytest.raises(PermissionDeniedError, match="USAGE on INTEGRATION REMOTE_API"):
        ann("DESCRIBE API INTEGRATION remote_api")
    with pytest.raises(PermissionDeniedError, match="CREATE INTEGRATION"):
        ann(
            "CREATE API INTEGRATION mine API_PROVIDER = neve "
            f"API_ALLOWED_PREFIXES = ('{remote}/') ENABLED = TRUE"
        )
    sql("GRANT USAGE ON INTEGRATION remote_api TO ROLE analyst")
    assert column(ann("SHOW API INTEGRATIONS"), "name") == ["REMOTE_API"]
    with pytest.raises(PermissionDeniedError, match="does not own"):
        ann("ALTER API INTEGRATION remote_api SET ENABLED = FALSE")
    ann(create)  # the creating role owns the function and may call it
    assert ann("SELECT ann_sum(1.0, 2.0)").rows == [[3.0]]
    # another role needs USAGE on the function (not on the integration) to call it or see it
    sql("CREATE ROLE viewer; CREATE USER vic PASSWORD = 'Secret-pass-123'")
    sql("GRANT ROLE viewer TO USER vic")
    sql("GRANT USAGE ON DATABASE ml TO ROLE viewer; GRANT USAGE ON SCHEMA ml.reg TO ROLE viewer")
    vic = sql.as_("VIC", "VIEWER")
    vic("USE SCHEMA ml.reg")
    with pytest.raises(PermissionDeniedError, match=r"needs USAGE on FUNCTION ML\.REG\.ANN_SUM"):
        vic("SELECT ann_sum(1.0, 2.0)")
    assert vic("SHOW EXTERNAL FUNCTIONS").rows == []
    ann("GRANT USAGE ON FUNCTION ml.reg.ann_sum TO ROLE viewer")
    assert vic("SELECT ann_sum(1.0, 2.0)").rows == [[3.0]]
    assert column(vic("SHOW EXTERNAL FUNCTIONS"), "name") == ["ANN_SUM"]
    with pytest.raises(PermissionDeniedError, match="does not own"):
        vic("ALTER FUNCTION ann_sum SET MAX_BATCH_ROWS = 5")


def test_bad_definitions_and_bad_answers(ready, remote) -> None:
    sql = ready

    def create(text: str) -> None:
        sql(f"CREATE OR REPLACE EXTERNAL FUNCTION {text}")

    with pytest.raises(InvalidArgumentError, match="argument B has type BINARY"):
        create(
            f"f(a NUMBER, b BINARY) RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/svc/x'"
        )
    with pytest.raises(InvalidArgumentError, match="declares no argument"):
        create(f"f() RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/svc/x'")
    with pytest.raises(InvalidArgumentError, match="argument A is declared twice"):
        create(f"f(a NUMBER, a NUMBER) RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/s'")
    with pytest.raises(SqlSyntaxError, match="needs API_INTEGRATION"):
        create(f"f(a NUMBER) RETURNS FLOAT AS '{remote}/svc/x'")
    with pytest.raises(SqlSyntaxError, match="unknown property SERVICE"):
        create(f"f(a NUMBER) RETURNS FLOAT SERVICE = s API_INTEGRATION = remote_api AS '{remote}'")
    with pytest.raises(InvalidArgumentError, match="MAX_BATCH_ROWS must be >= 1"):
        create("f(a NUMBER) RETURNS FLOAT API_INTEGRATION = remote_api MAX_BATCH_ROWS = 0 AS 'x'")
    with pytest.raises(InvalidArgumentError, match="external access integration, not an API"):
        sql("CREATE NETWORK RULE ml.reg.r MODE = EGRESS TYPE = HOST_PORT VALUE_LIST = ('a:1')")
        sql("CREATE EXTERNAL ACCESS INTEGRATION eai ALLOWED_NETWORK_RULES = (ml.reg.r)")
        create(f"f(a NUMBER) RETURNS FLOAT API_INTEGRATION = eai AS '{remote}/svc/x'")
    with pytest.raises(InvalidArgumentError, match="API_PROVIDER = aws_api_gateway is not"):
        sql(
            "CREATE API INTEGRATION other API_PROVIDER = aws_api_gateway "
            f"API_ALLOWED_PREFIXES = ('{remote}/') ENABLED = TRUE"
        )
    with pytest.raises(InvalidArgumentError, match="API_ALLOWED_PREFIXES is empty"):
        sql("CREATE API INTEGRATION other API_PROVIDER = neve API_ALLOWED_PREFIXES = ()")
    with pytest.raises(ObjectExistsError, match="already exists"):
        sql(
            f"CREATE API INTEGRATION remote_api API_PROVIDER = neve API_ALLOWED_PREFIXES = ('{remote}/')"
        )
    with pytest.raises(ObjectExistsError, match="external access integration"):
        sql(
            f"CREATE OR REPLACE API INTEGRATION eai API_PROVIDER = neve API_ALLOWED_PREFIXES = ('{remote}/')"
        )

    # answers that do not fit: named with the function and the URL
    create(f"short(a NUMBER) RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/svc/x/short'")
    with pytest.raises(
        ModelExecutionError, match=r"/svc/x/short answered 9 rows for a batch of 10"
    ):
        sql("SELECT short(a) FROM feats")
    create(f"txt(a NUMBER) RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/svc/x/text'")
    with pytest.raises(ModelExecutionError, match="answered 'not a number', which is not a FLOAT"):
        sql("SELECT txt(a) FROM feats")
    create(f"two(a NUMBER) RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/svc/x/both'")
    with pytest.raises(ModelExecutionError, match="object of 2 values .* declare RETURNS OBJECT"):
        sql("SELECT two(a) FROM feats")
    create(f"gone(a NUMBER) RETURNS FLOAT API_INTEGRATION = remote_api AS '{remote}/svc/x/nope'")
    with pytest.raises(InvalidArgumentError, match=r"answered HTTP 404: no method nope"):
        sql("SELECT gone(a) FROM feats")
    # ON_BATCH_FAILURE = RETURN_NULL: a failed batch gives NULLs instead of the error
    sql("ALTER FUNCTION gone SET ON_BATCH_FAILURE = RETURN_NULL")
    assert sql("SELECT gone(1.0)").rows == [[None]]


def test_an_unreachable_url_is_named(sql) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/svc/ML.REG.SVC/predict"
    sql("CREATE DATABASE ml; CREATE SCHEMA ml.reg")
    sql(
        "CREATE API INTEGRATION closed API_PROVIDER = neve "
        f"API_ALLOWED_PREFIXES = ('http://127.0.0.1:{port}/') ENABLED = TRUE"
    )
    sql(
        "CREATE EXTERNAL FUNCTION f(a NUMBER) RETURNS FLOAT API_INTEGRATION = closed "
        f"MAX_BATCH_RETRIES = 1 AS '{url}'"
    )
    with pytest.raises(ServiceUnavailableError) as err:
        sql("SELECT f(1.0)")
    assert f"external function ML.REG.F: cannot connect to {url}" in str(err.value)
    assert err.value.code == "REMOTE_UNREACHABLE"
