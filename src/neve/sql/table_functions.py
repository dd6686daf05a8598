"""Table functions in SQL: a partitioned method called once per partition.

    SELECT * FROM sales, TABLE(forecast_svc!forecast(store_id, day, sales)
                               OVER (PARTITION BY store_id))
    SELECT * FROM sales, TABLE(MODEL(stores, v1)!forecast(store_id, day, sales)
                               OVER (PARTITION BY store_id))

The rows come from the FROM item before ``TABLE(...)``. Planning replaces that item and the
``TABLE(...)`` by one table registered for the statement, named after the source (so
``s.store_id`` still resolves); its columns are the partition column followed by the method's
output columns. At execution the arguments and the partition key are selected from the source
in the statement's own DuckDB instance, the partitions are evaluated in Python (each partition
one call: of the service's instances, or of the model loaded in this process) and the answer is
registered as an Arrow table before the statement runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlglot import exp

from neve.errors import InvalidArgumentError, ModelExecutionError, NotSupportedError

#: The input column holding each row's partition key (the servers ignore extra columns).
PARTITION_KEY = "__NEVE_PARTITION"


@dataclass
class TableFunctionCall:
    """One ``TABLE(f(...) OVER (PARTITION BY k))`` of a statement."""

    table_name: str  # registered for the statement
    input_sql: str  # selects the arguments (signature names) and the partition key
    partition_name: str  # the output's first column
    call: Any  # the BoundCall of the function (SERVICE or MODEL)


def is_table_call(node: exp.Expression) -> bool:
    """``TABLE(<function>(...) OVER (PARTITION BY ...))`` as sqlglot parses it."""
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Anonymous):
        return False
    if str(node.this.name).upper() != "TABLE" or len(node.this.expressions) != 1:
        return False
    window = node.this.expressions[0]
    return isinstance(window, exp.Window) and isinstance(window.this, exp.Anonymous)


def extract(
    tree: exp.Expression,
    bind: Callable[[exp.Anonymous, int], Any],
    new_name: Callable[[], str],
) -> list[TableFunctionCall]:
    """Find every table-function call, bind its function (``bind(call_node, nargs)``) and
    rewrite the statement to read the registered table instead."""
    found: list[TableFunctionCall] = []
    for node in list(tree.find_all(exp.Table)):
        if not is_table_call(node):
            continue
        window: exp.Window = node.this.expressions[0]
        fn: exp.Anonymous = window.this
        shown = fn.sql(dialect="duckdb")
        select = node.find_ancestor(exp.Select)
        source = _source(select, node)
        if source is None:
            raise InvalidArgumentError(
                f"TABLE({shown} OVER (...)) reads its rows from the table before it: write "
                f"FROM <table>, TABLE({shown} OVER (PARTITION BY <column>))"
            )
        partition = list(window.args.get("partition_by") or [])
        if len(partition) != 1:
            raise NotSupportedError(
                f"TABLE({shown} OVER (...)) needs exactly one PARTITION BY expression "
                f"(got {len(partition)}); combine several keys into one, e.g. a || '-' || b"
            )
        args = [a for a in fn.expressions if not isinstance(a, exp.Kwarg)]  # not `name => value`
        call = bind(fn, len(args))
        key = partition[0]
        projections = [
            exp.alias_(arg.copy(), exp.to_identifier(name, quoted=True))
            for arg, name in zip(args, call.signature.input_names, strict=True)
        ]
        projections.append(exp.alias_(key.copy(), exp.to_identifier(PARTITION_KEY, quoted=True)))
        input_sql = exp.select(*projections).from_(source.copy()).sql(dialect="duckdb")
        name = new_name()
        alias = source.alias_or_name  # "" for a subquery without an alias
        replacement = exp.Table(
            this=exp.to_identifier(name, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier(alias)) if alias else None,
        )
        _replace_source(select, source, node, replacement)
        found.append(
            TableFunctionCall(
                table_name=name,
                input_sql=input_sql,
                partition_name=key.alias_or_name or "PARTITION",
                call=call,
            )
        )
    return found


def _source(select: exp.Select | None, node: exp.Table) -> exp.Expression | None:
    """The FROM item the table function's rows come from (the one just before it)."""
    if select is None:
        return None
    from_ = select.args.get("from_") or select.args.get("from")
    first = from_.this if from_ is not None else None
    if first is None or first is node:
        return None
    previous = first
    for join in select.args.get("joins") or []:
        if join.this is node:
            return previous
        previous = join.this
    return None


def _replace_source(
    select: exp.Select, source: exp.Expression, node: exp.Table, replacement: exp.Table
) -> None:
    joins = [j for j in select.args.get("joins") or [] if j.this is not node]
    select.set("joins", joins or None)
    source.replace(replacement)


def evaluate(
    tf: TableFunctionCall,
    rows: pa.Table,
    *,
    call_service: Callable[..., pa.Table] | None,
    load_model: Callable[[], Any] | None,
) -> pa.Table:
    """The registered table: the partition key (named after the PARTITION BY column) and the
    method's outputs, one call per partition."""
    call = tf.call
    if rows.num_rows == 0:
        out = pa.table({PARTITION_KEY: rows.column(PARTITION_KEY)})
        for feat in call.signature.outputs:
            out = out.append_column(feat.name, pa.array([], type=pa.null()))
    elif call.kind == "SERVICE":
        assert call_service is not None
        out = call_service(rows, partition_column=PARTITION_KEY, params=call.call_params or None)
    else:
        assert load_model is not None
        loaded = load_model()
        frame = loaded.call_partitioned(
            call.method, rows.to_pandas(), PARTITION_KEY, call.call_params or None
        )
        out = pa.Table.from_pandas(frame, preserve_index=False)
    if PARTITION_KEY not in out.column_names:
        raise ModelExecutionError(
            f"table function {call.display} answered without its partition column"
        )
    names = list(out.column_names)
    if tf.partition_name in names or tf.partition_name.upper() in map(str.upper, names):
        # The method returns the key itself: keep its column, drop the added one.
        return out.drop_columns([PARTITION_KEY])
    names[names.index(PARTITION_KEY)] = tf.partition_name
    return out.rename_columns(names)
