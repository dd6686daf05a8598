"""The binary tensor extension of the Open Inference Protocol (V2) over HTTP.

Clients such as ``tritonclient.http`` send, by default, a JSON header followed by raw tensor
bytes: the ``Inference-Header-Content-Length`` header gives the JSON's length, and each input
without ``"data"`` has ``"parameters": {"binary_data_size": n}``; its n bytes follow in input
order (little-endian, row-major; a BYTES element is a 4-byte little-endian length and then its
bytes). Outputs are answered the same way when an output asks for ``"binary_data": true`` or
the request sets ``"parameters": {"binary_data_output": true}``.

Pure functions over bytes and the JSON bodies of ``neve.server.protocol``; no HTTP here.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson

from neve.errors import InvalidArgumentError

HEADER = "inference-header-content-length"
# V2 datatype -> little-endian numpy dtype (BYTES handled apart).
DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def decompress(body: bytes, encoding: str | None) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate) was applied."""
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error, EOFError) as exc:
        raise InvalidArgumentError(
            f"request body is not valid {encoding}: {exc}", code="INVALID_REQUEST"
        ) from None
    raise InvalidArgumentError(
        f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none",
        code="INVALID_REQUEST",
    )


def split_request(body: bytes, header_length: str) -> dict[str, Any]:
    """A binary-extension request body -> its JSON payload with every binary input's values
    in ``"data"`` (a numpy array), as if it had been sent as JSON."""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if n < 0 or n > len(body):
        raise InvalidArgumentError(
            f"{HEADER} is {header_length!r} but the body has {len(body)} bytes",
            code="INVALID_REQUEST",
        )
    try:
        payload = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"the first {n} bytes of the body ({HEADER}) are not a valid JSON header: {exc}",
            code="INVALID_JSON",
        ) from None
    if not isinstance(payload, dict):
        raise InvalidArgumentError("the V2 JSON header must be an object", code="INVALID_REQUEST")
    offset = n
    for tensor in payload.get("inputs") or []:
        if not isinstance(tensor, dict):
            continue
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        name = tensor.get("name")
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise InvalidArgumentError(
                f"V2 input {name!r}: binary_data_size {size!r} runs past the body's "
                f"{len(body) - n} bytes of tensor data",
                code="INVALID_REQUEST",
            )
        tensor["data"] = decode_tensor(body[offset : offset + size], tensor.get("datatype"), name)
        offset += size
    if offset != len(body):
        raise InvalidArgumentError(
            f"the body has {len(body) - offset} bytes after the last binary input",
            code="INVALID_REQUEST",
        )
    return payload


def decode_tensor(raw: bytes, datatype: Any, name: Any) -> np.ndarray:
    """Raw tensor bytes -> a flat numpy array (BYTES: an object array of str, or bytes that
    are not UTF-8)."""
    if datatype == "BYTES":
        items: list[Any] = []
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidArgumentError(
                    f"V2 input {name!r}: truncated BYTES element length", code="INVALID_REQUEST"
                )
            length = int.from_bytes(raw[pos : pos + 4], "little")
            pos += 4
            if pos + length > len(raw):
                raise InvalidArgumentError(
                    f"V2 input {name!r}: BYTES element runs past its tensor",
                    code="INVALID_REQUEST",
                )
            chunk = raw[pos : pos + length]
            pos += length
            try:
                items.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                items.append(chunk)
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out
    dtype = DTYPES.get(str(datatype))
    if dtype is None:
        raise InvalidArgumentError(
            f"V2 input {name!r}: datatype {datatype!r} has no binary form here; datatypes: "
            f"{', '.join([*DTYPES, 'BYTES'])}",
            code="INVALID_REQUEST",
        )
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise InvalidArgumentError(
            f"V2 input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values",
            code="INVALID_REQUEST",
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype[1:] if dtype[0] == "<" else dtype)


def binary_outputs(payload: dict[str, Any]) -> tuple[bool, set[str]]:
    """(every output binary?, names of outputs asked for binary) from a V2 request."""
    params = payload.get("parameters")
    every = bool(isinstance(params, dict) and params.get("binary_data_output"))
    names = set()
    for out in payload.get("outputs") or []:
        if isinstance(out, dict):
            p = out.get("parameters")
            if isinstance(p, dict) and p.get("binary_data"):
                names.add(str(out.get("name")))
    return every, names


def encode_tensor(data: Any, datatype: str) -> bytes:
    """A tensor's values (a list or a numpy array, flat or nested) as raw V2 bytes."""
    if datatype == "BYTES":
        parts = []
        for value in np.asarray(data, dtype=object).ravel().tolist():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    values = np.asarray(data)
    if datatype == "BOOL":
        values = values.astype(bool)
    return np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()


def encode_response(
    body: dict[str, Any], every: bool, names: set[str]
) -> tuple[bytes, dict[str, str]]:
    """A V2 response body with the chosen outputs moved after the JSON header as raw bytes;
    the headers the answer needs (none when no output is binary)."""
    tail: list[bytes] = []
    for tensor in body.get("outputs", []):
        if not (every or tensor["name"] in names):
            continue
        raw = encode_tensor(tensor.pop("data"), tensor["datatype"])
        tensor["parameters"] = {**tensor.get("parameters", {}), "binary_data_size": len(raw)}
        tail.append(raw)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return header, {}
    return header + b"".join(tail), {"Inference-Header-Content-Length": str(len(header))}
