"""Arrow IPC: the columnar form of the service-function format (SQL service functions use it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
    SignatureError,
    UnsupportedMediaTypeError,
)
from neve.models.signature import NUMERIC, FeatureSpec
from neve.server import arrow_ipc
from neve.server.arrow_ipc import ARROW_STREAM
from neve.server.protocol.columns import OutputColumns, ServiceRequest, null_value_error, to_column


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is in every image's base
        raise UnsupportedMediaTypeError(
            f"this server has no pyarrow and cannot read {ARROW_STREAM}; send JSON"
        ) from None
    return pa


def parse_arrow_request(body: bytes, inputs: list[FeatureSpec], method: str) -> ServiceRequest:
    """An Arrow IPC stream body -> typed columns, validated as the JSON forms are."""
    pa = _pyarrow()
    if not body:
        raise InvalidArgumentError(
            f"method {method!r}: request body is empty: send an Arrow IPC stream",
            code="INVALID_ARROW",
        )
    try:
        table = arrow_ipc.read_stream(body)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgumentError(
            f"method {method!r}: request body is not an Arrow IPC stream: {exc}",
            code="INVALID_ARROW",
        ) from None
    names = table.column_names
    exact = {c: i for i, c in enumerate(names)}
    upper = {c.upper(): i for i, c in enumerate(names)}
    positions = [exact.get(f.name, upper.get(f.name.upper())) for f in inputs]
    missing = [f.name for f, p in zip(inputs, positions, strict=True) if p is None]
    if missing:
        raise SignatureError(
            f"method {method!r}: Arrow input is missing column(s) {missing}; expected "
            f"{[f.name for f in inputs]}, got {names}"
        )
    n = table.num_rows
    index = list(range(n))
    cols = [
        _arrow_column(pa, table.column(p), feat, method, index)
        for p, feat in zip(positions, inputs, strict=True)
    ]
    return ServiceRequest(index, cols, n)


def _arrow_column(
    pa: Any, col: Any, feat: FeatureSpec, method: str, index: list[Any]
) -> np.ndarray:
    t = col.type
    if not feat.shape and col.null_count == 0:
        numeric_ok = feat.type in NUMERIC and (pa.types.is_integer(t) or pa.types.is_floating(t))
        if numeric_ok or (feat.type == "BOOL" and pa.types.is_boolean(t)):
            return to_column(col.to_numpy(), feat, method, index, bools=False)
    if feat.type == "TIMESTAMP_NTZ" and not feat.shape and pa.types.is_timestamp(t):
        if col.null_count and not feat.nullable:
            first = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise null_value_error(method, first, index, feat)
        return col.cast(pa.timestamp("ns")).to_numpy().astype("M8[ns]")
    # Nulls, tensors, strings and mixed kinds: the per-value checks of the JSON path.
    return to_column(col.to_pylist(), feat, method, index)


def encode_arrow_response(out: OutputColumns) -> bytes:
    """Output columns -> an Arrow IPC stream of one record batch."""
    pa = _pyarrow()
    arrays = []
    for name, col in zip(out.names, out.columns, strict=True):
        try:
            if col.dtype.kind in "biufM":
                arrays.append(pa.array(col))
            else:  # strings, vectors (per-row arrays), nullable extension values
                arrays.append(pa.array(col, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ModelExecutionError(
                f"output {name!r} cannot be sent as Arrow ({col.dtype}): {exc}"
            ) from None
    return arrow_ipc.write_stream(pa.RecordBatch.from_arrays(arrays, names=out.names))
