"""A service: status, instances, endpoints with ready-to-paste snippets, spec, actions
(suspend / resume / scale, for the owner or OPERATE) and the live log tail."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response

from neve.catalog import lookup
from neve.catalog import models as m
from neve.console import render
from neve.console.views import Viewer, attempt, qualified
from neve.errors import InvalidArgumentError, NeveError
from neve.identifiers import QualifiedName
from neve.services.spec import BUILD_CONTAINER_NAME, CONTAINER_NAME

#: Lines of log the page shows before it follows new ones.
TAIL_LINES = 200
#: What a finished action says on the page it returns to (only these: no text from the URL).
DONE = {
    "suspend": "Service suspended.",
    "resume": "Service resumed.",
    "scale": "Instance limits changed.",
}
#: Containers the log panel offers ("events" are the supervisor's notes on the service).
CONTAINERS = (CONTAINER_NAME, BUILD_CONTAINER_NAME, "events")


def service_url(qn: QualifiedName) -> str:
    return f"{render.PREFIX}/services/{render.object_path(qn.database, qn.schema, qn.name)}"


def may_operate(viewer: Viewer, qn: QualifiedName) -> bool:
    """Whether the role may suspend, resume or scale: the same check ALTER SERVICE makes."""
    account = viewer.account
    with account.catalog.transaction() as s:
        svc = lookup.in_schema(s, m.Service, qn, "service")
        return account.security.has_privilege(s, viewer.ctx, "OPERATE", svc)


def _example(sql_type: str) -> Any:
    """A placeholder argument of a signature type (the snippet must be valid as pasted)."""
    kind = sql_type.upper()
    if kind in ("STRING", "VARCHAR", "TEXT"):
        return "text"
    if kind in ("BOOL", "BOOLEAN"):
        return False
    if kind.startswith(("FLOAT", "DOUBLE", "DECIMAL", "NUMBER", "REAL")):
        return 0.0
    if kind.startswith(("INT", "BIGINT", "SMALLINT", "TINYINT", "UINT")):
        return 0
    return None


def snippets(url: str | None, method: str | None, signature: dict | None) -> dict[str, str]:
    """curl and Python calls of ``method`` at the ingress ``url``, with one example row."""
    if not url or not method:
        return {}
    inputs = (signature or {}).get("inputs", [])
    row = [0, *[_example(str(f.get("type", ""))) for f in inputs]]
    body = json.dumps({"data": [row]})
    curl = (
        f"curl -X POST '{url}/{method}' \\\n"
        '  -H "Authorization: Bearer $NEVE_TOKEN" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d '{body}'"
    )
    python = (
        "import os, httpx\n\n"
        f'resp = httpx.post("{url}/{method}",\n'
        f"                  json={body},\n"
        '                  headers={"Authorization": f"Bearer {os.environ[\'NEVE_TOKEN\']}"})\n'
        "print(resp.json())"
    )
    return {"curl": curl, "python": python}


def service_page(viewer: Viewer, *, message: str | None = None, status: int = 200) -> Response:
    account, ctx = viewer.account, viewer.ctx
    qn = qualified(viewer.path, "service")
    services = account.services
    svc, error = attempt(services.describe_service, ctx, qn)
    if svc is None:
        return viewer.page("error.html", http_status=404, title=str(qn), message=error)
    instances, instances_error = attempt(services.show_containers, ctx, qn)
    endpoints, _ = attempt(services.show_endpoints, ctx, qn)
    methods, _ = attempt(services.service_methods, ctx, qn)
    methods = methods or {}
    first = next(iter(methods), None)
    ingress = next((e.get("ingress_url") for e in endpoints or [] if e.get("ingress_url")), None)
    instance = viewer.query.get("instance", "0")
    container = viewer.query.get("container", CONTAINER_NAME)
    log = _log_start(viewer, qn, svc, instance, container)
    return viewer.page(
        "service.html",
        http_status=status,
        svc=svc,
        qn=qn,
        url=service_url(qn),
        instances=instances or [],
        instances_error=instances_error,
        endpoints=endpoints or [],
        ingress_url=ingress,
        methods=methods,
        snippets=snippets(ingress, first, methods.get(first) if first else None),
        spec=svc.get("spec"),
        can_operate=may_operate(viewer, qn),
        message=message or DONE.get(viewer.query.get("done", "")),
        containers=CONTAINERS,
        instance=instance,
        container=container,
        log=log,
    )


def _log_start(
    viewer: Viewer, qn: QualifiedName, svc: dict, instance: str, container: str
) -> dict[str, Any]:
    """The log panel's first text and the offset to follow from (taken before the tail, so a
    line written in between shows twice rather than never)."""
    services, ctx = viewer.account.services, viewer.ctx
    if container == BUILD_CONTAINER_NAME:
        job = svc.get("build_job")
        if not job:
            return {"text": "", "offset": None, "error": "this service has no build job"}
        text, error = attempt(services.get_service_logs, ctx, job, 0, container, TAIL_LINES)
        # a build log is re-read whole while the page is open (offset 0: "replace" mode)
        return {"text": text or "", "offset": None if error else 0, "error": error, "job": job}
    follow, error = attempt(
        services.follow_service_log, ctx, str(qn), _int(instance), container, -1
    )
    if error:
        return {"text": "", "offset": None, "error": error}
    text, error = attempt(services.get_service_logs, ctx, str(qn), instance, container, TAIL_LINES)
    return {"text": text or "", "offset": follow["offset"], "error": error}


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"instance must be an integer, got {value!r}") from None


def log_follow(viewer: Viewer) -> Response:
    """JSON ``{"text", "offset"}``: what the log got since ``offset`` (the page polls it)."""
    qn = qualified(viewer.path, "service")
    q = viewer.query
    services = viewer.account.services
    try:
        if q.get("container") == BUILD_CONTAINER_NAME:  # a build job's log: the whole text
            job = services.describe_service(viewer.ctx, qn).get("build_job")
            if not job:
                raise InvalidArgumentError(f"service {qn} has no build job")
            text = services.get_service_logs(viewer.ctx, job, 0, BUILD_CONTAINER_NAME, TAIL_LINES)
            return JSONResponse({"text": text, "offset": 0, "replace": True})
        result = services.follow_service_log(
            viewer.ctx,
            str(qn),
            _int(q.get("instance", "0")),
            q.get("container", CONTAINER_NAME),
            _int(q.get("offset", "-1")),
        )
    except NeveError as err:
        return JSONResponse(err.to_dict(), status_code=err.http_status)
    return JSONResponse(result)


def service_action(viewer: Viewer) -> Response:
    """POST suspend / resume / scale through ALTER SERVICE's manager call (its privilege check
    decides); back to the page with what happened."""
    qn = qualified(viewer.path, "service")
    form = viewer.form
    action = form.get("action", "")
    try:
        if action == "suspend":
            viewer.account.services.alter_service(viewer.ctx, qn, suspend=True)
        elif action == "resume":
            viewer.account.services.alter_service(viewer.ctx, qn, resume=True)
        elif action == "scale":
            lo, hi = _int(form.get("min_instances", "")), _int(form.get("max_instances", ""))
            viewer.account.services.alter_service(
                viewer.ctx, qn, min_instances=lo, max_instances=hi
            )
        else:
            raise InvalidArgumentError(f"unknown action {action!r}: suspend, resume or scale")
    except NeveError as err:
        return service_page(
            viewer, message=f"{action} refused: {err.message}", status=err.http_status
        )
    return RedirectResponse(f"{service_url(qn)}?done={action}", status_code=303)
