"""The SQL engine of an account: ``SqlEngine(account).execute(ctx, text) -> SqlResult``.

A script is split at top-level ``;`` and run statement by statement. Management statements
(CREATE COMPUTE POOL, SHOW SERVICES, GRANT, USE, ...) are parsed by ``neve.sql.parser`` and
dispatched to the managers (``neve.sql.statements``); everything else is a warehouse statement,
planned by ``neve.sql.query`` and run on DuckDB with service and model functions bound as
vectorized Arrow UDFs (``neve.sql.udf``). USE statements change the context of the statements
after them; the changes come back in ``SqlResult.ctx_changes``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from neve.catalog import lookup
from neve.context import RequestContext
from neve.errors import NeveError, NotSupportedError, SignatureError
from neve.identifiers import QualifiedName, qualify
from neve.sql import udf as udfs
from neve.sql.lexer import split_statements
from neve.sql.parser import parse_management
from neve.sql.query import BoundCall, PlannedStatement, Planner, parse_statement
from neve.sql.warehouse import Warehouse, translate_error

if TYPE_CHECKING:
    from neve.control.account import Account

#: Threads that send service-function batches (shared by all queries of the account).
SERVICE_CALL_THREADS = 16
#: Loaded warehouse models kept in memory, by artifact checksum.
MODEL_CACHE_SIZE = 4


@dataclass
class SqlResult:
    columns: list[str]
    rows: list[list]
    ctx_changes: dict[str, Any] = field(default_factory=dict)
    types: list[str] = field(default_factory=list)
    #: Query results as an Arrow table (not sent as JSON; the API can stream it as Arrow IPC).
    arrow: pa.Table | None = None
    #: Service/model batches and rows sent by the statement's functions.
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def status(cls, message: str, **ctx_changes: Any) -> SqlResult:
        return cls(columns=["status"], rows=[[message]], ctx_changes=ctx_changes, types=["VARCHAR"])

    @classmethod
    def from_dicts(cls, records: list[dict], columns: list[str] | None = None) -> SqlResult:
        """Rows of SHOW/DESCRIBE output; column types inferred from the values."""
        cols = list(columns or (list(records[0]) if records else []))
        for rec in records:
            for key in rec:
                if key not in cols:
                    cols.append(key)
        rows = [[rec.get(c) for c in cols] for rec in records]
        types = [
            _value_type(next((r[i] for r in rows if r[i] is not None), None))
            for i in range(len(cols))
        ]
        return cls(columns=cols, rows=rows, types=types)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "types": self.types, "rows": self.rows}


class ModelCache:
    """Loaded models by artifact checksum (LRU), loaded at most once at a time per checksum."""

    def __init__(self, size: int = MODEL_CACHE_SIZE) -> None:
        self.size = size
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = load()
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
                self._loading.pop(key, None)
            return model


class SqlEngine:
    def __init__(self, account: Account) -> None:
        self.account = account
        self._warehouse: Warehouse | None = None
        self._warehouse_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(SERVICE_CALL_THREADS, thread_name_prefix="neve-sqlfn")
        self.models = ModelCache()
        #: How service functions reach a service; ``account.services.invoke_arrow`` unless
        #: replaced.
        self.service_caller: udfs.ServiceCaller | None = None

    # -- resources --------------------------------------------------------------------------------
    @property
    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            with self._warehouse_lock:
                if self._warehouse is None:
                    self._warehouse = Warehouse(self.account.settings.warehouse_path)
        return self._warehouse

    def _caller(self) -> udfs.ServiceCaller:
        if self.service_caller is not None:
            return self.service_caller
        return self.account.services.invoke_arrow

    def model_loader(self, version: Any) -> Callable[[], Any]:
        """Loads a model version's files (found by the registry) in this process."""
        registry = self.account.registry

        def load() -> Any:
            from neve.models import load_model

            return load_model(registry.version_path(version))

        return load

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._warehouse is not None:
            self._warehouse.close()

    # -- execution --------------------------------------------------------------------------------
    def execute(self, ctx: RequestContext, text: str) -> SqlResult:
        """Run every statement of ``text``; return the last one's result with all ctx changes."""
        statements = split_statements(text)
        if not statements:
            raise NotSupportedError("empty SQL text: nothing to run")
        changes: dict[str, Any] = {}
        result: SqlResult | None = None
        for index, st in enumerate(statements, 1):
            try:
                result = self.execute_one(ctx, st.text, offset=st.offset, script=text)
            except NeveError as exc:
                if len(statements) > 1:
                    _name_statement(exc, index, len(statements), text.count("\n", 0, st.offset))
                raise
            if result.ctx_changes:
                changes.update(result.ctx_changes)
                ctx = ctx.with_(**result.ctx_changes)
        assert result is not None
        result.ctx_changes = changes
        return result

    def execute_one(
        self, ctx: RequestContext, text: str, *, offset: int = 0, script: str | None = None
    ) -> SqlResult:
        script = script if script is not None else text
        statement = parse_management(text, offset=offset, script=script)
        if statement is not None:
            from neve.sql.statements import run_statement

            return run_statement(self, ctx, statement)
        return self._run_warehouse(ctx, text, offset=offset, script=script)

    def _run_warehouse(
        self, ctx: RequestContext, text: str, *, offset: int, script: str
    ) -> SqlResult:
        tree, bangs = parse_statement(text, offset=offset, script=script)
        if tree is None:
            raise NotSupportedError("empty statement")
        planned = Planner(self, ctx).plan(tree, bangs, text)
        errors = udfs.QueryErrors()
        warehouse = self.warehouse
        with warehouse.cursor() as cur:
            registered: list[str] = []
            try:
                # built outside the lock: a model function loads its model here
                udf_fns = [self._make_udf(ctx, call, errors) for call in planned.calls]
                with warehouse.lock:
                    for call, fn in zip(planned.calls, udf_fns, strict=True):
                        cur.create_function(
                            call.udf_name,
                            fn,
                            call.params,
                            call.return_type,
                            type="arrow",
                            null_handling="special",
                            side_effects=False,
                        )
                        registered.append(call.udf_name)
                table, types = self._fetch(cur, planned.sql)
            except duckdb.Error as exc:
                raise self._error(exc, errors, planned) from None
            finally:
                if registered:
                    with warehouse.lock:
                        for name in registered:
                            try:
                                cur.remove_function(name)
                            except duckdb.Error:
                                pass
        stats = {"batches": errors.batches_sent, "rows": errors.rows_sent}
        if table is None or (
            not planned.returns_rows and table.num_rows == 0 and table.column_names == ["Count"]
        ):
            return SqlResult(
                columns=["status"],
                rows=[["Statement executed successfully."]],
                types=["VARCHAR"],
                stats=stats,
            )
        return SqlResult(
            columns=list(table.column_names),
            rows=arrow_rows(table),
            types=types,
            arrow=table,
            stats=stats,
        )

    # -- tables from Python (write_pandas / table) -------------------------------------------------
    def _table_target(self, ctx: RequestContext, name: str) -> QualifiedName:
        return qualify(name, database=ctx.database, schema=ctx.schema, kind="table")

    def write_table(
        self,
        ctx: RequestContext,
        name: str,
        data: pa.Table,
        *,
        auto_create_table: bool = True,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Append ``data`` to table ``name`` (creating it, or replacing it with ``overwrite``).

        Creating needs CREATE TABLE on the schema, appending needs USAGE (tables carry no
        privileges of their own in neve).
        """
        qn = self._table_target(ctx, name)
        exists = any(t["name"] == qn.name for t in self.warehouse.tables(qn.database, qn.schema))
        with self.account.catalog.transaction() as s:
            schema_row = lookup.schema(s, qn.database, qn.schema)
            privilege = "USAGE" if exists and not overwrite else "CREATE TABLE"
            self.account.security.require(s, ctx, privilege, schema_row)
        rows = self.warehouse.write_arrow(
            qn.database,
            qn.schema,
            qn.name,
            data,
            auto_create_table=auto_create_table,
            overwrite=overwrite,
        )
        return {"table": str(qn), "rows": rows, "created": not exists or overwrite}

    def read_table(self, ctx: RequestContext, name: str) -> pa.Table:
        qn = self._table_target(ctx, name)
        result = self.execute_one(ctx, f"SELECT * FROM {qn}")
        assert result.arrow is not None
        return result.arrow

    @staticmethod
    def _fetch(cur: duckdb.DuckDBPyConnection, sql: str) -> tuple[pa.Table | None, list[str]]:
        rel = cur.sql(sql)
        if rel is None:
            return None, []
        types = [str(t) for t in rel.types]
        return rel.to_arrow_table(), types

    def _make_udf(self, ctx: RequestContext, call: BoundCall, errors: udfs.QueryErrors):
        if call.kind == "SERVICE":
            assert call.service is not None
            return udfs.service_udf(
                caller=self._caller(),
                ctx=ctx,
                service=call.service,
                method=call.method,
                function=call.display,
                signature=call.signature,
                options=udfs.BatchOptions.from_options(call.options),
                pool=self._pool,
                errors=errors,
            )
        assert call.model_key is not None
        loaded = self.models.get(call.model_key, call.model_loader)
        return udfs.model_udf(
            loaded=loaded, method=call.method, signature=call.signature, errors=errors
        )

    @staticmethod
    def _error(exc: duckdb.Error, errors: udfs.QueryErrors, planned: PlannedStatement) -> NeveError:
        calls = planned.calls
        first = errors.first
        if isinstance(first, NeveError):
            return first
        if first is not None:
            return translate_error(Exception(f"{type(first).__name__}: {first}"))
        message = str(exc)
        if isinstance(exc, duckdb.BinderException):
            for call in calls:
                if call.udf_name in message:
                    return _signature_mismatch(call, message)
        text = message
        for call in calls:
            text = text.replace(call.udf_name, call.display)
        return translate_error(type(exc)(text), planned.tables)


def _name_statement(exc: NeveError, index: int, total: int, newlines_before: int) -> None:
    """Say which statement of a script failed, and that the ones before it were applied
    (each statement commits on its own, as in the reference platform's scripts)."""
    if exc.message.startswith("statement "):
        return
    line = newlines_before + 1
    if index == 1:
        done = "nothing before it ran"
    elif index == 2:
        done = "statement 1 was applied"
    else:
        done = f"statements 1-{index - 1} were applied"
    exc.message = f"statement {index} of {total} (line {line}) failed ({done}): {exc.message}"
    exc.args = (exc.message,)


_GIVEN = re.compile(r"argument types '[^(]*\(([^)]*)\)'")


def _signature_mismatch(call: BoundCall, message: str) -> SignatureError:
    found = _GIVEN.search(message)
    given = found.group(1).replace("_LITERAL", "") if found else "other types"
    expected = ", ".join(
        f"{f.name} {p}" for f, p in zip(call.signature.inputs, call.params, strict=True)
    )
    return SignatureError(
        f"function {call.display} expects ({expected}) but was called with ({given}); "
        "cast the arguments (e.g. col::DOUBLE)"
    )


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    if isinstance(value, datetime):
        return "TIMESTAMP_TZ" if value.tzinfo is not None else "TIMESTAMP"
    if isinstance(value, dict | list):
        return "VARIANT"
    return "VARCHAR"


def arrow_rows(table: pa.Table) -> list[list]:
    """Rows of Python values (decimals as floats: JSON has no decimal type)."""
    if table.num_columns == 0:
        return []
    columns = [
        (col.cast(pa.float64()) if pa.types.is_decimal(col.type) else col).to_pylist()
        for col in table.columns
    ]
    return [list(r) for r in zip(*columns, strict=True)]
