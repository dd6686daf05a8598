"""The account's warehouse: one DuckDB database file holding every table of every neve schema.

A neve schema ``DB.SCHEMA`` is the DuckDB schema ``"DB__SCHEMA"`` (the simplest mapping that
lets ``db.schema.table``, ``schema.table`` and ``table`` all resolve in one DuckDB catalog).
Queries are parsed with sqlglot and their table references rewritten to that form
(:func:`rewrite_tables`); DuckDB's errors are rewritten back to neve names.

The control plane is one process: one DuckDB connection, one cursor per request. DuckDB itself is
thread-safe across cursors; the lock only guards creating schemas and registering UDFs, which
touch the shared catalog. File access from SQL (read_csv, COPY TO, ATTACH, INSTALL) is disabled:
the warehouse runs inside the control plane, and users must not read its files.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
from sqlglot import exp

from neve.errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SqlSyntaxError,
)
from neve.identifiers import ident, quote

SEP = "__"  # DuckDB schema name = <DATABASE>__<SCHEMA>


def duck_schema(database: str, schema: str) -> str:
    """The DuckDB schema holding the tables of neve schema ``database.schema``."""
    if SEP in database:
        raise InvalidIdentifierError(
            f"database name {database!r} contains {SEP!r}, which the warehouse reserves"
        )
    return f"{database}{SEP}{schema}"


def neve_schema(duck: str) -> tuple[str, str] | None:
    if SEP not in duck:
        return None
    db, _, sch = duck.partition(SEP)
    return db, sch


def duck_ident(name: str) -> str:
    """A DuckDB identifier for an already-normalized neve name (always quoted)."""
    return '"' + name.replace('"', '""') + '"'


class Warehouse:
    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path))
        # Service-function UDFs spend their time waiting on HTTP with the GIL released, so more
        # DuckDB threads than cores keeps more batches in flight on multi-row-group tables.
        cpus = os.cpu_count() or 2
        self._con.execute(f"SET threads = {int(threads or max(4, cpus))}")
        self._con.execute("SET enable_external_access = false")
        self.lock = threading.RLock()
        self._closed = False
        self._schemas: set[str] = set()  # DuckDB schemas known to exist (saves a catalog write)

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._closed:
            raise NeveError("the warehouse is closed")
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def ensure_schema(self, database: str, schema: str) -> None:
        name = duck_schema(database, schema)
        if name in self._schemas:
            return
        with self.lock, self.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {duck_ident(name)}")
            self._schemas.add(name)

    def drop_schema(self, database: str, schema: str) -> None:
        name = duck_schema(database, schema)
        with self.lock, self.cursor() as cur:
            self._schemas.discard(name)
            cur.execute(f"DROP SCHEMA IF EXISTS {duck_ident(name)} CASCADE")

    def drop_database(self, database: str) -> None:
        with self.lock, self.cursor() as cur:
            rows = cur.execute(
                "SELECT schema_name FROM information_schema.schemata "
                "WHERE catalog_name = current_database() AND starts_with(schema_name, ?)",
                [database + SEP],
            ).fetchall()
            for (name,) in rows:
                self._schemas.discard(name)
                cur.execute(f"DROP SCHEMA IF EXISTS {duck_ident(name)} CASCADE")

    def tables(self, database: str | None = None, schema: str | None = None) -> list[dict]:
        """Tables and views, as SHOW TABLES rows (neve names)."""
        with self.cursor() as cur:
            rows = cur.execute(
                "SELECT schema_name, table_name, estimated_size, column_count, 'TABLE' "
                "FROM duckdb_tables() WHERE database_name = current_database() "
                "UNION ALL SELECT schema_name, view_name, NULL, column_count, 'VIEW' "
                "FROM duckdb_views() WHERE database_name = current_database() AND NOT internal "
                "ORDER BY 1, 2"
            ).fetchall()
        out = []
        for duck, name, size, ncols, kind in rows:
            parts = neve_schema(duck)
            if parts is None:
                continue
            db, sch = parts
            if database is not None and db != database:
                continue
            if schema is not None and sch != schema:
                continue
            out.append(
                {
                    "name": name,
                    "database_name": db,
                    "schema_name": sch,
                    "kind": kind,
                    "rows": size,
                    "columns": ncols,
                }
            )
        return out

    def write_arrow(
        self,
        database: str,
        schema: str,
        table: str,
        data: pa.Table,
        *,
        auto_create_table: bool = True,
        overwrite: bool = False,
    ) -> int:
        """Append (or with ``overwrite`` replace) ``data`` into ``database.schema.table``."""
        target = f"{duck_ident(duck_schema(database, schema))}.{duck_ident(table)}"
        label = f"{quote(database)}.{quote(schema)}.{quote(table)}"
        self.ensure_schema(database, schema)
        view = f"__neve_upload_{threading.get_ident()}_{id(data)}"
        with self.cursor() as cur:
            cur.register(view, data)
            try:
                exists = bool(
                    cur.execute(
                        "SELECT count(*) FROM duckdb_tables() WHERE database_name = "
                        "current_database() AND schema_name = ? AND table_name = ?",
                        [duck_schema(database, schema), table],
                    ).fetchall()[0][0]
                )
                if not exists and not auto_create_table:
                    raise ObjectNotFoundError(
                        f"table {label} does not exist (pass auto_create_table=True to create it)"
                    )
                if not exists or overwrite:
                    cur.execute(
                        f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {view}"
                    ).fetchall()
                else:
                    cur.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {view}").fetchall()
            except duckdb.Error as exc:
                raise translate_error(exc) from None
            finally:
                cur.unregister(view)
        return data.num_rows

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._con.close()


# -- query rewriting ---------------------------------------------------------------------------


def _ident_of(node: exp.Expression | None, kind: str) -> str | None:
    if node is None:
        return None
    if isinstance(node, exp.Identifier):
        if node.quoted:
            return ident('"' + node.this.replace('"', '""') + '"', kind=kind)
        return ident(node.this, kind=kind)
    return None


def rewrite_tables(
    tree: exp.Expression,
    database: str | None,
    schema: str | None,
    tables: list[tuple[str, str, str]] | None = None,
) -> set[tuple[str, str]]:
    """Point every table reference in ``tree`` at its DuckDB schema, in place.

    Returns the (database, schema) pairs referenced, so the caller can check they exist.
    CTE names and table functions (``range(10)``, ``read_parquet(...)``) are left alone.
    """
    cte_names = {cte.alias_or_name.upper() for cte in tree.find_all(exp.CTE) if cte.alias_or_name}
    used: set[tuple[str, str]] = set()
    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            continue
        name_id = table.this
        if not table.args.get("db") and name_id.this.upper() in cte_names:
            continue
        name = _ident_of(name_id, "table name")
        sch = _ident_of(table.args.get("db"), "schema name") or schema
        db = _ident_of(table.args.get("catalog"), "database name") or database
        if db is None or sch is None:
            missing = "database" if db is None else "schema"
            raise InvalidArgumentError(
                f"table {table.sql(dialect='duckdb')} is not qualified and this session has no "
                f"current {missing} (USE DATABASE / USE SCHEMA, or write database.schema.table)"
            )
        used.add((db, sch))
        if tables is not None:
            tables.append((db, sch, name))
        alias = table.args.get("alias")
        table.set("this", exp.to_identifier(name, quoted=True))
        table.set("db", exp.to_identifier(duck_schema(db, sch), quoted=True))
        table.set("catalog", None)
        # Columns may be qualified by the table's name (t.a): keep that name as the alias.
        if alias is None and isinstance(table.parent, exp.From | exp.Join):
            table.set("alias", exp.TableAlias(this=exp.to_identifier(name, quoted=True)))
    # schema.table.column and db.schema.table.column: drop the parts DuckDB cannot resolve.
    for col in tree.find_all(exp.Column):
        if col.args.get("db") is not None or col.args.get("catalog") is not None:
            col.set("db", None)
            col.set("catalog", None)
    return used


# -- errors ------------------------------------------------------------------------------------


def _clean(message: str) -> str:
    # DuckDB appends the (rewritten) query text with a caret: positions would not match the
    # user's text, so drop it; map DB__SCHEMA back to DB.SCHEMA.
    text = message.split("\n\nLINE ", 1)[0].split("\nLINE ", 1)[0].strip()
    text = re.sub(r"\b([A-Za-z0-9_$]+)__([A-Za-z0-9_$]+)\b", r"\1.\2", text)
    return text


_NO_TABLE = re.compile(r"Table with name (.+?) does not exist!")


def translate_error(exc: Exception, tables: list[tuple[str, str, str]] | None = None) -> NeveError:
    """A neve error for a DuckDB error (the class says what kind of mistake it was)."""
    message = _clean(str(exc))
    missing = _NO_TABLE.search(message)
    if missing and isinstance(exc, duckdb.CatalogException):
        name = missing.group(1).strip('"')
        where = [t for t in tables or [] if t[2].upper() == name.upper()]
        if where:
            db, sch, tbl = where[0]
            return ObjectNotFoundError(
                f"table {quote(db)}.{quote(sch)}.{quote(tbl)} does not exist or not authorized"
            )
    if isinstance(exc, duckdb.ParserException):
        return SqlSyntaxError(message)
    if isinstance(exc, duckdb.CatalogException):
        if "already exists" in message:
            return ObjectExistsError(message)
        return ObjectNotFoundError(message)
    if isinstance(exc, duckdb.PermissionException):
        return PermissionDeniedError(
            f"{message} (the warehouse cannot read or write files of the control plane's machine; "
            "load data with session.write_pandas instead)"
        )
    return InvalidArgumentError(message)
