"""REST routes of services (``neve.services.manager.ServiceManager`` over HTTP).

Path segments name objects as identifiers (``ml`` and ``ML`` are the same database; a
double-quoted, URL-encoded segment keeps its case)::

    POST   /api/v1/services                              create_service (body below) -> DESCRIBE row
    GET    /api/v1/services[?database=&schema=&in_compute_pool=&like=]   SHOW SERVICES rows
    GET    /api/v1/services/{db}/{schema}/{name}         DESCRIBE SERVICE
    PATCH  /api/v1/services/{db}/{schema}/{name}         {"suspend"?, "resume"?, "min_instances"?,
                                                          "max_instances"?, "auto_suspend_secs"?,
                                                          "comment"?} -> DESCRIBE row
    DELETE /api/v1/services/{db}/{schema}/{name}[?if_exists=true]
    GET    .../{name}/status                             SYSTEM$GET_SERVICE_STATUS entries
    GET    .../{name}/containers                         SHOW SERVICE CONTAINERS rows
    GET    .../{name}/endpoints                          SHOW ENDPOINTS rows
    GET    .../{name}/methods                            {method: signature}
    GET    .../{name}/logs?instance=0&container=model-inference&last=100   {"text": ...}
    POST   .../{name}/invoke/{method}                    {"data": [[idx, a, b], ...],
                                                          "timeout_s"?} -> {"data": [[idx, {..}]]}
           (or an Arrow IPC stream of input columns, ?timeout_s=&params=&partition_column=;
           answered with output columns). A table function (partitioned method) answers its
           own rows (numbered from 0): once per partition_column value, all rows one
           partition without it.
    GET    /api/v1/build_jobs/{job}/logs[?last=]               a build job's log {"text": ...}

The create body holds ``model``, ``version``, ``service_name`` (qualified or resolved against
the context), ``compute_pool``, ``image_repo`` and optionally ``ingress_enabled``,
``max_instances``, ``min_instances``, ``cpu_requests``, ``memory_requests``, ``gpu_requests``,
``num_workers``, ``max_batch_rows``, ``build_external_access_integrations``,
``image_build_compute_pool``, ``force_rebuild``, ``auto_suspend_secs``, ``comment``, ``block``
(default false over HTTP: the client polls the status and shows progress).

An ``X-Neve-Context`` header (JSON ``{"role", "database", "schema"}``) switches the role (only
to one granted to the user) and sets the current database/schema, as on the other routes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.routing import Route

from neve import kinds
from neve.context import RequestContext
from neve.control.routes._base import Call, body_fields, endpoint, parse_json, query_flag
from neve.errors import InvalidArgumentError
from neve.identifiers import QualifiedName, ident
from neve.server import arrow_ipc

PREFIX = "/api/v1/services"
SERVICE = PREFIX + "/{db}/{schema}/{name}"
CREATE_FIELDS = kinds.MODEL_SERVICE.body_fields("create", "block")
REQUIRED_FIELDS = ("model", "version", "service_name", "compute_pool", "image_repo")
ALTER_FIELDS = kinds.SERVICE.body_fields("alter", "suspend", "resume")
#: Most rows one invoke request may carry (the client sends bigger inputs in several requests).
MAX_INVOKE_ROWS = 100_000


def _ctx(call: Call) -> RequestContext:
    ctx = call.ctx
    header = call.request.headers.get("x-neve-context")
    if not header:
        return ctx
    try:
        wanted = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise InvalidArgumentError("X-Neve-Context header is not valid JSON") from None
    if not isinstance(wanted, dict):
        raise InvalidArgumentError("X-Neve-Context must be an object {role, database, schema}")
    changes = {k: wanted[k] for k in ("database", "schema") if wanted.get(k)}
    if changes:
        ctx = ctx.with_(**changes)
    role = wanted.get("role")
    if role and role != ctx.role:
        ctx = call.account.security.use_role(ctx, role)
    return ctx


def _service(call: Call) -> QualifiedName:
    p = call.path
    return QualifiedName(
        ident(p["db"], kind="database name"),
        ident(p["schema"], kind="schema name"),
        ident(p["name"], kind="service name"),
    )


def _int_query(call: Call, name: str) -> int | None:
    value = call.query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"query parameter {name} must be an integer") from None


@endpoint(status=201)
def create_service(call: Call) -> dict:
    body = body_fields(call, CREATE_FIELDS, what="create service")
    missing = [f for f in REQUIRED_FIELDS if not body.get(f)]
    if missing:
        raise InvalidArgumentError(f"create service: missing field(s) {', '.join(missing)}")
    body.setdefault("block", False)
    return call.account.services.create_service(_ctx(call), **body)


@endpoint
def show_services(call: Call) -> list[dict]:
    q = call.query
    ctx = _ctx(call)
    scope: dict[str, Any] = {}
    if q.get("schema"):
        db = q.get("database")
        scope["in_schema"] = f"{db}.{q['schema']}" if db else q["schema"]
    elif q.get("database"):
        scope["in_database"] = q["database"]
    return call.account.services.show_services(
        ctx, in_compute_pool=q.get("in_compute_pool") or None, like=q.get("like") or None, **scope
    )


@endpoint
def describe_service(call: Call) -> dict:
    return call.account.services.describe_service(_ctx(call), _service(call))


@endpoint
def alter_service(call: Call) -> dict:
    body = body_fields(call, ALTER_FIELDS, what="alter service")
    return call.account.services.alter_service(_ctx(call), _service(call), **body)


@endpoint
def drop_service(call: Call) -> dict:
    call.account.services.drop_service(
        _ctx(call), _service(call), if_exists=query_flag(call, "if_exists")
    )
    return {"status": f"{call.path['name']} successfully dropped."}


@endpoint
def service_status(call: Call) -> list[dict]:
    return call.account.services.get_service_status(_ctx(call), _service(call))


@endpoint
def service_containers(call: Call) -> list[dict]:
    return call.account.services.show_containers(_ctx(call), _service(call))


@endpoint
def service_endpoints(call: Call) -> list[dict]:
    return call.account.services.show_endpoints(_ctx(call), _service(call))


@endpoint
def service_metrics(call: Call) -> Response:
    """Prometheus text of every instance, labelled service and instance (MONITOR)."""
    page = call.account.services.service_metrics(_ctx(call), _service(call))
    return Response(page, media_type="text/plain; version=0.0.4; charset=utf-8")


@endpoint
def service_methods(call: Call) -> dict:
    return call.account.services.service_methods(_ctx(call), _service(call))


@endpoint
def service_logs(call: Call) -> dict:
    qn = _service(call)
    if "offset" in call.query:  # follow: what was appended since that byte
        return call.account.services.follow_service_log(
            _ctx(call),
            str(qn),
            _int_query(call, "instance") or 0,
            call.query.get("container") or "model-inference",
            -1 if call.query["offset"] == "end" else _int_query(call, "offset") or 0,
        )
    text = call.account.services.get_service_logs(
        _ctx(call),
        str(qn),
        _int_query(call, "instance") or 0,
        call.query.get("container") or "model-inference",
        _int_query(call, "last"),
    )
    return {"text": text}


@endpoint
def job_logs(call: Call) -> dict:
    text = call.account.services.get_service_logs(
        _ctx(call), call.path["job"], 0, "model-build", _int_query(call, "last")
    )
    return {"text": text}


@endpoint(raw_body=True)
def invoke(call: Call) -> dict | Response:
    if arrow_ipc.is_arrow(call.request.headers.get("content-type")):
        return _invoke_arrow(call)
    call.body = parse_json(call.raw) if call.raw else None
    body = body_fields(call, {"data", "timeout_s"}, what="invoke")
    rows = body.get("data")
    if not isinstance(rows, list) or not all(isinstance(r, list) and r for r in rows):
        raise InvalidArgumentError(
            'invoke: "data" must be a list of rows [row_index, arg1, arg2, ...]'
        )
    _check_row_count(len(rows))
    timeout = float(body.get("timeout_s") or 300)
    answer = call.account.services.invoke_rows(
        _ctx(call), _service(call), call.path["method"], rows, timeout_s=timeout
    )
    return {"data": answer}


def _check_row_count(n: int) -> None:
    if n > MAX_INVOKE_ROWS:
        raise InvalidArgumentError(
            f"invoke: {n} rows in one request; send at most {MAX_INVOKE_ROWS} per request"
        )


def _invoke_arrow(call: Call) -> Response:
    """An Arrow IPC stream of input columns in, a stream of output columns out."""
    import pyarrow as pa

    try:
        table = arrow_ipc.read_stream(call.raw)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgumentError(f"invoke: the body is not an Arrow IPC stream: {exc}") from None
    _check_row_count(table.num_rows)
    try:
        timeout = float(call.query.get("timeout_s") or 300)
    except ValueError:
        raise InvalidArgumentError("invoke: timeout_s must be a number of seconds") from None
    extra: dict[str, Any] = {}
    if call.query.get("params"):
        params = parse_json(call.query["params"].encode())
        if not isinstance(params, dict):
            raise InvalidArgumentError("invoke: params must be a JSON object of values")
        extra["params"] = params
    if call.query.get("partition_column"):
        extra["partition_column"] = call.query["partition_column"]
    outputs = call.account.services.invoke_arrow(
        _ctx(call), _service(call), call.path["method"], table, timeout_s=timeout, **extra
    )
    return Response(arrow_ipc.write_stream(outputs), media_type=arrow_ipc.ARROW_STREAM)


routes = [
    Route(PREFIX, create_service, methods=["POST"]),
    Route(PREFIX, show_services, methods=["GET"]),
    Route(SERVICE, describe_service, methods=["GET"]),
    Route(SERVICE, alter_service, methods=["PATCH"]),
    Route(SERVICE, drop_service, methods=["DELETE"]),
    Route(SERVICE + "/status", service_status, methods=["GET"]),
    Route(SERVICE + "/containers", service_containers, methods=["GET"]),
    Route(SERVICE + "/endpoints", service_endpoints, methods=["GET"]),
    Route(SERVICE + "/methods", service_methods, methods=["GET"]),
    Route(SERVICE + "/metrics", service_metrics, methods=["GET"]),
    Route(SERVICE + "/logs", service_logs, methods=["GET"]),
    Route(SERVICE + "/invoke/{method}", invoke, methods=["POST"]),
    Route("/api/v1/build_jobs/{job}/logs", job_logs, methods=["GET"]),
]
