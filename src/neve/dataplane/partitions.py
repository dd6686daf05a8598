"""Rows of a table function (a partitioned method) cut by partition, and answers put back.

One request per value of the partition column (NULL is a value), in the order each value first
appears, rows keeping their order; each answer gets the partition's value in front unless it
carries the column itself. Used by every sender of partitioned rows: ``ServiceManager``'s
invoker (SQL, the control plane's invoke route) and the client's ``mv.run(...,
partition_column=)``, so they cut and join alike.
"""

from __future__ import annotations

import pyarrow as pa

from neve.errors import InvalidArgumentError


def partition_column_of(table: pa.Table, column: str) -> str:
    """The table's name for ``column`` (exact, else case-insensitive), or a clear error."""
    if column in table.column_names:
        return column
    by_upper = {name.upper(): name for name in table.column_names}
    found = by_upper.get(column.upper())
    if found is None:
        raise InvalidArgumentError(
            f"partition column {column!r} is not among the input columns {table.column_names}"
        )
    return found


def split(table: pa.Table, column: str) -> list[pa.Table]:
    """One table per partition of ``column`` (already the table's own name for it)."""
    import pyarrow.compute as pc

    keys = table.column(column)
    return [
        table.filter(pc.equal(keys, value) if value.is_valid else pc.is_null(keys))
        for value in pc.unique(keys)
    ]


def with_partition(answer: pa.Table, partition: pa.Table, column: str) -> pa.Table:
    """A partition's answer with the partition's value in front (unless it has the column)."""
    if column in answer.column_names:
        return answer
    key = partition.column(column)
    return answer.add_column(0, column, pa.repeat(key[0], answer.num_rows).cast(key.type))


def join(parts: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(parts, promote_options="default") if parts else pa.table({})
