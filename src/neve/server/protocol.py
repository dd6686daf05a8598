"""Wire formats of the inference server: request bodies -> typed columns -> response bodies.

Accepted request bodies for ``POST /<method>`` (``ServiceRequest`` keeps the row indices to echo):

- FLAT   ``{"data": [[row_index, arg1, arg2, ...], ...]}``  arguments in signature order
- WIDE   ``{"data": [[row_index, {"col": value, ...}], ...]}``  arguments by name
- ``{"dataframe_split": {"columns": [...], "data": [[...], ...], "index": [...]?}}``
- ``{"dataframe_records": [{"col": value, ...}, ...]}``

and the Open Inference Protocol (V2) ``{"inputs": [{"name", "shape", "datatype", "data"}]}``.
Every answer of the service format is ``{"data": [[row_index, {"<output>": value, ...}], ...]}``.

Each request is validated and converted here, on its own, into one numpy array per signature
input: a bad value is reported against the request that sent it (naming row and column) and a
batch of admitted requests never fails because of one bad neighbour. Column names match
case-insensitively (SQL callers upper-case them); extra columns are ignored.

Pure functions, no HTTP: the app reads bodies and the batcher calls the model.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
    NeveError,
    SignatureError,
    UnsupportedMediaTypeError,
)
from neve.models.signature import DTYPES, NUMERIC, FeatureSpec
from neve.server import arrow_ipc
from neve.server.arrow_ipc import ARROW_STREAM

_INT_TYPES = {t for t in NUMERIC if "INT" in t}
_INT_BOUNDS = {t: np.iinfo(DTYPES[t]) for t in _INT_TYPES}
_NUMERIC_KINDS = frozenset("iuf")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# numpy dtypes orjson writes natively (anything else goes through ``_default``).
_ORJSON_KINDS = frozenset("biuf")

V2_DATATYPES = {
    "BOOL": "BOOL",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "STRING": "BYTES",
    "BYTES": "BYTES",
    "TIMESTAMP_NTZ": "BYTES",
}


@dataclass(slots=True)
class ServiceRequest:
    """One request's rows: the indices to answer with and one array per signature input."""

    index: list[Any]
    columns: list[np.ndarray]
    n_rows: int
    #: The method's parameters for this call (every declared one, defaults filled in).
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class OutputColumns:
    """A model call's answer: one numpy array per output column, in the frame's order.

    Columns stay numpy until a response is encoded, so each wire format converts them once
    (JSON: ``tolist``; Arrow: zero-copy for numbers).
    """

    names: list[str]
    columns: list[np.ndarray]

    def slice(self, start: int, stop: int) -> OutputColumns:
        return OutputColumns(self.names, [c[start:stop] for c in self.columns])

    @classmethod
    def concat(cls, parts: list[OutputColumns]) -> OutputColumns:
        if len(parts) == 1:
            return parts[0]
        names = parts[0].names
        return cls(
            names, [np.concatenate([p.columns[j] for p in parts]) for j in range(len(names))]
        )


#: V2 request parameters that are the protocol's own, not the method's.
V2_RESERVED_PARAMETERS = frozenset(
    {
        "method",
        "binary_data_output",
        "timeout",
        "priority",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "headers",
    }
)


def request_params(payload: Any, *, v2: bool = False) -> dict[str, Any] | None:
    """The method parameters a request sets: ``"params"`` of the service format, or the V2
    ``"parameters"`` that are not the protocol's own."""
    if not isinstance(payload, dict):
        return None
    raw = payload.get("parameters" if v2 else "params")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidArgumentError(
            f'"{"parameters" if v2 else "params"}" must be an object of parameter values, got '
            f"{_json_type(raw)}",
            code="INVALID_REQUEST",
        )
    if v2:
        return {k: v for k, v in raw.items() if k not in V2_RESERVED_PARAMETERS}
    return raw


# --------------------------------------------------------------------------------------------
# JSON in and out


