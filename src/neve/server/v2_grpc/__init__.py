"""The Open Inference Protocol (V2) over gRPC, as ``tritonclient.grpc`` and KServe clients speak it.

``inference.GRPCInferenceService``: ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata and ModelInfer. Messages come from ``grpc_predict_v2.proto`` (generated module
next to this file). ``ModelInfer`` accepts tensors in ``raw_input_contents`` (the clients'
default) or in typed ``contents``, and answers in ``raw_output_contents``; it is turned into the
same V2 payload the HTTP route parses, so both forms share validation, batching and errors.

Model names: the served model's name (``--model-name``) or ``""`` is the default method (or
``parameters["method"]``); a method's name is that method. The ingress forwards
``<service>`` as ``""`` and ``<service>/<method>`` as ``<method>``.

This module holds the protocol's conversions and the status mapping; ``.frontend`` serves it
in an instance, ``neve.gateway.grpc_ingress`` forwards it in the ingress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from neve.errors import InvalidArgumentError, NeveError
from neve.server import v2_binary
from neve.server.v2_grpc import grpc_predict_v2_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
#: rpc name -> (request message, response message)
METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
#: The metadata key that carries what ``Retry-After`` carries over HTTP (seconds).
RETRY_AFTER = "retry-after"

# HTTP status of a NeveError -> gRPC status (the mapping the gRPC docs give for HTTP codes).
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
#: gRPC statuses a router may retry on another instance (nothing was computed).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

# V2 datatype -> the typed field of InferTensorContents that may carry it.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def grpc_status(err: NeveError) -> grpc.StatusCode:
    return _STATUS.get(err.http_status, grpc.StatusCode.INTERNAL)


def error_details(err: NeveError) -> str:
    """The status message: the error's code and message, as the HTTP error body has them."""
    return f"{err.code}: {err.message}" if getattr(err, "code", None) else err.message


def retry_metadata(err: NeveError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a refusal: when to come back, as Retry-After says over HTTP."""
    if err.http_status in (429, 503):
        return ((RETRY_AFTER, str(getattr(err, "retry_after_s", 1))),)
    return ()


def parameter_value(p: Any) -> Any:
    """An ``InferParameter`` -> its Python value."""
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def set_parameter(p: Any, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def parameters_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: parameter_value(v) for k, v in params.items()}


def request_payload(request: Any) -> dict[str, Any]:
    """A ``ModelInferRequest`` -> the V2 JSON payload the HTTP route reads, with numpy data."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            f"ModelInfer has {len(request.inputs)} inputs but {len(raw)} raw_input_contents: "
            "send raw contents for every input or for none",
            code="INVALID_REQUEST",
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data: Any = v2_binary.decode_tensor(raw[i], tensor.datatype, tensor.name)
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise InvalidArgumentError(
                    f"V2 input {tensor.name!r}: datatype {tensor.datatype!r} needs "
                    f"raw_input_contents; contents carry {', '.join(_CONTENTS_FIELD)}",
                    code="INVALID_REQUEST",
                )
            values = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                values = [_text(v) for v in values]
            data = np.asarray(values, dtype=object if tensor.datatype == "BYTES" else None)
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "data": data,
            }
        )
    payload: dict[str, Any] = {"inputs": inputs}
    if request.id:
        payload["id"] = request.id
    if request.parameters:
        payload["parameters"] = parameters_dict(request.parameters)
    if request.outputs:
        payload["outputs"] = [{"name": o.name} for o in request.outputs]
    return payload


def response_message(body: Mapping[str, Any], model_version: str = "") -> Any:
    """A V2 answer (``protocol.v2_response_body``) -> ``ModelInferResponse`` (raw contents)."""
    response = pb.ModelInferResponse(
        model_name=str(body.get("model_name", "")),
        model_version=model_version,
        id=str(body.get("id") or ""),
    )
    for tensor in body.get("outputs", []):
        out = response.outputs.add()
        out.name = tensor["name"]
        out.datatype = tensor["datatype"]
        out.shape.extend(int(d) for d in tensor["shape"])
        response.raw_output_contents.append(
            v2_binary.encode_tensor(tensor["data"], tensor["datatype"])
        )
    return response


def tensor_metadata(items: list[dict[str, Any]]) -> list[Any]:
    """``protocol.v2_tensor_metadata`` entries -> TensorMetadata messages."""
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=t["name"], datatype=t["datatype"], shape=[int(d) for d in t["shape"]]
        )
        for t in items
    ]


def _text(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def method_path(name: str) -> str:
    return f"/{SERVICE}/{name}"
