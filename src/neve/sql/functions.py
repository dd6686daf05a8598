"""Service functions in the catalog: one SQL function per model method of a service.

Creating a service registers ``<SERVICE>_<METHOD>`` (e.g. ``FORECAST_SVC_PREDICT``) in the
service's schema with the method's signature; dropping the service drops them. The services
manager calls :func:`register_service_functions` / :func:`drop_service_functions` inside its own
catalog transaction, so a service and its functions appear and disappear together.

Each function carries batching options (stored in ``functions.options``):

- ``MAX_BATCH_ROWS``: rows per request to the service (default: the service's ``max_batch_rows``,
  else 1024),
- ``MAX_BATCH_RETRIES``: extra attempts for a batch that failed to reach the service (default 3),
- ``ON_BATCH_FAILURE``: ``ABORT`` (default: the query fails with the service's message) or
  ``RETURN_NULL`` (that batch's rows get NULL),
- ``BATCH_TIMEOUT_SECS``: how long one batch may take (default 300).

They are set with ``ALTER FUNCTION db.schema.svc_predict SET MAX_BATCH_ROWS = 500`` (the owner of
the service only) or at create time through the service spec's ``max_batch_rows``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.dataplane.targets import service_method_entries
from neve.errors import InvalidArgumentError, ObjectExistsError, ObjectNotFoundError
from neve.models.signature import FeatureSpec, ModelSignature

KIND_SERVICE = "SERVICE"

DEFAULT_MAX_BATCH_ROWS = 1024
DEFAULT_OPTIONS: dict[str, Any] = {
    "MAX_BATCH_ROWS": DEFAULT_MAX_BATCH_ROWS,
    "MAX_BATCH_RETRIES": 3,
    "ON_BATCH_FAILURE": "ABORT",
    "BATCH_TIMEOUT_SECS": 300,
}
ON_BATCH_FAILURE_VALUES = ("ABORT", "RETURN_NULL")

# Signature type -> DuckDB type / Arrow type.
DUCK_TYPES = {
    "INT8": "TINYINT",
    "INT16": "SMALLINT",
    "INT32": "INTEGER",
    "INT64": "BIGINT",
    "UINT8": "UTINYINT",
    "UINT16": "USMALLINT",
    "UINT32": "UINTEGER",
    "UINT64": "UBIGINT",
    "FLOAT": "FLOAT",
    "DOUBLE": "DOUBLE",
    "BOOL": "BOOLEAN",
    "STRING": "VARCHAR",
    "BYTES": "BLOB",
    "TIMESTAMP_NTZ": "TIMESTAMP",
}


def function_name(service_name: str, method: str) -> str:
    """``FORECAST_SVC`` + ``predict`` -> ``FORECAST_SVC_PREDICT``."""
    return f"{service_name}_{method.upper()}"


def validate_options(options: dict[str, Any], *, function: str) -> dict[str, Any]:
    """Check and normalize batching options; raise naming the function and the bad option."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        k = str(key).upper()
        if k not in DEFAULT_OPTIONS:
            raise InvalidArgumentError(
                f"function {function}: unknown option {key}; valid: {', '.join(DEFAULT_OPTIONS)}"
            )
        if k == "ON_BATCH_FAILURE":
            v = str(value).upper()
            if v not in ON_BATCH_FAILURE_VALUES:
                raise InvalidArgumentError(
                    f"function {function}: ON_BATCH_FAILURE must be ABORT or RETURN_NULL, "
                    f"got {value!r}"
                )
            out[k] = v
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentError(f"function {function}: {k} must be a number, got {value!r}")
        if k == "MAX_BATCH_ROWS" and not (isinstance(value, int) and value >= 1):
            raise InvalidArgumentError(f"function {function}: MAX_BATCH_ROWS must be >= 1")
        if k == "MAX_BATCH_RETRIES" and not (isinstance(value, int) and value >= 0):
            raise InvalidArgumentError(f"function {function}: MAX_BATCH_RETRIES must be >= 0")
        if k == "BATCH_TIMEOUT_SECS" and not value > 0:
            raise InvalidArgumentError(f"function {function}: BATCH_TIMEOUT_SECS must be > 0")
        out[k] = value
    return out


def effective_options(fn: m.Function) -> dict[str, Any]:
    return {**DEFAULT_OPTIONS, **(fn.options or {})}