def loads(body: bytes) -> Any:
    if not body:
        raise InvalidArgumentError("request body is empty: send a JSON object", code="INVALID_JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"request body is not valid JSON: {exc}", code="INVALID_JSON"
        ) from None


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dt.datetime | dt.date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)


def error_body(err: NeveError, *, v2: bool = False) -> bytes:
    body = err.to_dict()
    if v2:  # the V2 protocol names the message "error"
        body["error"] = err.message
    return orjson.dumps(body)


# --------------------------------------------------------------------------------------------
# Service-function format


def parse_service_request(
    payload: Any, inputs: list[FeatureSpec], method: str, *, bools: bool = True
) -> ServiceRequest:
    """Validate a decoded JSON body against ``inputs`` and convert it to typed columns.

    ``bools=False`` promises that the body holds no JSON ``true``/``false`` (the caller checked
    the raw bytes): numpy silently turns ``[1, true]`` into ``[1, 1]``, so numeric columns are
    checked value by value for booleans unless that promise is made.
    """
    if not isinstance(payload, dict):
        raise InvalidArgumentError(
            f'method {method!r}: request body must be a JSON object with "data", '
            f'"dataframe_split" or "dataframe_records", got {_json_type(payload)}',
            code="INVALID_REQUEST",
        )
    if "data" in payload:
        return _parse_data(payload["data"], inputs, method, bools)
    if "dataframe_split" in payload:
        return _parse_split(payload["dataframe_split"], inputs, method, bools)
    if "dataframe_records" in payload:
        records = payload["dataframe_records"]
        if not isinstance(records, list):
            raise InvalidArgumentError(
                f'method {method!r}: "dataframe_records" must be a list of objects, got '
                f"{_json_type(records)}",
                code="INVALID_REQUEST",
            )
        return _from_dicts(records, list(range(len(records))), inputs, method, bools, wide=False)
    raise InvalidArgumentError(
        f'method {method!r}: request body has no "data" (nor "dataframe_split" / '
        f'"dataframe_records"); keys: {sorted(map(str, payload))[:10]}',
        code="MISSING_DATA",
    )


def _parse_data(rows: Any, inputs: list[FeatureSpec], method: str, bools: bool) -> ServiceRequest:
    if not isinstance(rows, list):
        raise InvalidArgumentError(
            f'method {method!r}: "data" must be a list of rows [row_index, arg1, ...], got '
            f"{_json_type(rows)}",
            code="INVALID_REQUEST",
        )
    if not rows:
        return _empty(inputs)
    first = rows[0]
    if isinstance(first, list) and len(first) == 2 and isinstance(first[1], dict):
        for pos, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 2 and isinstance(row[1], dict)):
                raise SignatureError(
                    f"method {method!r}: row {pos}: expected [row_index, {{column: value}}] like "
                    f"row 0, got {_short(row)}"
                )
        index = [r[0] for r in rows]
        return _from_dicts([r[1] for r in rows], index, inputs, method, bools, wide=True)
    positions = list(range(1, len(inputs) + 1))
    return _from_rows(rows, positions, len(inputs) + 1, None, inputs, method, bools, flat=True)


