"""Catalog rows -> the dicts SHOW SERVICES, DESCRIBE SERVICE, SHOW ENDPOINTS, SHOW SERVICE
CONTAINERS and SYSTEM$GET_SERVICE_STATUS answer with (column names as the SQL surface lists them).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.identifiers import QualifiedName, quote
from neve.services import states
from neve.services.spec import CONTAINER_NAME, format_bytes

ENDPOINT_NAME = "inference"


def dns_name(qn: QualifiedName, account_name: str) -> str:
    """A stable internal name for the service (what instances would resolve in a cluster)."""
    parts = [qn.name, qn.schema, qn.database]
    label = ".".join(p.lower().replace("_", "-").replace("$", "-") for p in parts)
    return f"{label}.svc.{account_name.lower()}.internal"


def path_url(qn: QualifiedName, control_url: str | None) -> str | None:
    """The ingress URL of a service: ``<control url>/svc/<db>.<schema>.<name>``; a method is
    ``<ingress_url>/<method>`` (DESIGN's ``POST <ingress_url>/predict``)."""
    if not control_url:
        return None
    return f"{control_url.rstrip('/')}/svc/{qn.database}.{qn.schema}.{qn.name}"


def image_name(s: Session, svc: m.Service) -> str | None:
    if svc.image_id is None:
        return None
    image = s.get(m.Image, svc.image_id)
    if image is None:
        return None
    repo = s.get(m.ImageRepository, image.repository_id)
    if repo is None:
        return image.digest
    rq = lookup.qualified(s, repo.schema_id, repo.name)
    return f"/{rq.database}/{rq.schema}/{rq.name}/model-env:{image.digest[:16]}".lower()


def instance_address(inst: m.ServiceInstance) -> str | None:
    if not inst.host or not inst.port:
        return None
    host = f"[{inst.host}]" if ":" in inst.host else inst.host
    return f"http://{host}:{inst.port}"


def service_row(
    s: Session,
    svc: m.Service,
    *,
    account_name: str,
    control_url: str | None,
) -> dict[str, Any]:
    qn = lookup.qualified(s, svc.schema_id, svc.name)
    spec = svc.spec or {}
    pool = s.get(m.ComputePool, svc.pool_id)
    instances = list(svc.instances)
    ready = [i for i in instances if i.status == states.INSTANCE_READY]
    model_qn = spec.get("model")
    ingress_host = svc.ingress_host if svc.ingress_enabled else None
    return {
        "name": svc.name,
        "database_name": qn.database,
        "schema_name": qn.schema,
        "owner": svc.owner_role,
        "compute_pool": pool.name if pool is not None else None,
        "status": svc.status,
        "state": svc.status,
        "status_reason": svc.status_reason,
        "min_instances": svc.min_instances,
        "max_instances": svc.max_instances,
        "current_instances": len(ready),
        "target_instances": len(instances),
        "dns_name": dns_name(qn, account_name),
        "inference_endpoint": ingress_host,
        "ingress_url": path_url(qn, control_url) if svc.ingress_enabled else None,
        "internal_endpoint": ",".join(a for a in map(instance_address, ready) if a) or None,
        "model_name": model_qn,
        "model_version": spec.get("version"),
        "ingress_enabled": bool(svc.ingress_enabled),
        "auto_suspend_secs": svc.auto_suspend_secs,
        "comment": svc.comment,
        "created_on": svc.created_on,
        "updated_on": svc.updated_on,
        "last_request_on": svc.last_request_on,
        "spec": json.dumps(public_spec(spec), sort_keys=True),
        "qualified_name": str(qn),
    }


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as users see it (no internal bookkeeping keys)."""
    out = {k: v for k, v in spec.items() if not k.startswith("_") and k != "create_args"}
    res = spec.get("resources") or {}
    out["resources"] = {
        "cpu": res.get("cpu"),
        "memory": format_bytes(res.get("memory_bytes")),
        "gpu": res.get("gpu") or 0,
    }
    return out


def endpoint_rows(
    qn: QualifiedName, svc: m.Service, *, control_url: str | None, control_port: int | None
) -> list[dict[str, Any]]:
    return [
        {
            "name": ENDPOINT_NAME,
            "port": control_port,
            "protocol": "HTTP",
            "ingress_enabled": bool(svc.ingress_enabled),
            # a URL that works as is (the reference platform's column is a host name: that
            # host, which needs a Host header or a resolver for *.localhost, is ingress_host)
            "ingress_url": path_url(qn, control_url) if svc.ingress_enabled else None,
            "ingress_host": svc.ingress_host if svc.ingress_enabled else None,
            "is_public": bool(svc.ingress_enabled),
            "target_instances": len(svc.instances),
        }
    ]


def container_rows(s: Session, svc: m.Service) -> list[dict[str, Any]]:
    qn = lookup.qualified(s, svc.schema_id, svc.name)
    image = image_name(s, svc)
    return [
        {
            "database_name": qn.database,
            "schema_name": qn.schema,
            "service_name": qn.name,
            "instance_id": str(inst.instance_index),
            "container_name": CONTAINER_NAME,
            "status": inst.status,
            "message": instance_message(inst),
            "image_name": image,
            "restart_count": inst.restart_count,
            "start_time": inst.started_on,
            "host": inst.host,
            "port": inst.port,
            "pid": inst.pid,
            "node": inst.node,
        }
        for inst in svc.instances
    ]


def instance_message(inst: m.ServiceInstance) -> str:
    if inst.status_reason:
        return inst.status_reason
    return {
        states.INSTANCE_READY: "Running",
        states.INSTANCE_STARTING: "Starting: loading the model",
        states.INSTANCE_PENDING: "Waiting to be scheduled",
        states.INSTANCE_FAILED: "Failed",
    }.get(inst.status, inst.status)


def status_rows(s: Session, svc: m.Service) -> list[dict[str, Any]]:
    """SYSTEM$GET_SERVICE_STATUS: one entry per instance (one for the service when it has none)."""
    qn = lookup.qualified(s, svc.schema_id, svc.name)
    image = image_name(s, svc)
    if not svc.instances:
        return [
            {
                "status": svc.status,
                "message": svc.status_reason or svc.status.title(),
                "containerName": CONTAINER_NAME,
                "instanceId": None,
                "serviceName": qn.name,
                "image": image,
                "restartCount": 0,
                "startTime": None,
            }
        ]
    return [
        {
            "status": inst.status,
            "message": instance_message(inst),
            "containerName": CONTAINER_NAME,
            "instanceId": str(inst.instance_index),
            "serviceName": qn.name,
            "image": image,
            "restartCount": inst.restart_count,
            "startTime": inst.started_on,
            "serviceStatus": svc.status,
            "health": "HEALTHY" if inst.status == states.INSTANCE_READY else "UNHEALTHY",
            "address": instance_address(inst),
        }
        for inst in svc.instances
    ]


def qualified_label(qn: QualifiedName) -> str:
    return f"{quote(qn.database)}.{quote(qn.schema)}.{quote(qn.name)}"
