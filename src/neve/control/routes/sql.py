"""REST routes of the SQL surface.

- ``POST /api/v1/sql`` body ``{"sql": "...", "context": {"role"?, "database"?, "schema"?}}``
  (``context`` optional: the client's current role/database/schema, applied before the script)
  -> ``{"columns": [...], "types": [...], "rows": [[...], ...], "context": {"role", "database",
  "schema"}, "stats": {"batches", "rows"}}``, the context being the one after the script's USE
  statements. With ``?format=arrow`` a query answers an Arrow IPC stream instead
  (``application/vnd.apache.arrow.stream``) and the context comes in the ``X-Neve-Context``
  header (JSON).
- ``POST /api/v1/sql/tables/write?table=NAME&auto_create_table=true&overwrite=false`` with an
  Arrow IPC stream body (or JSON ``{"table", "records": [...]}`` / ``{"table", "columns",
  "rows"}``; ``auto_create_table``/``overwrite`` may be in the JSON too) -> ``{"table": qualified
  name, "rows": n, "created": bool}``. ``context`` may be sent as the ``X-Neve-Context`` header.
- ``GET /api/v1/sql/tables/read?table=NAME[&format=arrow]`` -> the table as Arrow IPC, or as
  ``{"columns", "types", "rows"}``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
from starlette.responses import Response
from starlette.routing import Route

from neve.context import RequestContext
from neve.control.routes._base import Call, endpoint
from neve.errors import InvalidArgumentError

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _context(call: Call, override: Any) -> RequestContext:
    ctx = call.ctx
    if override is None:
        header = call.request.headers.get("x-neve-context")
        if header:
            try:
                override = orjson.loads(header)
            except orjson.JSONDecodeError:
                raise InvalidArgumentError("X-Neve-Context header is not valid JSON") from None
    if override is None:
        return ctx
    if not isinstance(override, dict):
        raise InvalidArgumentError("context must be an object {role, database, schema}")
    for key in ("role", "database", "schema"):
        if override.get(key) is not None and not isinstance(override[key], str):
            raise InvalidArgumentError(
                f"context.{key} must be a name (a string), got {type(override[key]).__name__}"
            )
    changes = {k: override[k] or None for k in ("database", "schema") if k in override}
    if changes:
        ctx = ctx.with_(**changes)
    role = override.get("role")
    if role and role != ctx.role:
        ctx = call.account.security.use_role(ctx, role)  # only a role granted to the user
    return ctx


def _context_dict(ctx: RequestContext) -> dict[str, Any]:
    return {"role": ctx.role, "database": ctx.database, "schema": ctx.schema}


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _wants_arrow(call: Call) -> bool:
    return call.query.get(
        "format", ""
    ).lower() == "arrow" or ARROW_STREAM in call.request.headers.get("accept", "")


@endpoint
def run_sql(call: Call) -> Any:
    body = call.body if isinstance(call.body, dict) else None
    if body is None or not isinstance(body.get("sql"), str):
        raise InvalidArgumentError('request body must be {"sql": "<statement>"}')
    ctx = _context(call, body.get("context"))
    result = call.account.sql.execute(ctx, body["sql"])
    after = ctx.with_(**result.ctx_changes) if result.ctx_changes else ctx
    if _wants_arrow(call) and result.arrow is not None:
        return Response(
            arrow_bytes(result.arrow),
            media_type=ARROW_STREAM,
            headers={"X-Neve-Context": orjson.dumps(_context_dict(after)).decode()},
        )
    return {
        "columns": result.columns,
        "types": result.types,
        "rows": result.rows,
        "context": _context_dict(after),
        "stats": result.stats,
    }


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


@endpoint(raw_body=True)
def write_table(call: Call) -> Any:
    content_type = call.request.headers.get("content-type", "")
    params: dict[str, Any] = dict(call.query)
    if ARROW_STREAM in content_type or call.query.get("format") == "arrow":
        try:
            data = ipc.open_stream(call.raw).read_all()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InvalidArgumentError(f"request body is not an Arrow IPC stream: {exc}") from None
        ctx = _context(call, None)
    else:
        try:
            body = orjson.loads(call.raw) if call.raw else None
        except orjson.JSONDecodeError as exc:
            raise InvalidArgumentError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError(
                'body must be an Arrow IPC stream or {"table", "records": [...]}'
            )
        params.update({k: v for k, v in body.items() if k not in ("records", "rows")})
        ctx = _context(call, body.get("context"))
        data = _json_table(body)
    table = params.get("table")
    if not isinstance(table, str) or not table:
        raise InvalidArgumentError("the table name is required (?table=NAME)")
    return call.account.sql.write_table(
        ctx,
        table,
        data,
        auto_create_table=_flag(params.get("auto_create_table"), True),
        overwrite=_flag(params.get("overwrite"), False),
    )


def _json_table(body: dict[str, Any]) -> pa.Table:
    """The table of a JSON write body, or a 400 naming what is wrong with it."""
    records: list[Any] | None = None
    columns: list[str] = []
    rows: list[Any] = []
    if "records" in body:
        records = body["records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InvalidArgumentError('"records" must be a list of objects {"column": value}')
    elif "columns" in body and "rows" in body:
        columns, rows = body["columns"], body["rows"]
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InvalidArgumentError('"columns" must be a list of column names (strings)')
        if len(set(columns)) != len(columns):
            raise InvalidArgumentError('"columns" names a column twice')
        if not isinstance(rows, list):
            raise InvalidArgumentError('"rows" must be a list of rows (lists of values)')
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise InvalidArgumentError(
                    f'"rows"[{i}] must be a list of {len(columns)} value(s), one per column'
                )
    else:
        raise InvalidArgumentError('JSON body needs "records" or "columns" and "rows"')
    try:
        if records is not None:
            data = pa.Table.from_pylist(records)
        else:
            values = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
            data = pa.table({c: list(v) for c, v in zip(columns, values, strict=True)})
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"the rows cannot form a table: {exc}") from None
    if data.num_columns == 0:
        raise InvalidArgumentError("the table to write has no columns")
    return data


@endpoint
def read_table(call: Call) -> Any:
    table = call.query.get("table")
    if not table:
        raise InvalidArgumentError("the table name is required (?table=NAME)")
    ctx = _context(call, None)
    data = call.account.sql.read_table(ctx, table)
    if _wants_arrow(call):
        return Response(arrow_bytes(data), media_type=ARROW_STREAM)
    from neve.sql.engine import arrow_rows

    return {
        "columns": data.column_names,
        "types": [str(t) for t in data.schema.types],
        "rows": arrow_rows(data),
    }


routes = [
    Route("/api/v1/sql", run_sql, methods=["POST"]),
    Route("/api/v1/sql/tables/write", write_table, methods=["POST"]),
    Route("/api/v1/sql/tables/read", read_table, methods=["GET"]),
]