def _parse_split(split: Any, inputs: list[FeatureSpec], method: str, bools: bool) -> ServiceRequest:
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
        raise InvalidArgumentError(
            f'method {method!r}: "dataframe_split" must be an object with "columns" (a list) '
            'and "data" (a list of rows)',
            code="INVALID_REQUEST",
        )
    columns = [str(c) for c in split["columns"]]
    rows = split.get("data")
    if not isinstance(rows, list):
        raise InvalidArgumentError(
            f'method {method!r}: "dataframe_split"."data" must be a list of rows, got '
            f"{_json_type(rows)}",
            code="MISSING_DATA",
        )
    exact = {c: i for i, c in enumerate(columns)}
    upper = {c.upper(): i for i, c in enumerate(columns)}
    positions, missing = [], []
    for feat in inputs:
        pos = exact.get(feat.name, upper.get(feat.name.upper()))
        if pos is None:
            missing.append(feat.name)
        positions.append(pos)
    if missing:
        raise SignatureError(
            f"method {method!r}: dataframe_split is missing column(s) {missing}; expected "
            f"{[f.name for f in inputs]}, got {columns}"
        )
    index = split.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise InvalidArgumentError(
            f'method {method!r}: dataframe_split "index" must be a list with one entry per row '
            f"({len(rows)})",
            code="INVALID_REQUEST",
        )
    if not rows:
        return _empty(inputs)
    return _from_rows(rows, positions, len(columns), index, inputs, method, bools, flat=False)


def _from_rows(
    rows: list[Any],
    positions: list[int],
    row_len: int,
    index: list[Any] | None,
    inputs: list[FeatureSpec],
    method: str,
    bools: bool,
    *,
    flat: bool,
) -> ServiceRequest:
    """Rows of positional values (FLAT: position 0 is the row index; split: ``index`` or 0..n)."""
    n = len(rows)
    if not bools and all(f.type in NUMERIC and not f.shape for f in inputs):
        # Fast path: one C call turns an all-numeric request into a 2-D block.
        block = _as_array(rows)
        if block is not None and block.ndim == 2 and block.dtype.kind in _NUMERIC_KINDS:
            if block.shape[1] != row_len:
                _check_arity(rows, row_len, inputs, method, flat)
            idx = [r[0] for r in rows] if flat else (index if index is not None else list(range(n)))
            cols = [
                _numeric_array(block[:, p], feat, method, idx)
                for p, feat in zip(positions, inputs, strict=True)
            ]
            return ServiceRequest(idx, cols, n)
    _check_arity(rows, row_len, inputs, method, flat)
    transposed = list(zip(*rows, strict=True)) if row_len else []
    idx = list(transposed[0]) if flat else (index if index is not None else list(range(n)))
    cols = [
        to_column(transposed[p], feat, method, idx, bools=bools)
        for p, feat in zip(positions, inputs, strict=True)
    ]
    return ServiceRequest(idx, cols, n)


def _check_arity(
    rows: list[Any], row_len: int, inputs: list[FeatureSpec], method: str, flat: bool
) -> None:
    for pos, row in enumerate(rows):
        if isinstance(row, list) and len(row) == row_len:
            continue
        where = f"row {pos}" + (
            f" (index {row[0]!r})" if flat and isinstance(row, list) and row else ""
        )
        if not isinstance(row, list):
            got = f"a {_json_type(row)}"
        else:
            got = f"{max(len(row) - 1, 0)} argument(s)" if flat else f"{len(row)} value(s)"
        expected = (
            f"[row_index, {', '.join(f.name for f in inputs)}]: {len(inputs)} argument(s) after "
            "the row index"
            if flat
            else f"{row_len} value(s), one per column"
        )
        raise SignatureError(f"method {method!r}: {where} has {got}; expected {expected}")


def _from_dicts(
    dicts: list[Any],
    index: list[Any],
    inputs: list[FeatureSpec],
    method: str,
    bools: bool,
    *,
    wide: bool,
) -> ServiceRequest:
    if not dicts:
        return _empty(inputs)
    values: list[list[Any]] = [[None] * len(dicts) for _ in inputs]
    names = [f.name for f in inputs]
    for pos, d in enumerate(dicts):
        if not isinstance(d, dict):
            raise SignatureError(
                f"method {method!r}: row {pos}: expected an object of column values, got "
                f"{_json_type(d)}"
            )
        for j, name in enumerate(names):
            if name in d:
                values[j][pos] = d[name]
                continue
            key = _find_key(d, name)
            if key is None:
                where = f"row {pos}" + (f" (index {index[pos]!r})" if wide else "")
                raise SignatureError(
                    f"method {method!r}: {where} is missing column {name!r}; expected {names}, "
                    f"got {sorted(map(str, d))}"
                )
            values[j][pos] = d[key]
    cols = [
        to_column(v, feat, method, index, bools=bools)
        for v, feat in zip(values, inputs, strict=True)
    ]
    return ServiceRequest(list(index), cols, len(dicts))


