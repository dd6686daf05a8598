"""Warehouse helpers of the client session: write_pandas, create_dataframe, table.

Functions taking a ``Session`` (the lead attaches them as methods)::

    write_pandas(session, df, "features", auto_create_table=True, overwrite=False) -> Table
    create_dataframe(session, df, table_name=None) -> Table
    table(session, "ml.public.features") -> Table
    sql_arrow(session, "SELECT ...") -> pyarrow.Table   (a query, transferred as Arrow IPC)

A ``Table`` names a warehouse table: ``to_pandas()``, ``to_arrow()``, ``collect()`` (list of
row tuples), ``count()``, ``drop()``, and ``name`` (fully qualified, usable in SQL). Data moves
as Arrow IPC streams, so column types survive the trip.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _transport(session: Any) -> Any:
    for attr in ("transport", "_transport"):
        tr = getattr(session, attr, None)
        if tr is not None:
            return tr
    raise TypeError(f"{type(session).__name__} has no transport to the control plane")


def _context(session: Any) -> dict[str, Any]:
    """The session's current role/database/schema, sent with every request."""
    source = getattr(session, "context", None)
    if callable(source):
        source = source()
    if isinstance(source, dict):
        return {k: source.get(k) for k in ("role", "database", "schema") if source.get(k)}
    out: dict[str, Any] = {}
    for key in ("role", "database", "schema"):
        value = getattr(source, key, None) if source is not None else None
        if value is None:
            value = getattr(session, key, None)
            if value is None:
                value = getattr(session, f"current_{key}", None)
            if callable(value):
                value = value()
        if value:
            out[key] = value
    return out


def _context_header(session: Any) -> dict[str, str]:
    return {"X-Neve-Context": orjson.dumps(_context(session)).decode()}


def _to_arrow(df: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(df, pa.Table):
        return df
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    return pa.Table.from_pandas(df, preserve_index=False)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class Table:
    """A warehouse table seen from the client."""

    def __init__(self, session: Any, name: str) -> None:
        self.session = session
        self.name = name

    def __repr__(self) -> str:
        return f"Table({self.name})"

    def to_arrow(self) -> pa.Table:
        raw = _transport(self.session).call(
            "GET",
            "/api/v1/sql/tables/read",
            params={"table": self.name, "format": "arrow"},
            headers=_context_header(self.session),
            raw=True,
        )
        return ipc.open_stream(raw).read_all()

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def collect(self) -> list[tuple]:
        data = self.to_arrow()
        columns = [c.to_pylist() for c in data.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def count(self) -> int:
        body = _run(self.session, f"SELECT count(*) FROM {self.name}")
        return int(body["rows"][0][0])

    def drop(self) -> None:
        _run(self.session, f"DROP TABLE IF EXISTS {self.name}")


def _run(session: Any, text: str) -> dict:
    return _transport(session).call(
        "POST", "/api/v1/sql", json={"sql": text, "context": _context(session)}
    )


def write_pandas(
    session: Any,
    df: pd.DataFrame | pa.Table,
    table_name: str,
    *,
    auto_create_table: bool = True,
    overwrite: bool = False,
) -> Table:
    """Append ``df`` to warehouse table ``table_name`` (created from df's columns if missing)."""
    body = _to_arrow(df)
    answer = _transport(session).call(
        "POST",
        "/api/v1/sql/tables/write",
        params={
            "table": table_name,
            "auto_create_table": str(bool(auto_create_table)).lower(),
            "overwrite": str(bool(overwrite)).lower(),
            "format": "arrow",
        },
        content=_ipc(body),
        headers={"Content-Type": ARROW_STREAM, **_context_header(session)},
    )
    return Table(session, answer["table"])


def create_dataframe(
    session: Any, df: pd.DataFrame | pa.Table, *, table_name: str | None = None
) -> Table:
    """Upload ``df`` as a new warehouse table (named ``NEVE_DF_<hex>`` unless given)."""
    name = table_name or f"NEVE_DF_{uuid.uuid4().hex[:12].upper()}"
    return write_pandas(session, df, name, auto_create_table=True, overwrite=True)


def table(session: Any, name: str) -> Table:
    return Table(session, name)


def sql_arrow(session: Any, text: str) -> pa.Table:
    """Run a query and transfer its result as Arrow (for large results)."""
    raw = _transport(session).call(
        "POST",
        "/api/v1/sql",
        json={"sql": text, "context": _context(session)},
        params={"format": "arrow"},
        raw=True,
    )
    if raw[:1] == b"{":  # not a query: the JSON status answer
        body = orjson.loads(raw)
        return pa.table({c: [r[i] for r in body["rows"]] for i, c in enumerate(body["columns"])})
    return ipc.open_stream(raw).read_all()
