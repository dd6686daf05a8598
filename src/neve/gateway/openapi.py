"""OpenAPI 3.1 document for one service's ingress, generated from its methods' signatures."""

from __future__ import annotations

from typing import Any

from neve.server.arrow_ipc import ARROW_STREAM as ARROW

_JSON_TYPES: dict[str, dict[str, Any]] = {
    "FLOAT": {"type": "number", "format": "float"},
    "DOUBLE": {"type": "number", "format": "double"},
    "BOOL": {"type": "boolean"},
    "STRING": {"type": "string"},
    "BYTES": {"type": "string", "contentEncoding": "base64"},
    "TIMESTAMP_NTZ": {"type": "string", "format": "date-time"},
}


def feature_schema(feature: dict[str, Any]) -> dict[str, Any]:
    kind = str(feature.get("type", "STRING"))
    if kind.startswith(("INT", "UINT")):
        schema: dict[str, Any] = {"type": "integer", "format": kind.lower()}
    else:
        schema = dict(_JSON_TYPES.get(kind, {}))
    for size in reversed(feature.get("shape") or []):
        schema = {"type": "array", "items": schema}
        if isinstance(size, int) and size > 0:
            schema |= {"minItems": size, "maxItems": size}
    if feature.get("nullable", True) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    schema["title"] = str(feature.get("name", ""))
    return schema


def _method_operation(method: str, signature: dict[str, Any]) -> dict[str, Any]:
    inputs = list(signature.get("inputs") or [])
    outputs = list(signature.get("outputs") or [])
    index = {"type": "integer", "title": "row index", "minimum": 0}
    row = {
        "type": "array",
        "prefixItems": [index, *(feature_schema(f) for f in inputs)],
        "minItems": len(inputs) + 1,
        "maxItems": len(inputs) + 1,
    }
    out_row = {
        "type": "array",
        "prefixItems": [
            index,
            {
                "type": "object",
                "properties": {str(f["name"]): feature_schema(f) for f in outputs},
                "required": [str(f["name"]) for f in outputs],
            },
        ],
        "minItems": 2,
        "maxItems": 2,
    }
    arg_names = ", ".join(str(f["name"]) for f in inputs)
    return {
        "operationId": method,
        "summary": f"Call {method}({arg_names})",
        "description": (
            "Rows are [row_index, " + (arg_names or "") + "] in signature order (FLAT). "
            'The WIDE form [row_index, {"<input>": value}] and pandas "dataframe_split" / '
            '"dataframe_records" bodies are accepted too. One output row per input row, '
            "matched by row_index. Columnar: an Arrow IPC stream with one column per input "
            f"({ARROW}) is answered with one column per output, row for row."
        ),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"type": "array", "items": row}},
                    }
                },
                ARROW: {"schema": {"type": "string", "contentMediaType": ARROW}},
            },
        },
        "responses": {
            "200": {
                "description": "one output row per input row",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"data": {"type": "array", "items": out_row}},
                        }
                    },
                    ARROW: {"schema": {"type": "string", "contentMediaType": ARROW}},
                },
            },
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "413": {"$ref": "#/components/responses/Error"},
            "429": {
                "description": "the service is at capacity; retry after Retry-After seconds",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            },
            "503": {"$ref": "#/components/responses/Error"},
        },
    }


def ingress_openapi(
    service: str, signatures: dict[str, dict[str, Any]], *, server_url: str | None = None
) -> dict[str, Any]:
    """The document served at ``GET <ingress>/openapi.json``."""
    paths = {
        f"/{name.lower()}": {"post": _method_operation(name.lower(), sig)}
        for name, sig in sorted(signatures.items())
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"neve service {service}",
            "version": "1",
            "description": (
                "Ingress endpoint of a neve model service. Authenticate with "
                "'Authorization: Bearer <token>' (session token, programmatic access token or "
                "key-pair JWT) or 'Authorization: Snowflake Token=\"<token>\"'. The caller's "
                "role needs USAGE on the service."
            ),
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            }
                        }
                    },
                }
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
