"""The SQL engine of an account: ``SqlEngine(account).execute(ctx, text) -> SqlResult``.

A script is split at top-level ``;`` and run statement by statement. Management statements
(CREATE COMPUTE POOL, SHOW SERVICES, GRANT, USE, ...) are parsed by ``neve.sql.parser`` and
dispatched to the managers (``neve.sql.statements``); everything else is a warehouse statement,
planned by ``neve.sql.query`` and run on DuckDB with service and model functions bound as
vectorized Arrow UDFs (``neve.sql.udf``). USE statements change the context of the statements
after them; the changes come back in ``SqlResult.ctx_changes``.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from duckdb import func as duckdb_func
from sqlglot import exp

from neve.catalog import lookup
from neve.context import RequestContext
from neve.errors import (
    NeveError,
    NotSupportedError,
    PermissionDeniedError,
    ResourceError,
    SignatureError,
    SqlSyntaxError,
)
from neve.identifiers import QualifiedName, qualify
from neve.sql import access
from neve.sql import udf as udfs
from neve.sql.access import schema_access
from neve.sql.external import ExternalCaller
from neve.sql.lexer import split_statements
from neve.sql.limits import USER_SETTINGS, QueryLimits, user_setting
from neve.sql.parser import parse_management
from neve.sql.query import BoundCall, PlannedStatement, Planner, parse_statement
from neve.sql.result import SqlResult
from neve.sql.warehouse import Attachment, Warehouse, translate_error

if TYPE_CHECKING:
    from neve.sql.managers import Managers

#: Threads that send service-function batches (shared by all queries of the account).
SERVICE_CALL_THREADS = 16
#: Loaded warehouse models kept in memory, by artifact checksum.
MODEL_CACHE_SIZE = 4


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
    def __init__(self, account: Managers) -> None:
        self.account = account
        self._warehouse: Warehouse | None = None
        self._warehouse_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(SERVICE_CALL_THREADS, thread_name_prefix="neve-sqlfn")
        self.models = ModelCache()
        #: How service functions reach a service; ``account.services.invoke_arrow`` unless
        #: replaced.
        self.service_caller: udfs.ServiceCaller | None = None
        #: How external functions reach their URLs (HTTP, one connection pool)
        self.external = ExternalCaller()

    # -- resources --------------------------------------------------------------------------------
    @property
    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            with self._warehouse_lock:
                if self._warehouse is None:
                    settings = self.account.settings
                    self._warehouse = Warehouse(
                        settings.home / "warehouse",
                        limits=QueryLimits.from_settings(settings.warehouse),
                        legacy=settings.warehouse_path,  # a single-file warehouse is split once
                    )
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
        self.external.close()
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
                try:
                    result = self.execute_one(ctx, st.text, offset=st.offset, script=text)
                except RecursionError:
                    # sqlglot parses recursively: ((((...)))) thousands deep is refused, not a 500
                    raise SqlSyntaxError("statement is nested too deeply to parse") from None
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
        if isinstance(tree, exp.Set):
            return self._set(ctx, tree, text)
        planned = Planner(self, ctx).plan(tree, bangs, text)
        errors = udfs.QueryErrors()
        # built before any schema is locked: a model function loads its model here
        udf_fns = [self._make_udf(ctx, call, errors) for call in planned.calls]
        deadline = time.monotonic() + self.warehouse.limits.timeout_s
        try:
            table, types = self._execute(ctx, planned, udf_fns, errors, deadline, planned.wide)
        except _NarrowMiss:
            # A name the parse did not see (a view over another schema, ...): bind again with
            # every schema the role may read. Nothing ran: DuckDB binds before it executes.
            table, types = self._execute(ctx, planned, udf_fns, errors, deadline, True)
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

    def _attachments(
        self, ctx: RequestContext, planned: PlannedStatement, wide: bool
    ) -> list[Attachment]:
        """The schemas a statement's instance sees: those it names (checked by the planner), or
        with ``wide`` every schema the role may read; READ_WRITE only where it writes."""
        readable = set(planned.schemas)
        if wide:
            with self.account.catalog.transaction() as s:
                readable |= schema_access(self.account.security, s, ctx).read
        return [Attachment(db, sch, write=(db, sch) in planned.writes) for db, sch in readable]

    def _execute(
        self,
        ctx: RequestContext,
        planned: PlannedStatement,
        udf_fns: list[Any],
        errors: udfs.QueryErrors,
        deadline: float,
        wide: bool,
    ) -> tuple[pa.Table | None, list[str]]:
        limits = self.warehouse.limits
        attachments = self._attachments(ctx, planned, wide)
        with self.warehouse.connect(attachments, settings=ctx.settings, deadline=deadline) as con:
            for call, fn in zip(planned.calls, udf_fns, strict=True):
                con.create_function(
                    call.udf_name,
                    fn,
                    list[Any](call.params),  # DuckDB type names (its stubs want a wider list)
                    call.return_type,
                    type=duckdb_func.PythonUDFType.ARROW,
                    null_handling=duckdb_func.FunctionNullHandling.SPECIAL,
                    side_effects=False,
                )
            expired = threading.Event()

            def cancel() -> None:
                expired.set()
                con.interrupt()

            timer = threading.Timer(max(0.0, deadline - time.monotonic()), cancel)
            timer.daemon = True
            timer.start()
            try:
                for tf in planned.partitioned_calls:
                    self._register_table_function(con, ctx, tf)
                return self._fetch(con, planned.sql)
            except duckdb.CatalogException as exc:
                if not wide and errors.first is None:
                    raise _NarrowMiss from None
                raise self._error(exc, errors, planned) from None
            except duckdb.InterruptException:
                if expired.is_set():
                    raise ResourceError(
                        f"statement cancelled: it ran past {limits.timeout_s:g} s "
                        "(warehouse_query_timeout_secs in settings.toml)",
                        code="STATEMENT_TIMEOUT",
                    ) from None
                raise NeveError("statement interrupted") from None
            except duckdb.OutOfMemoryException as exc:
                raise ResourceError(
                    f"statement needs more memory than one query may use "
                    f"({limits.memory_limit}, warehouse_query_memory_limit in settings.toml): "
                    f"{str(exc).splitlines()[0]}"
                ) from None
            except duckdb.Error as exc:
                raise self._error(exc, errors, planned) from None
            finally:
                timer.cancel()

    def _register_table_function(
        self, con: duckdb.DuckDBPyConnection, ctx: RequestContext, tf: Any
    ) -> None:
        """Evaluate a ``TABLE(f(...) OVER (PARTITION BY k))`` over its source rows (selected in
        this statement's instance) and register the answer as the table the statement reads."""
        from neve.sql import table_functions

        call = tf.call
        rows = con.sql(tf.input_sql).to_arrow_table()

        def call_service(
            table: pa.Table, *, partition_column: str, params: dict | None
        ) -> pa.Table:
            timeout = float(call.options.get("BATCH_TIMEOUT_SECS") or 300)
            return self.account.services.invoke_arrow(
                ctx,
                call.service,
                call.method,
                table,
                timeout_s=timeout,
                partition_column=partition_column,
                params=params,
            )

        def load() -> Any:
            return self.models.get(call.model_key, call.model_loader)

        result = table_functions.evaluate(tf, rows, call_service=call_service, load_model=load)
        con.register(tf.table_name, result)

    def _set(self, ctx: RequestContext, tree: exp.Set, text: str) -> SqlResult:
        """SET of a user setting: checked on a locked instance, kept for the next statements."""
        names = []
        for item in tree.expressions:
            eq = item.this if isinstance(item, exp.SetItem) else item
            target = eq.this if isinstance(eq, exp.EQ) else eq
            raw = target.name if isinstance(target, exp.Expression) else str(target)
            name = user_setting(raw)
            if name is None:
                allowed = ", ".join(USER_SETTINGS.values())
                raise PermissionDeniedError(
                    f"permission denied: setting {raw or text.strip()!r} is locked (the "
                    f"warehouse sets it per query); settings a user may SET: {allowed}"
                )
            names.append(name)
        with self.warehouse.connect([], settings=ctx.settings) as con:
            try:
                con.execute(text)
                values = {
                    n: str(con.execute("SELECT current_setting(?)", [n]).fetchall()[0][0])
                    for n in names
                }
            except duckdb.Error as exc:
                raise translate_error(exc) from None
        merged = dict(ctx.settings)
        merged.update(values)
        shown = ", ".join(f"{k} = {v}" for k, v in values.items())
        return SqlResult.status(
            f"Statement executed successfully ({shown} for the rest of this request).",
            settings=tuple(sorted(merged.items())),
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

        Needs CREATE TABLE on the schema, as every change to a schema's tables does (tables carry
        no privileges of their own in neve; see ``neve.sql.access``).
        """
        qn = self._table_target(ctx, name)
        with self.account.catalog.transaction() as s:
            schema_row = lookup.schema(s, qn.database, qn.schema)
            self.account.security.require(s, ctx, access.WRITE, schema_row)
        rows, created = self.warehouse.write_arrow(
            qn.database,
            qn.schema,
            qn.name,
            data,
            auto_create_table=auto_create_table,
            overwrite=overwrite,
        )
        return {"table": str(qn), "rows": rows, "created": created}

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
        if call.external is not None:
            target = call.external

            def send(
                _ctx: RequestContext,
                _name: str,
                _method: str,
                table: pa.Table,
                *,
                timeout_s: float = 300,
                retries: int | None = None,
                params: dict[str, Any] | None = None,
            ) -> pa.Table:
                del params  # external functions take no `name => value` arguments
                return self.external.call(target, table, timeout_s=timeout_s, retries=retries)

            return udfs.service_udf(
                caller=send,
                ctx=ctx,
                service=target.url,
                method="",
                function=call.display,
                signature=call.signature,
                options=udfs.BatchOptions.from_options(call.options),
                pool=self._pool,
                errors=errors,
            )
        if call.kind == "SERVICE":
            assert call.service is not None
            caller = self._caller()
            if call.call_params:  # `name => value` arguments ride on every batch
                caller = functools.partial(caller, params=call.call_params)
            return udfs.service_udf(
                caller=caller,
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
        if call.call_params:
            loaded = _WithParams(loaded, call.call_params)
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


class _NarrowMiss(Exception):
    """A statement bound on the schemas it names failed to find a catalog object."""


class _WithParams:
    """A loaded model whose calls carry a statement's ``name => value`` parameters."""

    def __init__(self, loaded: Any, params: dict[str, Any]) -> None:
        self._loaded, self._params = loaded, params

    def call(self, method: str, data: Any) -> Any:
        return self._loaded.call(method, data, self._params)


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


def arrow_rows(table: pa.Table) -> list[list]:
    """Rows of Python values (decimals as floats: JSON has no decimal type)."""
    if table.num_columns == 0:
        return []
    columns = [
        (col.cast(pa.float64()) if pa.types.is_decimal(col.type) else col).to_pylist()
        for col in table.columns
    ]
    return [list(r) for r in zip(*columns, strict=True)]
