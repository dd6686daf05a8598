"""Vectorized Arrow UDFs: service functions and warehouse model functions inside DuckDB queries.

DuckDB hands an Arrow UDF one vector (up to 2048 rows) per call, from several threads at once
for tables with several row groups. A service-function UDF splits its vector into batches of
``MAX_BATCH_ROWS`` and sends them concurrently (a bounded thread pool shared by the engine) over
the service-function protocol as Arrow IPC streams: DuckDB's columns go to the service and its
output columns come back without a Python object per value. A model-function UDF calls the
loaded model once per vector.

Rows with a NULL argument are not sent: their result is NULL (SQL's usual strictness). The first
error raised inside a UDF is kept in :class:`QueryErrors` so the engine re-raises the neve error
itself rather than DuckDB's wrapped text.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from neve.context import RequestContext
from neve.errors import (
    ModelExecutionError,
    NeveError,
)
from neve.models.signature import FeatureSpec, ModelSignature

ARROW_TYPES: dict[str, pa.DataType] = {
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "TIMESTAMP_NTZ": pa.timestamp("us"),
}


class ServiceCaller(Protocol):
    """``account.services.invoke_arrow``'s shape: a table of inputs in, a table of outputs out.

    The data plane's router behind it balances, retries another instance (at most ``retries``
    times) and honours Retry-After until ``timeout_s``: a UDF does not retry on its own.
    """

    def __call__(
        self,
        ctx: RequestContext,
        name: str,
        method: str,
        table: pa.Table,
        /,
        *,
        timeout_s: float = 300,
        retries: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> pa.Table: ...


@dataclass
class BatchOptions:
    max_batch_rows: int
    max_batch_retries: int
    on_batch_failure: str
    batch_timeout_secs: float

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> BatchOptions:
        return cls(
            max_batch_rows=int(options["MAX_BATCH_ROWS"]),
            max_batch_retries=int(options["MAX_BATCH_RETRIES"]),
            on_batch_failure=str(options["ON_BATCH_FAILURE"]).upper(),
            batch_timeout_secs=float(options["BATCH_TIMEOUT_SECS"]),
        )


class QueryErrors:
    """The first exception raised inside any UDF of one query, plus call counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first: BaseException | None = None
        self.batches_sent = 0
        self.rows_sent = 0

    def record(self, exc: BaseException) -> None:
        with self._lock:
            if self.first is None:
                self.first = exc

    def count(self, rows: int) -> None:
        with self._lock:
            self.batches_sent += 1
            self.rows_sent += rows


def arrow_type(feature: FeatureSpec) -> pa.DataType:
    t = ARROW_TYPES[feature.type]
    for _ in feature.shape or []:
        t = pa.list_(t)
    return t


def return_arrow_type(signature: ModelSignature) -> pa.DataType:
    if len(signature.outputs) == 1:
        return arrow_type(signature.outputs[0])
    return pa.struct([pa.field(f.name, arrow_type(f)) for f in signature.outputs])


