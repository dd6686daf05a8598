"""The SQL REST routes over real HTTP (uvicorn on a loopback port, real token authentication),
called through the client transport and the client warehouse helpers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware

from neve.client import warehouse as wh
from neve.client.transport import Transport
from neve.control.routes import sql as sql_routes
from neve.control.routes._base import error_response
from neve.errors import NeveError, ObjectNotFoundError, SqlSyntaxError


class _Auth(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        try:
            request.state.ctx = request.app.state.account.security.authenticate_request(
                request.headers
            )
        except NeveError as err:
            return error_response(err)
        return await call_next(request)


class _Session:
    """What the client helpers need of a session: a transport and the current context."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.role = "ACCOUNTADMIN"
        self.database: str | None = None
        self.schema: str | None = None

    def sql(self, text: str) -> dict:
        body = self.transport.call(
            "POST",
            "/api/v1/sql",
            json={"sql": text, "context": {"database": self.database, "schema": self.schema}},
        )
        self.database = body["context"]["database"]
        self.schema = body["context"]["schema"]
        return body


@pytest.fixture
def api(account):
    account.security.bootstrap()
    app = Starlette(routes=sql_routes.routes)
    app.state.account = account
    app.add_middleware(_Auth)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    transport = Transport(f"http://127.0.0.1:{port}", account.security.local_admin_token())
    yield _Session(transport)
    transport.close()
    server.should_exit = True
    thread.join(10)


def test_sql_route_json_shape_and_context(api) -> None:
    body = api.sql("CREATE DATABASE ml; CREATE SCHEMA ml.features")
    assert body["columns"] == ["status"]
    assert body["context"] == {"role": "ACCOUNTADMIN", "database": "ML", "schema": "FEATURES"}
    body = api.sql("CREATE TABLE t AS SELECT range AS a, range * 0.5 AS b FROM range(3)")
    body = api.sql("SELECT a, b FROM t ORDER BY a")
    assert body["columns"] == ["a", "b"]
    assert body["types"] == ["BIGINT", "DECIMAL(21,1)"]
    assert body["rows"] == [[0, 0.0], [1, 0.5], [2, 1.0]]
    assert body["stats"] == {"batches": 0, "rows": 0}
    with pytest.raises(
        SqlSyntaxError, match="line 1, position 15: Expected table name, found .WHERE."
    ):
        api.sql("SELECT a FROM WHERE")
    with pytest.raises(ObjectNotFoundError, match=r"ML\.FEATURES\.NOPE"):
        api.sql("SELECT * FROM nope")


def test_arrow_format_and_table_helpers(api) -> None:
    api.sql("CREATE DATABASE ml")
    frame = pd.DataFrame(
        {
            "id": np.arange(1000),
            "x": np.linspace(0, 1, 1000),
            "label": [f"r{i}" for i in range(1000)],
            "ts": pd.date_range("2024-01-01", periods=1000, freq="min"),
        }
    )
    table = wh.write_pandas(api, frame, "points")
    assert table.name == "ML.PUBLIC.POINTS"
    back = table.to_pandas()
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert table.count() == 1000
    wh.write_pandas(api, frame.head(10), "points")
    assert wh.table(api, "points").count() == 1010
    assert wh.table(api, "ml.public.points").collect()[0][:3] == (0, 0.0, "r0")
    arrow = wh.sql_arrow(api, "SELECT id, x FROM points WHERE id < 3 ORDER BY id")
    assert arrow.column("id").to_pylist() == [0, 0, 1, 1, 2, 2]
    df = wh.create_dataframe(api, pd.DataFrame({"a": [1.0, 2.0]}))
    assert df.name.startswith("ML.PUBLIC.NEVE_DF_")
    assert df.to_pandas()["a"].tolist() == [1.0, 2.0]
    df.drop()
    with pytest.raises(ObjectNotFoundError):
        df.count()
    # JSON records work too (for clients without pyarrow)
    answer = api.transport.call(
        "POST",
        "/api/v1/sql/tables/write",
        json={"table": "ml.public.recs", "records": [{"k": 1, "v": "a"}, {"k": 2, "v": "b"}]},
    )
    assert answer == {"table": "ML.PUBLIC.RECS", "rows": 2, "created": True}
    read = api.transport.call("GET", "/api/v1/sql/tables/read", params={"table": "ml.public.recs"})
    assert read["rows"] == [[1, "a"], [2, "b"]]


def test_cli_runs_statements_and_the_shell_keeps_context(api, monkeypatch) -> None:
    from typer.testing import CliRunner

    from neve.cli import sql as cli

    monkeypatch.setattr(cli, "get_session", lambda ctx: api)
    monkeypatch.setenv(
        "COLUMNS", "200"
    )  # wide tables (setting console.width would outlive the test)
    from neve.cli.main import app as neve_app

    runner = CliRunner()
    out = runner.invoke(neve_app, ["sql", "CREATE DATABASE ml"])
    assert out.exit_code == 0, out.output
    assert "Database ML successfully created." in out.output
    out = runner.invoke(neve_app, ["sql", "SHOW DATABASES"])
    assert out.exit_code == 0 and "ACCOUNTADMIN" in out.output and "1 row" in out.output
    out = runner.invoke(neve_app, ["sql", "SELECT * FROM nowhere"])
    assert out.exit_code == 1
    assert "no current database" in out.output
    # --database / --schema: where unqualified names resolve, checked to exist
    out = runner.invoke(neve_app, ["sql", "-d", "ml", "CREATE TABLE t0 AS SELECT 7 AS seven"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(neve_app, ["sql", "--schema", "ml.public", "SELECT seven FROM t0"])
    assert out.exit_code == 0 and "7" in out.output, out.output
    out = runner.invoke(neve_app, ["sql", "--schema", "ml.nope", "SELECT 1"])
    assert out.exit_code == 1 and "NOPE" in out.output, out.output
    # the shell: statements end at ';' across lines, USE carries over to the next statement
    script = "USE ml;\nCREATE TABLE t AS\n  SELECT 41 + 1 AS answer;\nSELECT answer FROM t;\n\\q\n"
    shell = cli.SqlShell(api)
    monkeypatch.setattr("builtins.input", _lines(script))
    cli.interactive(shell, max_rows=None)
    assert shell.context["database"] == "ML"
    assert api.transport.call(
        "POST", "/api/v1/sql", json={"sql": "SELECT answer FROM ml.public.t"}
    )["rows"] == [[42]]
    assert cli.statement_complete("SELECT ';'") is False
    assert cli.statement_complete("SELECT 1; -- done") is True
    assert cli.statement_complete("SELECT 1;") is True


def _lines(text: str):
    lines = iter(text.splitlines())

    def fake_input(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return fake_input
