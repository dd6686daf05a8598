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

from neve.server.protocol.arrow_format import encode_arrow_response, parse_arrow_request
from neve.server.protocol.columns import (
    OutputColumns,
    ServiceRequest,
    json_ready,
    output_columns,
    request_params,
    to_column,
)
from neve.server.protocol.json_codec import dumps, error_body, loads, may_hold_booleans
from neve.server.protocol.service_format import encode_service_response, parse_service_request
from neve.server.protocol.v2 import (
    V2_DATATYPES,
    encode_v2_response,
    parse_v2_request,
    v2_response_body,
    v2_tensor_metadata,
)

__all__ = [
    "OutputColumns",
    "ServiceRequest",
    "V2_DATATYPES",
    "dumps",
    "encode_arrow_response",
    "encode_service_response",
    "encode_v2_response",
    "error_body",
    "json_ready",
    "loads",
    "may_hold_booleans",
    "output_columns",
    "parse_arrow_request",
    "parse_service_request",
    "parse_v2_request",
    "request_params",
    "to_column",
    "v2_response_body",
    "v2_tensor_metadata",
]