def _find_key(d: dict, name: str) -> str | None:
    upper = name.upper()
    for key in d:
        if isinstance(key, str) and key.upper() == upper:
            return key
    return None


def _empty(inputs: list[FeatureSpec]) -> ServiceRequest:
    return ServiceRequest([], [np.empty(0, dtype=_storage_dtype(f)) for f in inputs], 0)


# --------------------------------------------------------------------------------------------
# One column: validate the JSON values against a feature and convert them to numpy


def to_column(
    values: Sequence[Any],
    feat: FeatureSpec,
    method: str,
    index: list[Any],
    *,
    bools: bool = True,
) -> np.ndarray:
    """JSON values of one input column -> a numpy array typed by the feature (or an error).

    ``bools``: whether booleans may be among ``values`` (see ``parse_service_request``).
    """
    if feat.shape:
        return _tensor_column(values, feat, method, index)
    if feat.type in NUMERIC or feat.type == "BOOL":
        if (
            bools
            and feat.type != "BOOL"
            and not isinstance(values, np.ndarray)
            and any(v is True or v is False for v in values)
        ):
            return _scalar_slow(values, feat, method, index)  # names the boolean
        arr = _as_array(values)
        kinds = "b" if feat.type == "BOOL" else _NUMERIC_KINDS
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in kinds:
            return _numeric_array(arr, feat, method, index)
        return _scalar_slow(values, feat, method, index)
    if feat.type in ("STRING", "BYTES"):
        ok = (str, bytes) if feat.type == "BYTES" else (str,)
        for pos, v in enumerate(values):
            if v is not None and not isinstance(v, ok):
                raise _bad_value(method, pos, index, feat, v)
            if v is None and not feat.nullable:
                raise _null_value(method, pos, index, feat)
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
        return arr
    if feat.type == "TIMESTAMP_NTZ":
        for pos, v in enumerate(values):
            if v is None:
                continue
            try:
                if isinstance(v, bool) or not isinstance(v, str | int):
                    raise ValueError
                np.datetime64(v, "ns")
            except (ValueError, TypeError, OverflowError):
                raise _bad_value(method, pos, index, feat, v, hint="an ISO-8601 string") from None
        return np.array([np.datetime64("NaT") if v is None else v for v in values], "M8[ns]")
    raise SignatureError(f"method {method!r}: column {feat.name!r}: unsupported type {feat.type}")


def _numeric_array(arr: np.ndarray, feat: FeatureSpec, method: str, index: list[Any]) -> np.ndarray:
    if feat.type in _INT_TYPES and arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (arr == np.floor(arr))
        if not whole.all():
            pos = int(np.argmin(whole))
            raise _bad_value(method, pos, index, feat, arr[pos].item(), hint="a whole number")
    if feat.type in _INT_TYPES:
        bounds = _INT_BOUNDS[feat.type]
        if arr.size and (arr.min() < bounds.min or arr.max() > bounds.max):
            pos = int(np.argmax((arr < bounds.min) | (arr > bounds.max)))
            raise _bad_value(method, pos, index, feat, arr[pos].item(), hint="a value in range")
    target = DTYPES[feat.type]
    return arr if arr.dtype == target else arr.astype(target)


