"""The Open Inference Protocol (V2): tensors in, tensors out, tensor metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from neve.errors import (
    InvalidArgumentError,
    SignatureError,
)
from neve.models.signature import FeatureSpec
from neve.server.protocol.columns import (
    NUMERIC_KINDS,
    OutputColumns,
    ServiceRequest,
    as_array,
    json_ready,
    short_text,
    to_column,
)
from neve.server.protocol.json_codec import ORJSON_KINDS, dumps

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
                f"{short_text(t)}",
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
        arr = as_array(data)
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
                    arr[:, j].tolist() if arr.dtype.kind not in NUMERIC_KINDS else arr[:, j],
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
    if arr.dtype.kind in NUMERIC_KINDS | {"b"}:
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
            block = as_array(values)
            if block is not None and block.dtype.kind in ORJSON_KINDS:
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