def _to_arrow(values: list | np.ndarray | pd.Series, typ: pa.DataType) -> pa.Array:
    if isinstance(values, pd.Series):
        values = values.to_numpy(dtype=object) if values.dtype == object else values.to_numpy()
    try:
        return pa.array(values, type=typ, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array(values, from_pandas=True).cast(typ, safe=False)


def build_output(signature: ModelSignature, results: list[dict | None]) -> pa.Array:
    """Arrow output of a UDF from one output dict (or None) per row."""
    outputs = signature.outputs
    first = next((r for r in results if r), None)
    keys = _key_map(outputs, list(first) if first else None)
    if len(outputs) == 1:
        key = keys[0]
        return _to_arrow(
            [None if r is None else r.get(key) for r in results], arrow_type(outputs[0])
        )
    arrays = [
        _to_arrow([None if r is None else r.get(key) for r in results], arrow_type(f))
        for f, key in zip(outputs, keys, strict=True)
    ]
    mask = pa.array([r is None for r in results], type=pa.bool_())
    return pa.StructArray.from_arrays(
        arrays, fields=[pa.field(f.name, arrow_type(f)) for f in outputs], mask=mask
    )


def _key_map(outputs: list[FeatureSpec], sample: list[str] | None) -> list[str]:
    """The key of each output in the service's answer (exact name, else case-insensitive)."""
    if not sample:
        return [f.name for f in outputs]
    by_upper = {str(k).upper(): k for k in sample}
    keys = []
    for f in outputs:
        if f.name in sample:
            keys.append(f.name)
        elif f.name.upper() in by_upper:
            keys.append(by_upper[f.name.upper()])
        else:
            raise ModelExecutionError(
                f"the service answered without output {f.name!r} (got {sorted(sample)})"
            )
    return keys


def _valid_rows(cols: list[pa.Array]) -> np.ndarray:
    n = len(cols[0]) if cols else 0
    valid = np.ones(n, dtype=bool)
    for c in cols:
        if c.null_count:
            valid &= np.asarray(pc.is_valid(c).to_numpy(zero_copy_only=False), dtype=bool)
    return valid


def with_arity(fn: Callable[..., pa.Array], n: int) -> Callable[..., pa.Array]:
    """DuckDB counts a UDF's parameters: give ``fn(*cols)`` a signature of exactly ``n``."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(n)]
    )
    return fn


def _combine(cols: tuple) -> list[pa.Array]:
    return [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols]


def service_udf(
    *,
    caller: ServiceCaller,
    ctx: RequestContext,
    service: str,
    method: str,
    function: str,
    signature: ModelSignature,
    options: BatchOptions,
    pool: ThreadPoolExecutor,
    errors: QueryErrors,
) -> Callable[..., pa.Array]:
    """An Arrow UDF that scores its vectors through ``caller`` (the service's invoke_arrow)."""
    names = signature.input_names
    outputs = signature.outputs
    types = [arrow_type(f) for f in outputs]

    def send(batch: pa.Table) -> pa.Table | None:
        errors.count(batch.num_rows)
        try:
            out = caller(
                ctx,
                service,
                method,
                batch,
                timeout_s=options.batch_timeout_secs,
                retries=options.max_batch_retries,
            )
            if out.num_rows != batch.num_rows:
                raise ModelExecutionError(
                    f"service {service} answered {out.num_rows} rows for a batch of "
                    f"{batch.num_rows} (function {function})"
                )
        except NeveError:
            if options.on_batch_failure == "RETURN_NULL":
                return None
            raise
        return out

    def udf(*cols: pa.Array) -> pa.Array:
        try:
            arrays = _combine(cols)
            valid = _valid_rows(arrays)
            table = pa.Table.from_arrays(arrays, names=names)
            if not valid.all():  # rows with a NULL argument are not sent; their result is NULL
                table = table.filter(pa.array(valid))
            step = options.max_batch_rows
            batches = [table.slice(k, step) for k in range(0, table.num_rows, step)]
            if len(batches) == 1:
                answers = [send(batches[0])]
            else:
                answers = [f.result() for f in [pool.submit(send, b) for b in batches]]
            return _assemble(outputs, types, batches, answers, valid)
        except BaseException as exc:
            errors.record(exc)
            raise

    return with_arity(udf, len(names))


def _assemble(
    outputs: list[FeatureSpec],
    types: list[pa.DataType],
    batches: list[pa.Table],
    answers: list[pa.Table | None],
    valid: np.ndarray,
) -> pa.Array:
    """One UDF result from the answer of each batch: NULL for unsent rows and failed batches."""
    sample = next((a for a in answers if a is not None), None)
    keys = _key_map(outputs, sample.column_names if sample is not None else None)
    columns = []
    for key, typ in zip(keys, types, strict=True):
        pieces: list[pa.Array] = []
        for a, b in zip(answers, batches, strict=True):
            if a is None:
                pieces.append(pa.nulls(b.num_rows, typ))
            else:
                pieces.extend(_cast(a.column(key), typ).chunks)
        columns.append(pa.chunked_array(pieces, type=typ).combine_chunks())
    null_rows = np.zeros(0, dtype=bool)
    if any(a is None for a in answers):
        null_rows = np.concatenate(
            [np.full(b.num_rows, a is None) for a, b in zip(answers, batches, strict=True)]
        )
    if not valid.all():
        # Spread the answered rows back over the vector; NULL where a row was not sent.
        take = pa.array(np.cumsum(valid) - 1, mask=~valid)
        columns = [c.take(take) for c in columns]
        spread = np.ones(len(valid), dtype=bool)
        if null_rows.size:
            spread[valid] = null_rows
        else:
            spread[valid] = False
        null_rows = spread
    if len(outputs) == 1:
        return columns[0]
    fields = [pa.field(f.name, t) for f, t in zip(outputs, types, strict=True)]
    mask = pa.array(null_rows, type=pa.bool_()) if null_rows.any() else None
    return pa.StructArray.from_arrays(columns, fields=fields, mask=mask)


def _cast(values: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    if values.type == typ:
        return values
    try:
        return values.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return values.cast(typ, safe=False)


def model_udf(
    *,
    loaded: Any,
    method: str,
    signature: ModelSignature,
    errors: QueryErrors,
) -> Callable[..., pa.Array]:
    """An Arrow UDF that runs ``loaded.call(method, DataFrame)`` in-process on each vector."""
    names = signature.input_names
    out_names = signature.output_names

    def udf(*cols: pa.Array) -> pa.Array:
        try:
            arrays = _combine(cols)
            n = len(arrays[0])
            valid = _valid_rows(arrays)
            if not valid.all():
                idx = pa.array(np.nonzero(valid)[0])
                arrays = [a.take(idx) for a in arrays]
            errors.count(len(arrays[0]))
            frame = pa.Table.from_arrays(arrays, names=names).to_pandas()
            out = loaded.call(method, frame) if len(frame) else None
            results: list[dict | None] = [None] * n
            if out is not None:
                columns = [out[c].to_numpy() for c in _frame_keys(out, out_names)]
                positions = np.nonzero(valid)[0]
                if len(out_names) == 1 and valid.all():
                    return _to_arrow(columns[0], arrow_type(signature.outputs[0]))
                for j, pos in enumerate(positions):
                    results[int(pos)] = {
                        name: col[j] for name, col in zip(out_names, columns, strict=True)
                    }
            return build_output(signature, results)
        except BaseException as exc:
            errors.record(exc)
            raise

    return with_arity(udf, len(names))


def _frame_keys(frame: pd.DataFrame, names: list[str]) -> list[str]:
    cols = {str(c).upper(): c for c in frame.columns}
    return [n if n in frame.columns else cols.get(n.upper(), n) for n in names]
