"""The SQL worksheet: run a script as the viewer's role, show the result grid or the error with
its position (a syntax error's line and column point into the text)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from neve.console.views import Viewer
from neve.errors import NeveError, SqlSyntaxError
from neve.identifiers import ident

#: Rows the grid shows (the rest is counted, not sent to the browser).
MAX_GRID_ROWS = 1000


def worksheet(viewer: Viewer) -> Response:
    form = viewer.form
    text = form.get("sql", "") if viewer.request.method == "POST" else ""
    database = form.get("database", "").strip() or None
    schema = form.get("schema", "").strip() or None
    values: dict[str, Any] = {"sql": text, "result": None, "error": None}
    if text.strip():
        ctx = viewer.ctx
        try:
            ctx = ctx.with_(
                database=ident(database, kind="database name") if database else None,
                schema=ident(schema, kind="schema name") if schema else None,
            )
            result = viewer.account.sql.execute(ctx, text)
            changes = result.ctx_changes
            database = changes.get("database", database)
            schema = changes.get("schema", schema)
            values["result"] = {
                "columns": result.columns,
                "types": result.types,
                "rows": result.rows[:MAX_GRID_ROWS],
                "total": len(result.rows),
            }
        except NeveError as err:
            values["error"] = _error(err, text)
    status = 400 if values["error"] else 200
    return viewer.page(
        "sql.html", http_status=status, database=database or "", schema=schema or "", **values
    )


def _error(err: NeveError, text: str) -> dict[str, Any]:
    """The error, and for a positioned one the line it is on with a caret under the column."""
    out: dict[str, Any] = {"message": err.message, "code": err.code, "line": None}
    if isinstance(err, SqlSyntaxError) and err.line is not None:
        lines = text.splitlines() or [""]
        index = min(max(err.line, 1), len(lines)) - 1
        col = max(int(err.col or 1), 1)
        out.update(line=err.line, col=col, source=lines[index], caret=" " * (col - 1) + "^")
    return out
