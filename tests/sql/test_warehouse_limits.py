"""Per-query limits (threads, memory, time), the read-only attach, concurrent statements on one
schema, and opening a warehouse made as a single DuckDB file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from neve.config import settings_from_values
from neve.context import admin_context
from neve.errors import InvalidArgumentError, PermissionDeniedError, ResourceError
from neve.sql.limits import QueryLimits
from neve.sql.warehouse import Attachment, Warehouse, translate_error


def _account_with(neve_home: Path, settings: str):
    from neve.control.account import Account

    (neve_home / "settings.toml").write_text(settings)
    account = Account.open(str(neve_home))
    account.security.bootstrap()
    return account


def test_limits_come_from_settings(neve_home) -> None:
    account = _account_with(
        neve_home,
        "warehouse_query_threads = 3\nwarehouse_query_memory_limit = '300MB'\n"
        "warehouse_query_timeout_secs = 1\n",
    )
    try:
        ctx = admin_context()
        rows = account.sql.execute(
            ctx, "SELECT current_setting('threads'), current_setting('memory_limit')"
        ).rows
        assert rows[0][0] == 3 and rows[0][1].startswith("286")  # 300MB in MiB
        started = time.monotonic()
        with pytest.raises(ResourceError, match=r"ran past 1 s \(warehouse_query_timeout_secs"):
            account.sql.execute(ctx, "SELECT count(*) FROM range(1000000000000) a")
        assert time.monotonic() - started < 30
        assert account.sql.execute(ctx, "SELECT 1").rows == [[1]]  # the next one runs
    finally:
        account.close()


def test_a_query_past_its_memory_limit_names_the_setting(neve_home) -> None:
    account = _account_with(neve_home, "warehouse_query_memory_limit = '32MB'\n")
    try:
        with pytest.raises(ResourceError, match="warehouse_query_memory_limit"):
            account.sql.execute(
                admin_context(),
                "SELECT list(range::VARCHAR || 'padding padding padding') FROM range(20000000)",
            )
    finally:
        account.close()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"warehouse_query_threads": 0}, "warehouse_query_threads"),
        ({"warehouse_query_memory_limit": 5}, "warehouse_query_memory_limit"),
        ({"warehouse_query_timeout_secs": "soon"}, "warehouse_query_timeout_secs"),
    ],
)
def test_bad_limit_settings_are_named(tmp_path, extra, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        settings_from_values(extra, home=tmp_path)


def test_a_read_only_attach_refuses_writes_whatever_the_statement(tmp_path) -> None:
    """The guarantee under the planner's checks: a schema attached READ_ONLY cannot change."""
    wh = Warehouse(tmp_path / "wh")
    with wh.connect([Attachment("ML", "PUBLIC", write=True)], create=True) as con:
        con.execute('CREATE TABLE "ML__PUBLIC".main.t AS SELECT 1 AS a')
    for statement in (
        'INSERT INTO "ML__PUBLIC".main.t VALUES (2)',
        'DROP TABLE "ML__PUBLIC".main.t',
        'ALTER TABLE "ML__PUBLIC".main.t ADD COLUMN b INT',
        'CREATE TABLE "ML__PUBLIC".main.u (x INT)',
    ):
        with wh.connect([Attachment("ML", "PUBLIC")]) as con:
            with pytest.raises(duckdb.Error) as info:
                con.execute(statement)
            err = translate_error(info.value)
            assert isinstance(err, PermissionDeniedError), err
            assert "schema ML.PUBLIC" in err.message and "CREATE TABLE" in err.message
    with wh.connect([]) as con:  # nothing attached: nothing to see
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
    with wh.connect([Attachment("ML", "PUBLIC")]) as con:
        assert con.execute('SELECT * FROM "ML__PUBLIC".t').fetchall() == [(1,)]


def test_readers_share_a_schema_and_a_writer_waits_for_them(tmp_path) -> None:
    wh = Warehouse(tmp_path / "wh", limits=QueryLimits(threads=1, memory_limit="1GB", timeout_s=5))
    wh.ensure_schema("ML", "PUBLIC")
    order: list[str] = []
    reading = threading.Event()

    def writer() -> None:
        reading.wait(5)
        with wh.connect([Attachment("ML", "PUBLIC", write=True)]) as con:
            order.append("write")
            con.execute('CREATE TABLE "ML__PUBLIC".main.t AS SELECT 1 AS a')

    thread = threading.Thread(target=writer)
    thread.start()
    with wh.connect([Attachment("ML", "PUBLIC")]), wh.connect([Attachment("ML", "PUBLIC")]):
        reading.set()  # two readers at once; the writer waits until both are done
        time.sleep(0.3)
        order.append("read")
    thread.join(10)
    assert order == ["read", "write"]
    short = Warehouse(tmp_path / "wh", limits=QueryLimits(1, "1GB", timeout_s=0.3))
    with (
        wh.connect([Attachment("ML", "PUBLIC")]),
        pytest.raises(ResourceError, match="waiting for schema ML.PUBLIC"),
        short.connect([Attachment("ML", "PUBLIC", write=True)]),
    ):
        pass


def test_a_single_file_warehouse_is_split_when_the_account_opens(neve_home) -> None:
    from neve.control.account import Account

    account = Account.open(str(neve_home))
    account.security.bootstrap()
    ctx = admin_context()
    account.sql.execute(ctx, "CREATE DATABASE ml; CREATE SCHEMA ml.features")
    account.close()
    # the previous layout: one file, one DuckDB schema per neve schema
    legacy = neve_home / "warehouse.duckdb"
    con = duckdb.connect(str(legacy))
    con.execute('CREATE SCHEMA "ML__PUBLIC"; CREATE SCHEMA "ML__FEATURES"')
    con.execute('CREATE TABLE "ML__PUBLIC"."T" AS SELECT 41 + range AS a FROM range(3)')
    con.execute('CREATE VIEW "ML__FEATURES"."V" AS SELECT max(a) AS m FROM "ML__PUBLIC"."T"')
    con.close()
    import shutil

    shutil.rmtree(neve_home / "warehouse", ignore_errors=True)
    account = Account.open(str(neve_home))
    try:
        assert account.sql.execute(ctx, "SELECT m FROM ml.features.v").rows == [[43]]
        assert account.sql.execute(ctx, "SELECT count(*) FROM ml.public.t").rows == [[3]]
        assert not legacy.exists() and (neve_home / "warehouse.duckdb.migrated").exists()
        assert (neve_home / "warehouse" / "ML" / "PUBLIC.duckdb").exists()
    finally:
        account.close()
