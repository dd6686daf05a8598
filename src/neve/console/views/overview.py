"""The overview: databases and schemas, compute pools, image repositories, services and recent
build jobs the role may see, narrowed by a search text and a service status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload
from starlette.responses import Response

from neve.catalog import models as m
from neve.console.views import Viewer, attempt
from neve.context import ACCOUNTADMIN, RequestContext
from neve.security.objects import OBJECT_TYPES
from neve.services import states
from neve.sql import objects

#: Build jobs listed (most recent first).
RECENT_JOBS = 20
#: Any of these on a service lets a role see it listed (as SHOW SERVICES decides).
SEE_SERVICE = ("MONITOR", "USAGE", "OPERATE")
SERVICE_STATUSES = ("RUNNING", "PENDING", "STARTING", "SUSPENDED", "SUSPENDING", "FAILED")


def _matches(q: str, *values: Any) -> bool:
    return not q or any(q in str(v or "").lower() for v in values)


class _Candidates(set):
    """Ids of services with some grant to the role's roles, and those roles."""

    roles: set[str]


def _maybe_visible(s: Any, security: Any, ctx: RequestContext) -> _Candidates | None:
    """A cheap necessary condition for seeing a service, in one query: the role (or a role it
    inherits) owns it or holds a grant on it. ``has_privilege`` still decides for each
    candidate; this only spares it the services it would refuse (None: no narrowing, e.g.
    for ACCOUNTADMIN, which sees everything)."""
    if ctx.role == ACCOUNTADMIN:
        return None
    roles = security.effective_roles(s, ctx.role)
    if ACCOUNTADMIN in roles:  # a role granted ACCOUNTADMIN sees everything too
        return None
    found = _Candidates(
        s.scalars(
            select(m.Grant.object_id).where(
                m.Grant.object_type == OBJECT_TYPES[m.Service],
                m.Grant.grantee_role.in_(roles),
            )
        )
    )
    found.roles = roles
    return found


def visible_services(account: Any, ctx: RequestContext) -> list[dict[str, Any]]:
    """The services the role may see, with what the list shows, in one catalog query (SHOW
    SERVICES builds its full rows with several queries per service); the same privilege test
    as SHOW SERVICES decides which are listed."""
    security = account.security
    query = (
        select(m.Service, m.Schema, m.Database, m.ComputePool)
        .join(m.Schema, m.Service.schema_id == m.Schema.id)
        .join(m.Database, m.Schema.database_id == m.Database.id)
        .outerjoin(m.ComputePool, m.Service.pool_id == m.ComputePool.id)
        .where(m.Service.status != "DELETED")
        .options(selectinload(m.Service.instances))
        .order_by(m.Database.name, m.Schema.name, m.Service.name)
    )
    out = []
    with account.catalog.transaction() as s:
        maybe = _maybe_visible(s, security, ctx)
        for svc, sch, db, pool in s.execute(query):
            if maybe is not None and svc.id not in maybe and svc.owner_role not in maybe.roles:
                continue  # neither owned nor granted anything: has_privilege would say no
            if not any(security.has_privilege(s, ctx, p, svc) for p in SEE_SERVICE):
                continue
            spec = svc.spec or {}
            out.append(
                {
                    "name": svc.name,
                    "database_name": db.name,
                    "schema_name": sch.name,
                    "qualified_name": f"{db.name}.{sch.name}.{svc.name}",
                    "status": svc.status,
                    "owner": svc.owner_role,
                    "compute_pool": pool.name if pool is not None else None,
                    "min_instances": svc.min_instances,
                    "max_instances": svc.max_instances,
                    "current_instances": sum(
                        1 for i in svc.instances if i.status == states.INSTANCE_READY
                    ),
                    "target_instances": len(svc.instances),
                    "model_name": spec.get("model"),
                    "model_version": spec.get("version"),
                    "comment": svc.comment,
                }
            )
    return out


def overview(viewer: Viewer) -> Response:
    account, ctx = viewer.account, viewer.ctx
    q = viewer.query.get("q", "").strip().lower()
    status = viewer.query.get("status", "").strip().upper()
    databases, db_error = attempt(objects.show_databases, account, ctx)
    schemas, _ = attempt(objects.show_schemas, account, ctx)
    pools, pool_error = attempt(account.compute.show_pools, ctx)
    repos, repo_error = attempt(account.environments.show_image_repositories, ctx)
    services, svc_error = attempt(visible_services, account, ctx)
    jobs, job_error = attempt(account.environments.show_jobs, ctx)
    by_db: dict[str, list[dict]] = {}
    for sch in schemas or []:
        by_db.setdefault(sch["database_name"], []).append(sch)
    services = [
        svc
        for svc in services or []
        if _matches(q, svc["qualified_name"], svc["model_name"], svc["compute_pool"])
        and (not status or svc["status"] == status)
    ]
    return viewer.page(
        "overview.html",
        q=viewer.query.get("q", ""),
        status_filter=status,
        statuses=SERVICE_STATUSES,
        databases=[
            {**db, "schemas": by_db.get(db["name"], [])}
            for db in databases or []
            if _matches(q, db["name"], *(s["name"] for s in by_db.get(db["name"], [])))
        ],
        pools=[p for p in pools or [] if _matches(q, p["name"], p["backend"])],
        repos=[
            r for r in repos or [] if _matches(q, r["name"], r["database_name"], r["schema_name"])
        ],
        services=services,
        jobs=[
            j
            for j in reversed(jobs or [])
            if _matches(q, j["name"], j.get("model"), j.get("service"))
        ][:RECENT_JOBS],
        errors=[e for e in (db_error, pool_error, repo_error, svc_error, job_error) if e],
    )
