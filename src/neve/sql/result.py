"""What a SQL statement answers: columns, rows, their types, context changes, an Arrow table.

Its own module so that the engine and the statement handlers both use it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa


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