def _scalar_slow(
    values: Sequence[Any], feat: FeatureSpec, method: str, index: list[Any]
) -> np.ndarray:
    # Mixed values, nulls or out-of-range integers: check each value to name the bad one.
    is_bool = feat.type == "BOOL"
    has_null = False
    for pos, v in enumerate(values):
        if v is None:
            if not feat.nullable:
                raise _null_value(method, pos, index, feat)
            has_null = True
        elif is_bool:
            if not (isinstance(v, bool) or (type(v) is int and v in (0, 1))):
                raise _bad_value(method, pos, index, feat, v)
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise _bad_value(method, pos, index, feat, v)
        elif feat.type in _INT_TYPES and isinstance(v, int):
            bounds = _INT_BOUNDS[feat.type]
            if not bounds.min <= v <= bounds.max:
                raise _bad_value(method, pos, index, feat, v, hint="a value in range")
    if has_null:
        if is_bool:
            arr = np.empty(len(values), dtype=object)
            arr[:] = list(values)
            return arr
        # Missing numbers are NaN (as pandas does), so integer columns with nulls become DOUBLE.
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if is_bool:
        return np.array(values, dtype=bool)
    # Values are all numbers now; let numpy pick int64/float64 so large integers keep precision.
    try:
        arr = np.array(values)
    except OverflowError:
        arr = np.array(values, dtype=object)
    if arr.dtype == object:  # integers beyond int64 (a UINT64 column)
        arr = np.array(values, dtype=DTYPES[feat.type])
    return _numeric_array(arr, feat, method, index)


def _tensor_column(
    values: Sequence[Any], feat: FeatureSpec, method: str, index: list[Any]
) -> np.ndarray:
    """A column whose values are tensors (e.g. a vector): an object array of per-row arrays."""
    want = list(feat.shape or [])
    n = len(values)
    out = np.empty(n, dtype=object)
    block = _as_array(values) if -1 not in want else None
    if (
        block is not None
        and block.dtype.kind in _NUMERIC_KINDS | {"b"}
        and list(block.shape[1:]) == want
    ):
        for i in range(n):
            out[i] = block[i]
        return out
    for pos, v in enumerate(values):
        if v is None:
            if not feat.nullable:
                raise _null_value(method, pos, index, feat)
            out[pos] = None
            continue
        arr = _as_array(v) if isinstance(v, list) else None
        if arr is None or arr.dtype.kind not in _NUMERIC_KINDS | {"b"}:
            raise _bad_value(method, pos, index, feat, v, hint=f"a numeric list of shape {want}")
        if len(arr.shape) != len(want) or any(
            w not in (-1, s) for w, s in zip(want, arr.shape, strict=True)
        ):
            raise SignatureError(
                f"method {method!r}: {_where(pos, index)}, column {feat.name!r}: expected shape "
                f"{want}, got {list(arr.shape)}"
            )
        out[pos] = arr
    return out


def _as_array(values: Any) -> np.ndarray | None:
    try:
        return np.asarray(values)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed nesting
        return None


def _storage_dtype(feat: FeatureSpec) -> Any:
    return object if feat.shape else DTYPES[feat.type]


def _where(pos: int, index: list[Any]) -> str:
    if pos < len(index) and index[pos] != pos:
        return f"row {pos} (index {index[pos]!r})"
    return f"row {pos}"


def _bad_value(
    method: str, pos: int, index: list[Any], feat: FeatureSpec, value: Any, *, hint: str = ""
) -> SignatureError:
    expected = feat.type + (f" ({hint})" if hint else "")
    return SignatureError(
        f"method {method!r}: {_where(pos, index)}, column {feat.name!r}: expected {expected}, "
        f"got {_json_type(value)} {_short(value)}"
    )


