"""Services: SHOW / CREATE / ALTER / DESCRIBE / DROP, endpoints, containers, logs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from neve.context import RequestContext
from neve.errors import InvalidArgumentError, ObjectNotFoundError
from neve.sql.parser import Statement
from neve.sql.result import SqlResult
from neve.sql.statements.base import (
    _created,
    _dropped,
    _executed,
    _lower_props,
    _one,
    _result,
    _scope_kwargs,
    handles,
)

if TYPE_CHECKING:
    from neve.sql.managers import EngineParts


@handles("SHOW SERVICES")
def _show_services(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    rows = engine.account.services.show_services(ctx, **_scope_kwargs(st))
    return _result(st.kind, rows, st.like)


@handles("CREATE SERVICE")
def _create_service(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    props = st.props
    started = datetime.now(UTC)
    row = engine.account.services.create_service_from_specification(
        ctx,
        service_name=st.name or "",
        compute_pool=st.args["compute_pool"],
        specification=st.args["specification"],
        if_not_exists=st.if_not_exists,
        min_instances=props.get("MIN_INSTANCES"),
        max_instances=props.get("MAX_INSTANCES"),
        auto_resume=props.get("AUTO_RESUME", True),
        auto_suspend_secs=props.get("AUTO_SUSPEND_SECS"),
        external_access_integrations=props.get("EXTERNAL_ACCESS_INTEGRATIONS") or (),
        comment=props.get("COMMENT"),
    )
    return _created(f"Service {row['name']}", row, started)


@handles("DESCRIBE SERVICE")
def _describe_service(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _one(engine.account.services.describe_service(ctx, st.name or ""))


@handles("ALTER SERVICE")
def _alter_service(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    action = st.args["action"]
    services = engine.account.services
    if st.if_exists:
        try:
            services.describe_service(ctx, st.name or "")
        except ObjectNotFoundError:
            return _executed()
    if action == "SUSPEND":
        services.alter_service(ctx, st.name or "", suspend=True)
    elif action == "RESUME":
        services.alter_service(ctx, st.name or "", resume=True)
    else:
        services.alter_service(ctx, st.name or "", **_lower_props(st.props))
    return _executed()


@handles("DROP SERVICE")
def _drop_service(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    engine.account.services.drop_service(ctx, st.name or "", if_exists=st.if_exists)
    return _dropped(st.name.split(".")[-1] if st.name else "", "service name")


@handles("SHOW ENDPOINTS")
def _show_endpoints(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.services.show_endpoints(ctx, st.name or ""))


@handles("SHOW SERVICE CONTAINERS")
def _show_containers(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:
    return _result(st.kind, engine.account.services.show_containers(ctx, st.name or ""))


@handles("CALL SYSTEM$GET_SERVICE_LOGS")
def _service_logs(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:

    args = st.args["args"]
    name, instance, container = args[0], args[1], args[2]
    last = args[3] if len(args) > 3 else None
    if not isinstance(name, str) or not isinstance(container, str):
        raise InvalidArgumentError(
            "SYSTEM$GET_SERVICE_LOGS(service_name, instance_id, container_name[, last_n_lines]): "
            "service and container names are strings"
        )
    if not isinstance(instance, int):
        instance = _int_arg(instance, "instance_id")
    if last is not None and not isinstance(last, int):
        last = _int_arg(last, "last_n_lines")
    text = engine.account.services.get_service_logs(ctx, name, instance, container, last)
    return SqlResult(columns=["SYSTEM$GET_SERVICE_LOGS"], rows=[[text]], types=["VARCHAR"])


@handles("CALL SYSTEM$GET_SERVICE_STATUS")
def _service_status(engine: EngineParts, ctx: RequestContext, st: Statement) -> SqlResult:

    name = st.args["args"][0]
    if not isinstance(name, str):
        raise InvalidArgumentError("SYSTEM$GET_SERVICE_STATUS(service_name): a string")
    status = engine.account.services.get_service_status(ctx, name)
    text = orjson.dumps(status, default=_json_default).decode()
    return SqlResult(columns=["SYSTEM$GET_SERVICE_STATUS"], rows=[[text]], types=["VARCHAR"])


def _int_arg(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be an integer, got {value!r}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)
