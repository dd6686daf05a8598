"""Table functions in SQL: a partitioned method called once per partition.

    SELECT * FROM sales, TABLE(forecast_svc!forecast(store_id, day, sales)
                               OVER (PARTITION BY store_id))
    SELECT * FROM sales s JOIN stores USING (store_id),
                  TABLE(MODEL(stores, v1)!forecast(store_id, day, sales)
                        OVER (PARTITION BY store_id, region ORDER BY day)) f
    SELECT * FROM TABLE(forecast_svc!forecast(1, 0, 10.5))          -- constants: one row

The rows come from the FROM items before ``TABLE(...)`` (a table, a sub-query, a CTE, joins
with their conditions); with none, the arguments must be constants and make one row.
``PARTITION BY`` takes any number of expressions (a partition is one distinct combination of
their values, NULL included); without it (``OVER ()``, or no ``OVER``) all rows are one
partition, as ``mv.run`` without ``partition_column``. ``ORDER BY`` in the ``OVER`` clause
orders the rows within each partition; a window frame is refused.

Planning replaces those FROM items and the ``TABLE(...)`` by one table registered for the
statement, aliased as the ``TABLE(...)`` is (else as the single FROM item before it, so
``s.store_id`` still resolves); columns qualified by a replaced item's name are pointed at it.
Its columns are the partition columns (named after the PARTITION BY expressions) followed by
the method's output columns. At execution the arguments and the partition keys are selected in
the statement's own DuckDB instance, each row gets the number of its partition, the partitions
are evaluated in Python (each partition one call: of the service's instances, or of the model
loaded in this process) and the answer is registered as an Arrow table before the statement
runs. Table functions are extracted innermost first, so one may read another's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp
from sqlglot.errors import ParseError

from neve.errors import InvalidArgumentError, ModelExecutionError, NotSupportedError

#: The input column holding each row's partition number (the servers ignore extra columns).
PARTITION_KEY = "__NEVE_PARTITION"
#: Input columns holding the PARTITION BY values (``__NEVE_KEY_0``, ...); never sent.
KEY_PREFIX = "__NEVE_KEY_"

# sqlglot's argument names of a SELECT's FROM and WITH (``from``/``with`` before 26).
_FROM = "from_" if "from_" in exp.Select.arg_types else "from"
_WITH = "with_" if "with_" in exp.Select.arg_types else "with"


@dataclass
class TableFunctionCall:
    """One ``TABLE(f(...) [OVER ([PARTITION BY k, ...] [ORDER BY ...])])`` of a statement."""

    table_name: str  # registered for the statement
    input_sql: str  # selects the arguments (signature names) and the partition keys
    call: Any  # the BoundCall of the function (SERVICE or MODEL)
    #: the output's first columns, one per PARTITION BY expression (none: one partition)
    partition_names: list[str] = field(default_factory=list)


def table_call(node: exp.Expression) -> tuple[exp.Anonymous, exp.Window | None] | None:
    """The function and its ``OVER`` clause when ``node`` is ``TABLE(<function>(...) [OVER
    (...)])`` as sqlglot parses it (the function possibly qualified: ``db.s.f(...)``)."""
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Anonymous):
        return None
    if str(node.this.name).upper() != "TABLE" or len(node.this.expressions) != 1:
        return None
    inner = node.this.expressions[0]
    window = inner if isinstance(inner, exp.Window) else None
    fn = window.this if window is not None else inner
    while isinstance(fn, exp.Dot):
        fn = fn.expression
    if not isinstance(fn, exp.Anonymous):
        return None
    return fn, window


def is_table_call(node: exp.Expression) -> bool:
    return table_call(node) is not None


def extract(
    tree: exp.Expression,
    bind: Callable[[exp.Anonymous, int], Any],
    new_name: Callable[[], str],
) -> list[TableFunctionCall]:
    """Find every table-function call, bind its function (``bind(call_node, nargs)``) and
    rewrite the statement to read the registered table instead. Innermost calls come first
    (a call inside a sub-query or CTE that another call reads is evaluated before it); calls
    of one FROM clause come left to right."""
    order = {id(n): i for i, n in enumerate(tree.walk(bfs=False))}
    nodes = [n for n in tree.find_all(exp.Table) if is_table_call(n)]
    nodes.sort(key=lambda n: (-_depth(n), order[id(n)]))
    return [_extract_one(node, bind, new_name) for node in nodes]


def _extract_one(
    node: exp.Table,
    bind: Callable[[exp.Anonymous, int], Any],
    new_name: Callable[[], str],
) -> TableFunctionCall:
    found = table_call(node)
    assert found is not None
    fn, window = found
    args = [a for a in fn.expressions if not isinstance(a, exp.Kwarg)]  # not `name => value`
    call = bind(fn, len(args))
    shown = f"TABLE({call.display}(...){' OVER (...)' if window is not None else ''})"
    partition = list(window.args.get("partition_by") or []) if window is not None else []
    order = window.args.get("order") if window is not None else None
    if window is not None and window.args.get("spec") is not None:
        raise NotSupportedError(
            f"{shown}: a table function's OVER clause takes PARTITION BY and ORDER BY only, "
            "not a window frame (ROWS / RANGE ...)"
        )
    select = node.find_ancestor(exp.Select)
    if select is None:
        raise NotSupportedError(f"{shown} is a FROM item of a SELECT; it cannot stand here")
    sources, joins_before, joins_after = _sources(select, node)
    if not sources:
        columns = sorted(
            {c.sql(dialect="duckdb") for e in [*args, *partition, order] for c in _columns(e)}
        )
        if columns:
            raise InvalidArgumentError(
                f"{shown} reads column(s) {', '.join(columns)} but no FROM item comes before "
                f"it to give them: write FROM <table or (sub-query)>, {shown}; with no table "
                "before it, the arguments must be constants (they make one row)"
            )

    # Each argument in its input's type, as DuckDB casts a scalar function's (a constant 2.5
    # is a DECIMAL, a service wants the DOUBLE its signature says).
    types = list(getattr(call, "params", None) or [None] * len(args))
    projections: list[exp.Expr] = [
        exp.alias_(_typed(arg.copy(), duck), exp.to_identifier(name, quoted=True))
        for arg, name, duck in zip(args, call.signature.input_names, types, strict=True)
    ]
    projections += [
        exp.alias_(key.copy(), exp.to_identifier(f"{KEY_PREFIX}{i}", quoted=True))
        for i, key in enumerate(partition)
    ]
    query = exp.select(*projections)
    if sources:
        query = query.from_(sources[0].copy())
        query.set("joins", [join.copy() for join in joins_before] or None)
    if order is not None:
        query = query.order_by(*(o.copy() for o in order.expressions))
    with_ = _visible_ctes(node)
    if with_ is not None:
        query.set(_WITH, with_)
    input_sql = query.sql(dialect="duckdb")

    name = new_name()
    alias = node.args.get("alias")
    if alias is None and len(sources) == 1 and sources[0].alias_or_name:
        alias = exp.TableAlias(this=exp.to_identifier(sources[0].alias_or_name))
    replacement = exp.Table(this=exp.to_identifier(name, quoted=True), alias=alias)
    replaced = {s.alias_or_name.upper() for s in sources if s.alias_or_name}
    if sources:
        select.set(_FROM, exp.From(this=replacement))
        select.set("joins", joins_after or None)
    else:
        node.replace(replacement)
    if replaced:
        qualifier = alias.name if alias is not None else name
        _requalify(select, replaced, qualifier, quoted=alias is None)
    return TableFunctionCall(
        table_name=name,
        input_sql=input_sql,
        call=call,
        partition_names=_partition_names(partition),
    )


def _typed(arg: exp.Expression, duck_type: str | None) -> exp.Expression:
    if not duck_type:
        return arg
    try:
        return exp.cast(arg, exp.DataType.build(duck_type, dialect="duckdb"))
    except (ParseError, ValueError):  # a type sqlglot cannot spell: DuckDB converts it
        return arg


def _depth(node: exp.Expr) -> int:
    depth = 0
    while node.parent is not None:
        node = node.parent
        depth += 1
    return depth


def _columns(node: exp.Expression | None) -> list[exp.Column]:
    """Column references of ``node`` outside any sub-query of it."""
    out: list[exp.Column] = []
    for column in node.find_all(exp.Column) if node is not None else []:
        up: exp.Expr | None = column
        while up is not None and up is not node and not isinstance(up, exp.Query):
            up = up.parent
        if up is node:
            out.append(column)
    return out


def _sources(
    select: exp.Select, node: exp.Table
) -> tuple[list[exp.Expression], list[exp.Join], list[exp.Join]]:
    """The FROM items before the table function (the first one and the joined ones), the
    joins that bring the joined ones (with their conditions) and the joins after it."""
    from_ = select.args.get(_FROM)
    first = from_.this if from_ is not None else None
    joins = list(select.args.get("joins") or [])
    if first is None or first is node:
        return [], [], joins
    for i, join in enumerate(joins):
        if join.this is node:
            before = joins[:i]
            return [first, *(j.this for j in before)], before, joins[i + 1 :]
    raise NotSupportedError(
        f"{node.sql(dialect='duckdb')}: a table function is an item of its SELECT's FROM clause"
    )


def _visible_ctes(node: exp.Expr) -> exp.With | None:
    """The CTEs the table function's FROM items may name: those of every query around it
    (outer ones first); of a WITH whose CTE holds the call, only the CTEs before that one."""
    groups: list[list[exp.Expression]] = []
    recursive = False
    below: exp.Expr = node
    holder = node.parent
    while holder is not None:
        if isinstance(holder, exp.With):
            # ``below`` is the CTE around the call: only those before it are visible.
            index = next(i for i, c in enumerate(holder.expressions) if c is below)
            groups.append(list(holder.expressions[:index]))
            recursive = recursive or bool(holder.args.get("recursive"))
        else:
            with_ = holder.args.get(_WITH)
            if isinstance(with_, exp.With) and with_ is not below:
                groups.append(list(with_.expressions))
                recursive = recursive or bool(with_.args.get("recursive"))
        below, holder = holder, holder.parent
    ctes = [cte.copy() for group in reversed(groups) for cte in group]
    if not ctes:
        return None
    return exp.With(expressions=ctes, recursive=recursive or None)


def _requalify(select: exp.Select, old: set[str], new: str, *, quoted: bool) -> None:
    """Point ``old.col`` references of this SELECT (not of sub-queries) at ``new``."""
    for column in list(select.find_all(exp.Column)):
        if column.table.upper() in old and column.find_ancestor(exp.Select) is select:
            column.set("table", exp.to_identifier(new, quoted=quoted))


def _partition_names(partition: list[exp.Expression]) -> list[str]:
    """Output names of the partition columns: a column's name, else PARTITION (PARTITION_1,
    ... for several), made unique."""
    names: list[str] = []
    for i, key in enumerate(partition):
        base = key.alias_or_name if isinstance(key, exp.Column) else ""
        base = base or ("PARTITION" if len(partition) == 1 else f"PARTITION_{i + 1}")
        name, n = base, 1
        while name.upper() in {x.upper() for x in names}:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def partition_numbers(keys: list[pa.ChunkedArray | pa.Array], num_rows: int) -> np.ndarray:
    """Each row's partition: 0, 1, ... in the order partitions first appear; a partition is
    one distinct combination of the key values (NULL is a value)."""
    ids = np.zeros(num_rows, dtype=np.int64)
    for key in keys:
        codes, size = _codes(key)
        ids = _first_seen(ids * size + codes)
    return ids


def _codes(key: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    array = key.combine_chunks() if isinstance(key, pa.ChunkedArray) else key
    try:
        encoded = pc.dictionary_encode(array, null_encoding="encode")
    except pa.ArrowNotImplementedError:  # nested values (lists, structs): by their text
        encoded = pc.dictionary_encode(
            pa.array([repr(v) for v in array.to_pylist()]), null_encoding="encode"
        )
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, max(1, len(encoded.dictionary))


def _first_seen(values: np.ndarray) -> np.ndarray:
    """``values`` renumbered 0, 1, ... in the order each value first appears."""
    if len(values) == 0:
        return values
    _unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int64)
    return rank[inverse.reshape(-1)]


def evaluate(
    tf: TableFunctionCall,
    rows: pa.Table,
    *,
    call_service: Callable[..., pa.Table] | None,
    load_model: Callable[[], Any] | None,
) -> pa.Table:
    """The registered table: the partition columns (named after the PARTITION BY
    expressions) and the method's outputs, one call per partition."""
    call = tf.call
    keys = [rows.column(f"{KEY_PREFIX}{i}") for i in range(len(tf.partition_names))]
    ids = partition_numbers(keys, rows.num_rows)
    send = rows.drop_columns([f"{KEY_PREFIX}{i}" for i in range(len(keys))])
    send = send.append_column(PARTITION_KEY, pa.array(ids, type=pa.int64()))
    if rows.num_rows == 0:
        out = pa.table({PARTITION_KEY: pa.array([], type=pa.int64())})
        for feat in call.signature.outputs:
            out = out.append_column(feat.name, pa.array([], type=pa.null()))
    elif call.kind == "SERVICE":
        assert call_service is not None
        out = call_service(send, partition_column=PARTITION_KEY, params=call.call_params or None)
    else:
        assert load_model is not None
        loaded = load_model()
        frame = loaded.call_partitioned(
            call.method, send.to_pandas(), PARTITION_KEY, call.call_params or None
        )
        out = pa.Table.from_pandas(frame, preserve_index=False)
    if PARTITION_KEY not in out.column_names:
        raise ModelExecutionError(
            f"table function {call.display} answered without its partition column"
        )
    answered = out.column(PARTITION_KEY).to_numpy(zero_copy_only=False).astype(np.int64)
    _numbers, first = np.unique(ids, return_index=True)  # the first row of each partition
    where = pa.array(first[answered], type=pa.int64())
    outputs = out.drop_columns([PARTITION_KEY])
    taken = {name.upper() for name in outputs.column_names}
    for name, key in reversed(list(zip(tf.partition_names, keys, strict=True))):
        if name.upper() in taken:
            continue  # the method returns the key itself: keep its column
        outputs = outputs.add_column(0, name, key.take(where))
    return outputs