def _null_value(method: str, pos: int, index: list[Any], feat: FeatureSpec) -> SignatureError:
    return SignatureError(
        f"method {method!r}: {_where(pos, index)}, column {feat.name!r}: null in a column that is "
        "not nullable"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Model output -> JSON-ready columns; responses


def output_columns(frame: pd.DataFrame) -> OutputColumns:
    """A method's output frame -> one numpy array per column (no copy for plain dtypes)."""
    names = [str(c) for c in frame.columns]
    return OutputColumns(names, [frame.iloc[:, j].to_numpy() for j in range(len(names))])


def json_ready(col: np.ndarray) -> list[Any]:
    """One output column as JSON-ready values (vectors stay numpy rows).

    Numeric columns become Python numbers in one ``tolist`` call; a vector column keeps its
    per-row numpy arrays, which orjson writes as JSON lists without building Python floats.
    """
    kind = col.dtype.kind
    if kind in "biuf":
        return col.tolist()
    if kind == "M":
        return [None if pd.isna(v) else pd.Timestamp(v).isoformat() for v in col]
    return [_plain(v) for v in col.tolist()]


def _plain(v: Any) -> Any:
    if v is None or type(v) in (str, int, float, bool):
        return v
    if isinstance(v, np.ndarray):
        return v if v.dtype.kind in _ORJSON_KINDS and v.flags.c_contiguous else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is pd.NA or v is pd.NaT:
        return None
    return _default(v)


def encode_service_response(index: list[Any], out: OutputColumns) -> bytes:
    names, cols = out.names, [json_ready(c) for c in out.columns]
    if len(names) == 1:
        name = names[0]
        data = [[i, {name: v}] for i, v in zip(index, cols[0], strict=True)]
    else:
        data = [
            [i, dict(zip(names, vals, strict=True))] for i, *vals in zip(index, *cols, strict=True)
        ]
    return dumps({"data": data})


# --------------------------------------------------------------------------------------------
# Arrow IPC: the columnar form of the service-function format
#
# A body of Content-Type ``application/vnd.apache.arrow.stream`` holds one column per signature
# input (matched by name, case-insensitively; extra columns ignored) and is answered with a
# stream of one column per output, row for row: no row indices, no JSON numbers to print and
# parse. SQL service functions use it; JSON stays the format of every other caller.


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
            raise _null_value(method, first, index, feat)
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


# --------------------------------------------------------------------------------------------
# Open Inference Protocol (V2)


def parse_v2_request(
    payload: Any, inputs: list[FeatureSpec], outputs: list[FeatureSpec], method: str
) -> tuple[ServiceRequest, list[str] | None]:
    """A V2 ``infer`` body -> rows, and the output names asked for (None: all)."""
    tensors = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(tensors, list) or not tensors:
        raise InvalidArgumentError(
            f'method {method!r}: V2 request needs "inputs": a non-empty list of tensors '
            '{"name", "shape", "datatype", "data"}',
            code="MISSING_DATA",
        )
    arrays: dict[str, tuple[np.ndarray, list[int]]] = {}
    for t in tensors:
        if not isinstance(t, dict) or "name" not in t or "data" not in t or "shape" not in t:
            raise InvalidArgumentError(
                f'method {method!r}: every V2 input needs "name", "shape" and "data", got '
                f"{_short(t)}",
                code="INVALID_REQUEST",
            )
        shape = t["shape"]
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise InvalidArgumentError(
                f'method {method!r}: V2 input {t["name"]!r}: "shape" must be a list of sizes',
                code="INVALID_REQUEST",
            )
        data = t["data"]
        arr = _as_array(data)
        if arr is None or arr.size != int(np.prod(shape)):
            size = "ragged" if arr is None else str(arr.size)
            raise SignatureError(
                f"method {method!r}: V2 input {t['name']!r}: {size} values do not fill shape {shape}"
            )
        arrays[str(t["name"])] = (arr.reshape(shape), shape)

    by_upper = {name.upper(): name for name in arrays}
    matched = [arrays.get(f.name) or arrays.get(by_upper.get(f.name.upper(), "")) for f in inputs]
    if len(inputs) == 1 and len(arrays) == 1:  # one input: the tensor's name does not matter
        matched = list(arrays.values())
    if all(m is not None for m in matched):
        n = matched[0][1][0]  # type: ignore[index]
        for feat, m in zip(inputs, matched, strict=True):
            if m[1][0] != n:  # type: ignore[index]
                raise SignatureError(
                    f"method {method!r}: V2 input {feat.name!r} has {m[1][0]} rows, others {n}"  # type: ignore[index]
                )
        index = list(range(n))
        cols = [
            to_column(_rows_of(m[0], n), feat, method, index)  # type: ignore[index]
            for feat, m in zip(inputs, matched, strict=True)
        ]
        return ServiceRequest(index, cols, n), _requested_outputs(payload, outputs, method)
    if len(arrays) == 1 and not any(f.shape for f in inputs):
        # One matrix tensor [n, k] holding every input column in signature order.
        ((name, (arr, shape)),) = arrays.items()
        if len(shape) == 2 and shape[1] == len(inputs):
            n = shape[0]
            index = list(range(n))
            cols = [
                to_column(
                    arr[:, j].tolist() if arr.dtype.kind not in _NUMERIC_KINDS else arr[:, j],
                    feat,
                    method,
                    index,
                )
                for j, feat in enumerate(inputs)
            ]
            return ServiceRequest(index, cols, n), _requested_outputs(payload, outputs, method)
    raise SignatureError(
        f"method {method!r}: V2 inputs {sorted(arrays)} do not match the signature: send one "
        f"tensor per input {[f.name for f in inputs]} or one [rows, {len(inputs)}] tensor"
    )


def _rows_of(arr: np.ndarray, n: int) -> Any:
    if arr.dtype.kind in _NUMERIC_KINDS | {"b"}:
        return arr if arr.ndim == 1 else [arr[i] for i in range(n)]
    return arr.tolist() if arr.ndim == 1 else [arr[i].tolist() for i in range(n)]


def _requested_outputs(payload: dict, outputs: list[FeatureSpec], method: str) -> list[str] | None:
    asked = payload.get("outputs")
    if not asked:
        return None
    if not isinstance(asked, list):
        asked = [asked]
    names = [str(o.get("name")) if isinstance(o, dict) else str(o) for o in asked]
    known = [f.name for f in outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgumentError(
            f"method {method!r}: V2 request asks for unknown output(s) {unknown}; outputs: {known}",
            code="INVALID_REQUEST",
        )
    return names


def encode_v2_response(
    model_name: str,
    request_id: Any,
    outputs: list[FeatureSpec],
    out: OutputColumns,
    n_rows: int,
    requested: list[str] | None,
) -> bytes:
    return dumps(v2_response_body(model_name, request_id, outputs, out, n_rows, requested))


def v2_response_body(
    model_name: str,
    request_id: Any,
    outputs: list[FeatureSpec],
    out: OutputColumns,
    n_rows: int,
    requested: list[str] | None,
) -> dict[str, Any]:
    """The V2 answer as a dict (``neve.server.v2_binary`` may move tensors out of it)."""
    specs = {f.name: f for f in outputs}
    tensors = []
    for name, column in zip(out.names, out.columns, strict=True):
        if requested is not None and name not in requested:
            continue
        feat = specs.get(name)
        datatype = V2_DATATYPES.get(feat.type, "BYTES") if feat else "BYTES"
        shape: list[int] = [n_rows]
        values = json_ready(column)
        data: Any = values
        if values and isinstance(values[0], np.ndarray | list):
            block = _as_array(values)
            if block is not None and block.dtype.kind in _ORJSON_KINDS:
                shape = list(block.shape)
                data = np.ascontiguousarray(block).ravel()
        tensors.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    body: dict[str, Any] = {"model_name": model_name, "outputs": tensors}
    if request_id is not None:
        body["id"] = request_id
    return body


def v2_tensor_metadata(features: list[FeatureSpec]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "datatype": V2_DATATYPES.get(f.type, "BYTES"),
            "shape": [-1, *(f.shape or [])],
        }
        for f in features
    ]