def _signature_dict(spec: Any, *, method: str, service: str) -> dict:
    """Accept a signature dict, a ``MethodSpec``-style dict or a ``ModelSignature``."""
    if isinstance(spec, ModelSignature):
        return spec.to_dict()
    if hasattr(spec, "signature") and isinstance(spec.signature, ModelSignature):
        return spec.signature.to_dict()
    if isinstance(spec, dict):
        if "signature" in spec and "inputs" not in spec:
            spec = spec["signature"]
        if "inputs" in spec and "outputs" in spec:
            return ModelSignature.from_dict(spec).to_dict()  # validates the feature types
    raise InvalidArgumentError(
        f"service {service}: method {method!r} has no usable signature ({type(spec).__name__})"
    )


def register_service_functions(
    session: Session,
    service_row: m.Service,
    methods: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> list[m.Function]:
    """Create ``<SERVICE>_<METHOD>`` functions for ``service_row`` (call inside its transaction).

    ``methods`` maps method name to its signature (``{"inputs": [...], "outputs": [...]}``, or
    ``{"signature": {...}, "options": {...}}`` as in a model manifest). ``options`` are the
    initial batching options; by default MAX_BATCH_ROWS follows the service spec's
    ``max_batch_rows``.
    """
    if service_row.id is None:
        session.flush()
    spec = service_row.spec or {}
    base: dict[str, Any] = {}
    if spec.get("max_batch_rows"):
        base["MAX_BATCH_ROWS"] = int(spec["max_batch_rows"])
    created: list[m.Function] = []
    for method, sig in methods.items():
        name = function_name(service_row.name, method)
        opts = validate_options({**base, **(options or {})}, function=name)
        clash = session.scalar(
            select(m.Function).where(
                m.Function.schema_id == service_row.schema_id, m.Function.name == name
            )
        )
        if clash is not None:
            if clash.service_id == service_row.id and clash.method == method:
                clash.signature = _signature_dict(sig, method=method, service=service_row.name)
                created.append(clash)
                continue
            raise ObjectExistsError(
                f"function {name} already exists in the schema of service {service_row.name} "
                f"(it belongs to another service); choose another service name"
            )
        fn = m.Function(
            schema_id=service_row.schema_id,
            name=name,
            kind=KIND_SERVICE,
            service_id=service_row.id,
            method=method,
            signature=_signature_dict(sig, method=method, service=service_row.name),
            options=opts,
        )
        session.add(fn)
        created.append(fn)
    session.flush()
    return created


def drop_service_functions(session: Session, service_row: m.Service) -> None:
    """Delete the functions of ``service_row`` and the grants on them (inside its transaction)."""
    ids = list(
        session.scalars(select(m.Function.id).where(m.Function.service_id == service_row.id))
    )
    if not ids:
        return
    session.execute(
        delete(m.Grant).where(m.Grant.object_type == "FUNCTION", m.Grant.object_id.in_(ids))
    )
    session.execute(delete(m.Function).where(m.Function.id.in_(ids)))


class ServiceFunctionRows:
    """``register`` / ``drop`` of a service's functions, as the services manager is given them."""

    def register(self, s: Session, svc: m.Service, signatures: dict[str, Any]) -> None:
        register_service_functions(s, svc, signatures)

    def drop(self, s: Session, svc: m.Service) -> None:
        drop_service_functions(s, svc)


def service_functions(session: Session, service_row: m.Service) -> list[m.Function]:
    return list(
        session.scalars(
            select(m.Function)
            .where(m.Function.service_id == service_row.id)
            .order_by(m.Function.name)
        )
    )


# -- types --------------------------------------------------------------------------------------


def duck_type(feature: FeatureSpec) -> str:
    base = DUCK_TYPES[feature.type]
    return base + "[]" * len(feature.shape or [])


def return_duck_type(signature: ModelSignature) -> str:
    """A scalar for one output, a STRUCT of the named outputs otherwise."""
    if len(signature.outputs) == 1:
        return duck_type(signature.outputs[0])
    fields = ", ".join(
        f'"{f.name.replace(chr(34), chr(34) * 2)}" {duck_type(f)}' for f in signature.outputs
    )
    return f"STRUCT({fields})"


def describe_signature(signature: ModelSignature) -> str:
    """``(A DOUBLE, B DOUBLE) -> DOUBLE`` for error messages and SHOW FUNCTIONS."""
    args = ", ".join(f"{f.name} {duck_type(f)}" for f in signature.inputs)
    return f"({args}) RETURN {return_duck_type(signature)}"


# -- functions created on any service's endpoint ------------------------------------------------

#: Functions made by CREATE FUNCTION ... SERVICE = s ENDPOINT = e AS '/path' (not generated).
KIND_ENDPOINT = "ENDPOINT"
#: Functions made by CREATE EXTERNAL FUNCTION ... API_INTEGRATION = i AS '<url>' (neve.sql.external)
KIND_EXTERNAL = "EXTERNAL"
#: SQL types a CREATE FUNCTION may declare; the values travel in the method's own types.
SCALAR_SQL_TYPES = {
    "NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT",
    "FLOAT", "FLOAT4", "FLOAT8", "DOUBLE", "REAL", "VARCHAR", "STRING", "TEXT", "CHAR",
    "BOOLEAN", "BINARY", "VARBINARY", "TIMESTAMP", "TIMESTAMP_NTZ", "DATE",
}  # fmt: skip
STRUCT_SQL_TYPES = {"OBJECT", "VARIANT"}


def create_endpoint_function(
    session: Session,
    *,
    schema_id: int,
    name: str,
    label: str,
    service_row: m.Service,
    service_label: str,
    endpoint: str,
    endpoints: list[str],
    path: str,
    args: list[tuple[str, str]],
    returns: str,
    options: dict[str, Any],
    or_replace: bool,
) -> m.Function:
    """``CREATE [OR REPLACE] FUNCTION f(a NUMBER, ...) RETURNS t SERVICE = s ENDPOINT = e
    AS '/path'`` (call inside a transaction; privileges are the caller's to check).

    The function calls the method the path names with the service-function data format, like a
    generated one: its arguments are the method's inputs in order, so their count must match;
    a scalar return type needs a method with one output, OBJECT one with several."""
    if endpoint.upper() not in {e.upper() for e in endpoints}:
        raise ObjectNotFoundError(
            f"function {label}: service {service_label} has no endpoint {endpoint!r}; "
            f"endpoints: {', '.join(endpoints) or 'none'}"
        )
    route = str(path).strip().strip("/").lower().replace("-", "_")
    methods = service_method_entries(session, service_row)
    method = next((m_ for m_ in methods if m_.lower() == route), None)
    if method is None:
        raise ObjectNotFoundError(
            f"function {label}: service {service_label} has no path {path!r}; paths: "
            f"{', '.join('/' + m_.lower() for m_ in sorted(methods)) or 'none'}"
        )
    signature = ModelSignature.from_dict(
        _signature_dict(methods[method], method=method, service=service_label)
    )
    for arg_name, sql_type in args:
        if sql_type.upper() not in SCALAR_SQL_TYPES:
            raise InvalidArgumentError(
                f"function {label}: argument {arg_name} has type {sql_type}, which a service "
                "function cannot take; use NUMBER, FLOAT, VARCHAR, BOOLEAN, ..."
            )
    if len(args) != len(signature.inputs):
        raise InvalidArgumentError(
            f"function {label}: {len(args)} argument(s) declared, but {path} of service "
            f"{service_label} takes {len(signature.inputs)}: {describe_signature(signature)}"
        )
    kind = returns.upper()
    if len(signature.outputs) == 1 and kind not in SCALAR_SQL_TYPES:
        raise InvalidArgumentError(
            f"function {label}: RETURNS {returns}, but {path} answers one value "
            f"({duck_type(signature.outputs[0])}); declare a scalar type"
        )
    if len(signature.outputs) > 1 and kind not in STRUCT_SQL_TYPES:
        raise InvalidArgumentError(
            f"function {label}: RETURNS {returns}, but {path} answers "
            f"{len(signature.outputs)} values; declare RETURNS OBJECT"
        )
    opts = validate_options(options, function=label)
    existing = session.scalar(
        select(m.Function).where(m.Function.schema_id == schema_id, m.Function.name == name)
    )
    if existing is not None:
        if existing.kind != KIND_ENDPOINT:
            raise ObjectExistsError(
                f"function {label} already exists and belongs to its service (it is dropped "
                "with the service); choose another name"
            )
        if not or_replace:
            raise ObjectExistsError(
                f"function {label} already exists; use CREATE OR REPLACE FUNCTION or DROP "
                "FUNCTION first"
            )
        existing.service_id, existing.method = service_row.id, method
        existing.signature, existing.options = signature.to_dict(), opts
        session.flush()
        return existing
    fn = m.Function(
        schema_id=schema_id,
        name=name,
        kind=KIND_ENDPOINT,
        service_id=service_row.id,
        method=method,
        signature=signature.to_dict(),
        options=opts,
    )
    session.add(fn)
    session.flush()
    return fn


def drop_endpoint_function(session: Session, fn: m.Function, *, label: str) -> None:
    """DROP FUNCTION: only a created one (on an endpoint, or external); a generated function
    goes with its service."""
    if fn.kind not in (KIND_ENDPOINT, KIND_EXTERNAL):
        raise InvalidArgumentError(
            f"function {label} was generated for its service and is dropped with it "
            "(DROP SERVICE); it cannot be dropped alone"
        )
    session.execute(
        delete(m.Grant).where(m.Grant.object_type == "FUNCTION", m.Grant.object_id == fn.id)
    )
    session.delete(fn)
