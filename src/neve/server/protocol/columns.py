"""Typed columns: one request's arguments (``ServiceRequest``), a batch's outputs (``OutputColumns``), and JSON values checked against a signature feature and converted to numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from neve.errors import (
    InvalidArgumentError,
    SignatureError,
)
from neve.models.signature import DTYPES, NUMERIC, FeatureSpec
from neve.server.protocol.json_codec import ORJSON_KINDS, json_default

_INT_TYPES = {t for t in NUMERIC if "INT" in t}


_INT_BOUNDS = {t: np.iinfo(DTYPES[t]) for t in _INT_TYPES}


NUMERIC_KINDS = frozenset("iuf")


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
            f"{json_type(raw)}",
            code="INVALID_REQUEST",
        )
    if v2:
        return {k: v for k, v in raw.items() if k not in V2_RESERVED_PARAMETERS}
    return raw


def to_column(
    values: Sequence[Any] | np.ndarray,
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
        arr = as_array(values)
        kinds = "b" if feat.type == "BOOL" else NUMERIC_KINDS
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in kinds:
            return numeric_array(arr, feat, method, index)
        return _scalar_slow(values, feat, method, index)
    if feat.type in ("STRING", "BYTES"):
        ok = (str, bytes) if feat.type == "BYTES" else (str,)
        for pos, v in enumerate(values):
            if v is not None and not isinstance(v, ok):
                raise _bad_value(method, pos, index, feat, v)
            if v is None and not feat.nullable:
                raise null_value_error(method, pos, index, feat)
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


def numeric_array(arr: np.ndarray, feat: FeatureSpec, method: str, index: list[Any]) -> np.ndarray:
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
    values: Sequence[Any] | np.ndarray, feat: FeatureSpec, method: str, index: list[Any]
) -> np.ndarray:
    # Mixed values, nulls or out-of-range integers: check each value to name the bad one.
    is_bool = feat.type == "BOOL"
    has_null = False
    for pos, v in enumerate(values):
        if v is None:
            if not feat.nullable:
                raise null_value_error(method, pos, index, feat)
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
    return numeric_array(arr, feat, method, index)


def _tensor_column(
    values: Sequence[Any] | np.ndarray, feat: FeatureSpec, method: str, index: list[Any]
) -> np.ndarray:
    """A column whose values are tensors (e.g. a vector): an object array of per-row arrays."""
    want = list(feat.shape or [])
    n = len(values)
    out = np.empty(n, dtype=object)
    block = as_array(values) if -1 not in want else None
    if (
        block is not None
        and block.dtype.kind in NUMERIC_KINDS | {"b"}
        and list(block.shape[1:]) == want
    ):
        for i in range(n):
            out[i] = block[i]
        return out
    for pos, v in enumerate(values):
        if v is None:
            if not feat.nullable:
                raise null_value_error(method, pos, index, feat)
            out[pos] = None
            continue
        arr = as_array(v) if isinstance(v, list) else None
        if arr is None or arr.dtype.kind not in NUMERIC_KINDS | {"b"}:
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


def as_array(values: Any) -> np.ndarray | None:
    try:
        return np.asarray(values)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed nesting
        return None


def storage_dtype(feat: FeatureSpec) -> Any:
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
        f"got {json_type(value)} {short_text(value)}"
    )


def null_value_error(method: str, pos: int, index: list[Any], feat: FeatureSpec) -> SignatureError:
    return SignatureError(
        f"method {method!r}: {_where(pos, index)}, column {feat.name!r}: null in a column that is "
        "not nullable"
    )


def json_type(value: Any) -> str:
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


def short_text(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        return v if v.dtype.kind in ORJSON_KINDS and v.flags.c_contiguous else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is pd.NA or v is pd.NaT:
        return None
    return json_default(v)
