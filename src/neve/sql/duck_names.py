"""How neve schemas are named inside DuckDB: one attached catalog ``<DATABASE>__<SCHEMA>`` each."""

from __future__ import annotations

from neve.errors import InvalidIdentifierError

SEP = "__"  # DuckDB catalog name = <DATABASE>__<SCHEMA>


def duck_schema(database: str, schema: str) -> str:
    """The DuckDB catalog name under which neve schema ``database.schema`` is attached."""
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
