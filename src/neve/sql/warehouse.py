"""The account's warehouse: one DuckDB file per neve schema, attached per query.

A neve schema ``DB.SCHEMA`` is the file ``<home>/warehouse/DB/SCHEMA.duckdb``; a query sees it
as the DuckDB catalog ``"DB__SCHEMA"`` (so ``db.schema.table``, ``schema.table`` and ``table``
are rewritten to ``"DB__SCHEMA".main.table`` by :func:`rewrite_tables`, and DuckDB's errors are
rewritten back to neve names).

Isolation holds by construction, not by reading the statement: every statement runs on a new
in-memory DuckDB instance to which only the schemas the role may use are attached, READ_ONLY
unless the role may write there and the statement writes. Table functions (``query``,
``query_table``), catalog functions (``duckdb_tables()``, ``information_schema``), PRAGMA,
views and CTEs all resolve inside that instance, so they can only reach what was attached. After
attaching, file access is disabled (``enable_external_access``) and the configuration is locked
(``lock_configuration``) with only :data:`neve.sql.limits.USER_SETTINGS` left changeable; the
instance's ``threads`` and ``memory_limit`` are the query's limits, and it is discarded after the
statement, so nothing a user runs changes another query.

DuckDB lets one file be attached by several instances of a process only if all of them read it:
a process-wide readers/writer lock per file lets readers share a schema and gives a writer
(READ_WRITE attach) the schema alone until its statement ends.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from sqlglot import exp

from neve.errors import (
    InvalidArgumentError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ResourceError,
    SqlSyntaxError,
)
from neve.identifiers import ident, quote
from neve.sql.duck_names import duck_ident, duck_schema, neve_schema
from neve.sql.legacy import migrate_single_file
from neve.sql.limits import USER_SETTINGS, QueryLimits, user_setting

FILE_SUFFIX = ".duckdb"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_PLAIN = re.compile(r"[A-Z0-9_$]")


def file_part(name: str) -> str:
    """A file name for a neve name: unquoted names as they are, any other character %XX-encoded
    (lower case too, so quoted names that differ only in case differ on any file system)."""
    return "".join(
        ch if _PLAIN.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name
    )


def name_of_part(part: str) -> str:
    data = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "%":
            data.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(part[i].encode())
            i += 1
    return data.decode()


class _FileLock:
    """Readers share a file; a writer has it alone (writers waiting go first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire(self, write: bool, deadline: float) -> bool:
        with self._cond:
            if not write:
                if not self._wait(lambda: not (self._writer or self._writers_waiting), deadline):
                    return False
                self._readers += 1
                return True
            self._writers_waiting += 1
            try:
                if not self._wait(lambda: not (self._writer or self._readers), deadline):
                    return False
                self._writer = True
                return True
            finally:
                self._writers_waiting -= 1
                self._cond.notify_all()  # readers held back by this writer may go on

    def _wait(self, ready: Callable[[], bool], deadline: float) -> bool:
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._cond.wait(remaining)
        return True

    def release(self, write: bool) -> None:
        with self._cond:
            if write:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()


# Process-wide: two Warehouse objects on one home (an account opened twice) share the locks.
_LOCKS: dict[str, _FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> _FileLock:
    key = str(path.resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, _FileLock())


@dataclass(frozen=True, order=True)
class Attachment:
    """One neve schema attached to a query instance; ``write`` attaches it READ_WRITE."""

    database: str
    schema: str
    write: bool = False

    @property
    def alias(self) -> str:
        return duck_schema(self.database, self.schema)

    @property
    def label(self) -> str:
        return f"{quote(self.database)}.{quote(self.schema)}"


class Warehouse:
    def __init__(
        self, root: Path, *, limits: QueryLimits | None = None, legacy: Path | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or QueryLimits.from_settings()
        self._closed = False
        self._create_lock = threading.Lock()
        if legacy is not None and Path(legacy).exists():
            migrate_single_file(Path(legacy), self.root, self.schema_path)

    # -- files ------------------------------------------------------------------------------------
    def schema_path(self, database: str, schema: str) -> Path:
        duck_schema(database, schema)  # refuses a database name holding the separator
        return self.root / file_part(database) / (file_part(schema) + FILE_SUFFIX)

    def schemas(self, database: str | None = None) -> list[tuple[str, str]]:
        """The (database, schema) pairs that have a file, in name order."""
        dirs = [self.root / file_part(database)] if database else sorted(self.root.iterdir())
        out = []
        for d in dirs:
            if not d.is_dir() or d.name.startswith("."):
                continue
            for f in sorted(d.glob("*" + FILE_SUFFIX)):
                out.append((name_of_part(d.name), name_of_part(f.name[: -len(FILE_SUFFIX)])))
        return out

    def ensure_schema(self, database: str, schema: str) -> None:
        """Create the schema's (empty) file if it has none yet."""
        path = self.schema_path(database, schema)
        if path.exists():
            return
        with self._create_lock:
            if path.exists():
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.connect([Attachment(database, schema, write=True)], create=True):
                pass

    def _remove(self, database: str, schema: str) -> None:
        path = self.schema_path(database, schema)
        lock = _lock_for(path)
        deadline = time.monotonic() + self.limits.timeout_s
        if not lock.acquire(True, deadline):
            raise ResourceError(
                f"schema {quote(database)}.{quote(schema)} is still in use by queries after "
                f"{self.limits.timeout_s:g} s (warehouse_query_timeout_secs); try again"
            )
        try:
            for f in (path, path.with_name(path.name + ".wal")):
                f.unlink(missing_ok=True)
        finally:
            lock.release(True)

    def drop_schema(self, database: str, schema: str) -> None:
        self._remove(database, schema)

    def drop_database(self, database: str) -> None:
        for db, sch in self.schemas(database):
            self._remove(db, sch)
        shutil.rmtree(self.root / file_part(database), ignore_errors=True)

    # -- query instances --------------------------------------------------------------------------
    @contextmanager
    def connect(
        self,
        attachments: Iterable[Attachment],
        *,
        settings: Iterable[tuple[str, str]] = (),
        deadline: float | None = None,
        create: bool = False,
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A new DuckDB instance that sees only ``attachments``, its configuration locked.

        Waits (until ``deadline``, a ``time.monotonic()`` value) for writers of the schemas it
        reads and for every other user of the schemas it writes.
        """
        if self._closed:
            raise NeveError("the warehouse is closed")
        wanted: dict[tuple[str, str], Attachment] = {}
        for a in attachments:
            key = (a.database, a.schema)
            if key not in wanted or a.write:
                wanted[key] = a
        chosen = sorted(wanted.values())  # one order for everyone: no lock-order deadlock
        if deadline is None:
            deadline = time.monotonic() + self.limits.timeout_s
        held: list[tuple[_FileLock, bool]] = []
        con: duckdb.DuckDBPyConnection | None = None
        try:
            paths = []
            for a in chosen:
                path = self.schema_path(a.database, a.schema)
                lock = _lock_for(path)
                if not lock.acquire(a.write, deadline):
                    raise ResourceError(
                        f"statement timed out waiting for schema {a.label}, which other "
                        "statements are using (limit: warehouse_query_timeout_secs = "
                        f"{self.limits.timeout_s:g} s)",
                        code="STATEMENT_TIMEOUT",
                    )
                held.append((lock, a.write))
                if not path.exists():
                    if not (create or a.write):
                        continue  # no tables yet: nothing to see
                    path.parent.mkdir(parents=True, exist_ok=True)
                paths.append((a, path))
            spill = self.root / ".spill" / uuid.uuid4().hex
            con = self._instance(spill)
            for a, path in paths:
                mode = "" if a.write else " (READ_ONLY)"
                con.execute(f"ATTACH {_sql_string(str(path))} AS {duck_ident(a.alias)}{mode}")
            self._lock_down(con, settings)
            yield con
        finally:
            if con is not None:
                con.close()  # a writer checkpoints here, before its lock is released
                shutil.rmtree(spill, ignore_errors=True)
            for lock, write in reversed(held):
                lock.release(write)

    def _instance(self, spill: Path) -> duckdb.DuckDBPyConnection:
        limits = self.limits
        try:
            return duckdb.connect(
                ":memory:",
                config={
                    "threads": limits.threads,
                    "memory_limit": limits.memory_limit,
                    # its own spill directory (an in-memory instance would use ./.tmp, shared)
                    "temp_directory": str(spill),
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "python_enable_replacements": False,
                },
            )
        except duckdb.Error as exc:
            raise InvalidArgumentError(
                f"the warehouse query limits are invalid (warehouse_query_threads = "
                f"{limits.threads}, warehouse_query_memory_limit = {limits.memory_limit!r}): "
                f"{_clean(str(exc))}"
            ) from None

    @staticmethod
    def _lock_down(con: duckdb.DuckDBPyConnection, settings: Iterable[tuple[str, str]]) -> None:
        # After ATTACH (which needs file access): no more files, no more configuration.
        con.execute("SET enable_external_access = false")
        for name, value in settings:
            duck_name = user_setting(name)
            if duck_name is not None:
                con.execute(f"SET {duck_name} = {_sql_string(value)}")
        allowed = ", ".join(_sql_string(n) for n in USER_SETTINGS.values())
        con.execute(f"SET allowed_configs = [{allowed}]")
        con.execute("SET lock_configuration = true")

    # -- tables -----------------------------------------------------------------------------------
    def tables(
        self,
        database: str | None = None,
        schema: str | None = None,
        *,
        visible: set[tuple[str, str]] | None = None,
    ) -> list[dict]:
        """Tables and views, as SHOW TABLES rows (neve names); only ``visible`` schemas if given."""
        scope = [
            (db, sch)
            for db, sch in self.schemas(database)
            if (schema is None or sch == schema) and (visible is None or (db, sch) in visible)
        ]
        if not scope:
            return []
        with self.connect([Attachment(db, sch) for db, sch in scope]) as con:
            rows = con.execute(
                "SELECT database_name, table_name, estimated_size, column_count, 'TABLE' "
                "FROM duckdb_tables() WHERE NOT temporary "
                "UNION ALL SELECT database_name, view_name, NULL, column_count, 'VIEW' "
                "FROM duckdb_views() WHERE NOT internal AND NOT temporary ORDER BY 1, 2"
            ).fetchall()
        out = []
        for duck, name, size, ncols, kind in rows:
            parts = neve_schema(duck)
            if parts is None:
                continue
            db, sch = parts
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
    ) -> tuple[int, bool]:
        """Append (or with ``overwrite`` replace) ``data`` into ``database.schema.table``;
        returns the rows written and whether the table was (re)created."""
        alias = duck_schema(database, schema)
        target = f"{duck_ident(alias)}.main.{duck_ident(table)}"
        label = f"{quote(database)}.{quote(schema)}.{quote(table)}"
        self.ensure_schema(database, schema)
        view = "__neve_upload"
        with self.connect([Attachment(database, schema, write=True)]) as con:
            con.register(view, data)
            try:
                exists = bool(
                    con.execute(
                        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? "
                        "AND schema_name = 'main' AND table_name = ?",
                        [alias, table],
                    ).fetchall()[0][0]
                )
                if not exists and not auto_create_table:
                    raise ObjectNotFoundError(
                        f"table {label} does not exist (pass auto_create_table=True to create it)"
                    )
                if not exists or overwrite:
                    con.execute(
                        f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {view}"
                    ).fetchall()
                else:
                    con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {view}").fetchall()
            except duckdb.Error as exc:
                raise translate_error(exc) from None
            finally:
                con.unregister(view)
        return data.num_rows, not exists or overwrite

    def close(self) -> None:
        self._closed = True


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
        if _is_catalog_view(table):
            continue  # information_schema.tables: DuckDB's, showing only what is attached
        name = _ident_of(name_id, "table name")
        if name is None:
            continue
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
        table.set("db", exp.to_identifier("main", quoted=True))
        table.set("catalog", exp.to_identifier(duck_schema(db, sch), quoted=True))
        # Columns may be qualified by the table's name (t.a): keep that name as the alias.
        if alias is None and isinstance(table.parent, exp.From | exp.Join):
            table.set("alias", exp.TableAlias(this=exp.to_identifier(name, quoted=True)))
    # schema.table.column and db.schema.table.column: drop the parts DuckDB cannot resolve.
    for col in tree.find_all(exp.Column):
        if col.args.get("db") is not None or col.args.get("catalog") is not None:
            col.set("db", None)
            col.set("catalog", None)
    return used


CATALOG_SCHEMAS = frozenset({"INFORMATION_SCHEMA", "PG_CATALOG"})


def _is_catalog_view(table: exp.Table) -> bool:
    sch = table.args.get("db")
    return (
        table.args.get("catalog") is None
        and isinstance(sch, exp.Identifier)
        and sch.this.upper() in CATALOG_SCHEMAS
    )


# -- errors ------------------------------------------------------------------------------------


def _clean(message: str) -> str:
    # DuckDB appends the (rewritten) query text with a caret: positions would not match the
    # user's text, so drop it; map DB__SCHEMA back to DB.SCHEMA.
    text = message.split("\n\nLINE ", 1)[0].split("\nLINE ", 1)[0].strip()
    text = re.sub(r"\b([A-Za-z0-9_$]+)__([A-Za-z0-9_$]+)(\.main)?\b", r"\1.\2", text)
    return text


_NO_TABLE = re.compile(r"Table with name (.+?) does not exist!")
_READ_ONLY = re.compile(
    r'Cannot execute statement of type "([^"]+)" on database "([^"]+)" which is attached in '
    r"read-only mode"
)
_LOCKED = re.compile(r'Cannot change configuration option "([^"]+)"')


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
    read_only = _READ_ONLY.search(message)
    if read_only:
        return PermissionDeniedError(
            f"permission denied: {read_only.group(1)} writes to schema {read_only.group(2)}, "
            "which this role may only read (changing a schema's tables needs CREATE TABLE on the "
            "schema)"
        )
    locked = _LOCKED.search(message)
    if locked:
        return PermissionDeniedError(
            f"permission denied: setting {locked.group(1)} is locked (the warehouse sets it per "
            f"query); settings a user may SET: {', '.join(USER_SETTINGS.values())}"
        )
    if isinstance(exc, duckdb.ParserException):
        return SqlSyntaxError(message)
    if isinstance(exc, duckdb.CatalogException):
        if "already exists" in message:
            return ObjectExistsError(message)
        # Only the role's schemas are attached: "does not exist" covers "may not be used".
        return ObjectNotFoundError(f"{message} (or this role may not use it)")
    if isinstance(exc, duckdb.PermissionException):
        return PermissionDeniedError(
            f"{message} (the warehouse cannot read or write files of the control plane's machine; "
            "load data with session.write_pandas instead)"
        )
    return InvalidArgumentError(message)
