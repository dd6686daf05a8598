"""The service-function format: FLAT / WIDE ``data`` rows, ``dataframe_split`` and ``dataframe_records`` bodies, and the ``{"data": [[index, {...}]]}`` answer."""

from __future__ import annotations

from typing import Any

import numpy as np

from neve.errors import (
    InvalidArgumentError,
    SignatureError,
)
from neve.models.signature import NUMERIC, FeatureSpec
from neve.server.protocol.columns import (
    NUMERIC_KINDS,
    OutputColumns,
    ServiceRequest,
    as_array,
    json_ready,
    json_type,
    numeric_array,
    short_text,
    storage_dtype,
    to_column,
)
from neve.server.protocol.json_codec import dumps


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
            f'"dataframe_split" or "dataframe_records", got {json_type(payload)}',
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
                f"{json_type(records)}",
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
            f"{json_type(rows)}",
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
                    f"row 0, got {short_text(row)}"
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
            f"{json_type(rows)}",
            code="MISSING_DATA",
        )
    exact = {c: i for i, c in enumerate(columns)}
    upper = {c.upper(): i for i, c in enumerate(columns)}
    positions: list[int] = []
    missing: list[str] = []
    for feat in inputs:
        pos = exact.get(feat.name, upper.get(feat.name.upper()))
        if pos is None:
            missing.append(feat.name)
        else:
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
        block = as_array(rows)
        if block is not None and block.ndim == 2 and block.dtype.kind in NUMERIC_KINDS:
            if block.shape[1] != row_len:
                _check_arity(rows, row_len, inputs, method, flat)
            idx = [r[0] for r in rows] if flat else (index if index is not None else list(range(n)))
            cols = [
                numeric_array(block[:, p], feat, method, idx)
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
            got = f"a {json_type(row)}"
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
                f"{json_type(d)}"
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
    return ServiceRequest([], [np.empty(0, dtype=storage_dtype(f)) for f in inputs], 0)


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
