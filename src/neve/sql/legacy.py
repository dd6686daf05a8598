"""Opening an account made when the warehouse was one DuckDB file (``<home>/warehouse.duckdb``).

That file held every neve schema ``DB.SCHEMA`` as the DuckDB schema ``"DB__SCHEMA"``. The first
time the account opens, each of those schemas is copied into its own file (tables with their
rows, then views, whose text keeps resolving because a schema is attached under the same
``"DB__SCHEMA"`` name), and the old file is renamed ``warehouse.duckdb.migrated`` (kept, not
deleted). If copying fails, the files made so far are removed and the old file stays in place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import duckdb

from neve.errors import NeveError
from neve.sql.duck_names import duck_ident, neve_schema

log = logging.getLogger("neve.sql")

MIGRATED_SUFFIX = ".migrated"
_VIEW_HEAD = re.compile(r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s", re.IGNORECASE)


def _view_body(sql: str, head: str) -> str:
    """The SELECT of a stored ``CREATE VIEW <head> [(cols)] AS <select>`` statement."""
    rest = sql[_VIEW_HEAD.match(sql).end() :] if _VIEW_HEAD.match(sql) else sql  # type: ignore[union-attr]
    at = rest.find(head)
    rest = rest[at + len(head) :] if at >= 0 else rest
    body = rest[rest.upper().index(" AS ") + 4 :]
    return body.strip().rstrip(";")


def migrate_single_file(legacy: Path, root: Path, schema_path: Callable[[str, str], Path]) -> None:
    """Split ``legacy`` into one file per schema under ``root`` (``schema_path(db, schema)``)."""

    def lit(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    created: list[Path] = []
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {lit(str(legacy))} AS __legacy (READ_ONLY)")
        schemas = [
            name
            for (name,) in con.execute(
                "SELECT schema_name FROM duckdb_schemas() WHERE database_name = '__legacy'"
            ).fetchall()
            if neve_schema(name) is not None
        ]
        for duck in schemas:
            db, sch = neve_schema(duck)  # type: ignore[misc]
            path = schema_path(db, sch)
            if path.exists():
                raise NeveError(f"{path} exists already")
            path.parent.mkdir(parents=True, exist_ok=True)
            created.append(path)
            con.execute(f"ATTACH {lit(str(path))} AS {duck_ident(duck)}")
        for duck, table in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = "
            "'__legacy' ORDER BY 1, 2"
        ).fetchall():
            if duck not in schemas:
                continue
            con.execute(
                f"CREATE TABLE {duck_ident(duck)}.main.{duck_ident(table)} AS "
                f"SELECT * FROM __legacy.{duck_ident(duck)}.{duck_ident(table)}"
            )
        for duck, view, sql in con.execute(
            "SELECT schema_name, view_name, sql FROM duckdb_views() WHERE database_name = "
            "'__legacy' AND NOT internal ORDER BY 1, 2"
        ).fetchall():
            if duck not in schemas:
                continue
            body = _view_body(sql, view)
            con.execute(f"CREATE VIEW {duck_ident(duck)}.main.{duck_ident(view)} AS {body}")
    except (duckdb.Error, NeveError, ValueError) as exc:
        con.close()
        for path in created:
            for f in (path, path.with_name(path.name + ".wal")):
                f.unlink(missing_ok=True)
        raise NeveError(
            f"the warehouse file {legacy} could not be split into one file per schema ({exc}); "
            "it was left as it is"
        ) from None
    con.close()
    legacy.rename(legacy.with_name(legacy.name + MIGRATED_SUFFIX))
    log.info("warehouse %s split into %d schema files under %s", legacy, len(created), root)
