"""What a warehouse query may use: per-query limits from settings, and the settings users may SET.

Every warehouse statement runs on its own DuckDB instance (see ``neve.sql.warehouse``), so the
instance's ``threads`` and ``memory_limit`` are that one query's limits, and its time limit is
enforced by interrupting it. The limits are account settings (``[warehouse]`` in ``neve.config``):

- ``warehouse_query_threads``: DuckDB threads of one query (default ``max(4, cpus)``: service
  functions wait on HTTP with the GIL released, so more threads than cores keep batches in flight)
- ``warehouse_query_memory_limit``: DuckDB memory limit of one query (default ``"4GB"``; DuckDB
  syntax, e.g. ``"512MB"``)
- ``warehouse_query_timeout_secs``: wall-clock limit of one statement, waiting for its tables
  included (default 3600); past it the query is cancelled

Configuration is locked on every query instance; the settings below are the only ones a user may
change with ``SET`` (they shape results, not resources or access). A ``SET`` lasts for the
statements after it in the same request.
"""

from __future__ import annotations

from dataclasses import dataclass

from neve.config import WarehouseSettings

#: DuckDB settings a user may change (lower-case name -> DuckDB's name).
USER_SETTINGS: dict[str, str] = {
    name.lower(): name
    for name in (
        "TimeZone",
        "Calendar",
        "default_order",
        "default_null_order",
        "default_collation",
        "integer_division",
        "errors_as_json",
        "order_by_non_integer_literal",
        "scalar_subquery_error_on_multiple_rows",
        "ieee_floating_point_ops",
    )
}


@dataclass(frozen=True)
class QueryLimits:
    threads: int
    memory_limit: str
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: WarehouseSettings | None = None) -> QueryLimits:
        """The limits of the ``[warehouse]`` settings (checked where they are declared)."""
        settings = settings or WarehouseSettings()
        return cls(
            threads=settings.query_threads,
            memory_limit=settings.query_memory_limit.strip(),
            timeout_s=settings.query_timeout_secs,
        )


def user_setting(name: str) -> str | None:
    """DuckDB's name of a setting users may change, or None."""
    return USER_SETTINGS.get(name.strip().strip('"').lower())
