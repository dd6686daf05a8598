"""``mv.run(..., service_name=...)`` with method parameters or a partitioned method.

The rows go through the data plane (an ingress proxy, or the instances) as Arrow IPC streams,
with ``params`` in each request's query string: each partition of ``partition_column`` in one
request (``neve.dataplane.partitions``), or, with parameters only, the usual row batches; several
requests at once. Where the control plane offers no look-up they go to its invoke route instead.
A partitioned method's answer is the partition column followed by the method's output rows;
without ``partition_column`` all rows are one partition (one instance call) and the answer is
the method's output rows, as in this process. Any other method's answer is the input columns
followed by the outputs, row for row, as ``run``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote as url_quote

import pandas as pd

from neve.errors import InvalidArgumentError, SignatureError

DEFAULT_TIMEOUT_S = 300.0


def run_on_service(
    mv: Any,
    X: Any,
    *,
    service_name: str,
    function_name: str | None,
    partition_column: str | None,
    params: dict[str, Any] | None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """The service form of ``ModelVersion.run`` for parameters and table functions."""
    import pyarrow as pa

    from neve.client.services import _pick_method, service_path
    from neve.models.signature import ModelSignature, column_lookup, to_dataframe
    from neve.server import arrow_ipc

    qn = mv._service_qn(service_name)
    path = service_path(qn)
    methods = mv._client.call("GET", path + "/methods")
    method = _pick_method(methods, function_name, qn)
    signature = ModelSignature.from_dict(methods[method])
    partitioned = _is_partitioned(mv, method)
    if partition_column is not None and not partitioned:
        raise InvalidArgumentError(
            f"function {method!r} is not partitioned: partition_column applies to methods "
            "marked @neve.partitioned_api"
        )
    try:
        data = X if isinstance(X, pd.DataFrame) else to_dataframe(X)
    except SignatureError as exc:
        raise SignatureError(f"{mv._label}: {exc.message}") from None
    find = column_lookup(data.columns)
    wanted = list(signature.input_names)
    if partition_column is not None and find(partition_column) is None:
        raise SignatureError(
            f"{mv._label}: partition_column {partition_column!r} is not a column of the input; "
            f"columns: {[str(c) for c in data.columns]}"
        )
    if partition_column is not None and partition_column not in wanted:
        wanted.append(partition_column)
    arrays, names = [], []
    for name in wanted:
        src = find(name)
        if src is None:
            raise SignatureError(
                f"{mv._label}: input is missing column {name!r}; expected "
                f"{signature.input_names}, got {[str(c) for c in data.columns]}"
            )
        arrays.append(pa.array(data[src], from_pandas=True))
        names.append(name)
    table = pa.Table.from_arrays(arrays, names=names)
    plane = mv._data_plane(str(qn), method, timeout_s)
    if plane is not None:
        answer = _on_data_plane(plane, table, params, partition_column, partitioned, timeout_s)
        return _as_run_answer(answer, data, partitioned)
    query = f"?timeout_s={timeout_s:g}"
    if params:
        query += "&params=" + url_quote(json.dumps(params), safe="")
    if partition_column is not None:
        query += "&partition_column=" + url_quote(partition_column, safe="")
    content = mv._client.call(
        "POST",
        f"{path}/invoke/{url_quote(method, safe='')}{query}",
        content=arrow_ipc.write_stream(table),
        headers={"Content-Type": arrow_ipc.ARROW_STREAM, "Accept": arrow_ipc.ARROW_STREAM},
        timeout=timeout_s + 30,
        raw=True,
    )
    return _as_run_answer(arrow_ipc.read_stream(content), data, partitioned)


def _on_data_plane(
    plane: tuple[Any, Any],
    table: Any,
    params: dict[str, Any] | None,
    partition_column: str | None,
    partitioned: bool,
    timeout_s: float,
) -> Any:
    """The rows through the data plane: one request per partition, or row batches."""
    import pyarrow as pa

    from neve.client.services import DEFAULT_REQUEST_ROWS, concurrent_map
    from neve.dataplane import partitions
    from neve.server import arrow_ipc

    client, target = plane
    query = "params=" + url_quote(json.dumps(params), safe="") if params else ""

    def call(chunk: Any) -> Any:
        body = client.send(
            target,
            arrow_ipc.write_stream(chunk),
            content_type=arrow_ipc.ARROW_STREAM,
            timeout_s=timeout_s,
            service=target.label,
            method=target.route,
            query=query,
        )
        return arrow_ipc.read_stream(body)

    if partitioned and partition_column is not None:
        column = partitions.partition_column_of(table, partition_column)
        chunks = partitions.split(table, column)
        answers = concurrent_map(call, chunks)
        return partitions.join(
            [partitions.with_partition(a, c, column) for a, c in zip(answers, chunks, strict=True)]
        )
    if partitioned:  # all rows are one partition: one request
        return call(table)
    step = DEFAULT_REQUEST_ROWS
    chunks = [table.slice(start, step) for start in range(0, table.num_rows, step)]
    return pa.concat_tables(concurrent_map(call, chunks))


def _as_run_answer(answer: Any, data: pd.DataFrame, partitioned: bool) -> pd.DataFrame:
    out = answer.to_pandas()
    if partitioned:
        return out
    out.index = data.index
    keep = [c for c in data.columns if c not in set(out.columns)]
    return pd.concat([data[keep], out], axis=1)


def is_table_function(mv: Any, function_name: str | None) -> bool:
    """Whether ``function_name`` (None: the version's only function) is a partitioned method
    of ``mv``; a name it does not have is not (the service's own error names it)."""
    functions = _functions(mv)
    if function_name is None:
        return len(functions) == 1 and bool(functions[0]["is_partitioned"])
    wanted = function_name.upper().replace("-", "_")
    return any(
        f["is_partitioned"] and wanted in (f["name"].upper(), f["target_method"].upper())
        for f in functions
    )


def _is_partitioned(mv: Any, method: str) -> bool:
    for f in _functions(mv):
        if f["target_method"].upper() == method.upper():
            return bool(f["is_partitioned"])
    return False


def _functions(mv: Any) -> list[dict[str, Any]]:
    """``mv.show_functions()``, read once per ModelVersion (a version's methods never change)."""
    if getattr(mv, "_functions", None) is None:
        mv._functions = mv.show_functions()
    return list(mv._functions)
