"""Services: names, reads, ALTER and DROP (the base of ``ServiceManager``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.dataplane.proxies import ingress_url
from neve.dataplane.targets import (
    CatalogIngressTargets,
    service_signatures,
)
from neve.errors import (
    InvalidArgumentError,
    NeveError,
    ObjectNotFoundError,
    ServiceUnavailableError,
)
from neve.identifiers import QualifiedName, ident, qualify
from neve.like import filter_like
from neve.services import states
from neve.services.instances import InstanceRuntime
from neve.services.invoke import ServiceInvoker
from neve.services.lifecycle import Lifecycle
from neve.services.logs import ServiceLogs
from neve.services.spec import (
    BUILD_CONTAINER_NAME,
    CONTAINER_NAME,
)
from neve.services.specification import (
    document_of,
    resolve_model_ref,
    to_yaml,
)
from neve.services.supervisor import Supervisor
from neve.services.views import (
    container_rows,
    endpoint_rows,
    instance_address,
    service_row,
    status_rows,
)

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.compute.manager import ComputeManager
    from neve.config import Settings
    from neve.environments.manager import EnvironmentManager
    from neve.registry.manager import RegistryManager
    from neve.security.manager import SecurityManager

log = logging.getLogger("neve.services")

#: Alter keywords that may change; anything else is part of the immutable spec.
ALTERABLE = ("min_instances", "max_instances", "comment", "auto_suspend_secs")


class ServiceFunctionRows(Protocol):
    """The SQL functions a service has in the catalog (one per model method), created and
    dropped with it inside the services manager's own transaction."""

    def register(self, s: Session, svc: m.Service, signatures: dict[str, Any]) -> None: ...

    def drop(self, s: Session, svc: m.Service) -> None: ...


class ServiceCore:
    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        security: SecurityManager,
        registry: RegistryManager,
        environments: EnvironmentManager,
        compute: ComputeManager,
        functions: ServiceFunctionRows,
    ) -> None:
        self.catalog = catalog
        self.functions = functions
        self.settings = settings
        self.security = security
        self.registry = registry
        self.environments = environments
        self.compute = compute
        self.logs = ServiceLogs(settings.logs_dir)
        self.runtime = InstanceRuntime(catalog, registry, environments, compute)
        self.lifecycle = Lifecycle(catalog, settings, self.logs, self.runtime)
        self.invoker = ServiceInvoker()
        self.supervisor = Supervisor(self)
        self._targets = CatalogIngressTargets(catalog)
        self._addresses: dict[int, tuple[float, list[tuple[str, int]]]] = {}
        self._closing = False
        self.resume_timeout_s = settings.service.resume_timeout_secs
        compute.add_pool_listener(self._on_pool_action)

    def _on_pool_action(self, ctx: RequestContext | None, pool_name: str, action: str) -> None:
        """ALTER COMPUTE POOL ... SUSPEND suspends its services; STOP ALL drops them."""
        with self.catalog.transaction() as s:
            pool = s.scalar(select(m.ComputePool).where(m.ComputePool.name == pool_name))
            if pool is None:
                return
            ids = list(s.scalars(select(m.Service.id).where(m.Service.pool_id == pool.id)))
        for sid in ids:
            if action == "STOP ALL":
                self._drop_by_id(sid, reason=f"ALTER COMPUTE POOL {pool_name} STOP ALL")
            else:
                self.lifecycle.suspend(sid, f"compute pool {pool_name} suspended")

    # -- names ------------------------------------------------------------------------------------
    @staticmethod
    def _qn(ctx: RequestContext, name: str | QualifiedName) -> QualifiedName:
        if isinstance(name, QualifiedName):
            return name
        return qualify(name, database=ctx.database, schema=ctx.schema, kind="service")

    def _service(self, s: Session, ctx: RequestContext, name: str | QualifiedName) -> m.Service:
        return lookup.in_schema(s, m.Service, self._qn(ctx, name), "service")

    def _require_any(self, s: Session, ctx: RequestContext, svc: m.Service, *privs: str) -> None:
        """Pass when the role holds one of ``privs`` (or owns the service); else name the first."""
        sec = self.security
        if any(sec.has_privilege(s, ctx, p, svc) for p in privs):
            return
        sec.require(s, ctx, privs[0], svc)  # raises with the precise message

    def _control_url(self) -> str | None:
        """Where the path form of the ingress is served: the account's ingress proxies (their
        port stays the same across control plane restarts), else the control plane's own."""
        proxies = ingress_url(self.settings.home)
        if proxies:
            return proxies
        path = self.settings.home / "control.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        url = info.get("url")
        if url:
            return str(url).rstrip("/")
        host, port = info.get("host"), info.get("port")
        return f"http://{host}:{port}" if host and port else None

    def _row(self, s: Session, svc: m.Service) -> dict[str, Any]:
        row = service_row(
            s,
            svc,
            account_name=self.settings.account_name,
            control_url=self._control_url(),
        )
        row["spec"] = self._spec_yaml(s, svc)
        return row

    def _spec_yaml(self, s: Session, svc: m.Service) -> str:
        """The service's specification document (YAML), its image by full published name:
        what ``CREATE SERVICE ... FROM SPECIFICATION`` takes to run it again."""
        spec = svc.spec or {}
        image_name = spec.get("image")
        if not spec.get("document") and svc.image_id is not None:
            image = s.get(m.Image, svc.image_id)
            repo = s.get(m.ImageRepository, image.repository_id) if image is not None else None
            if image is not None and repo is not None:
                rq = lookup.qualified(s, repo.schema_id, repo.name)
                image_name = self.environments.image_full_name(rq, image)
        return to_yaml(document_of(spec, image_name))

    # -- read -------------------------------------------------------------------------------------
    def show_services(
        self,
        ctx: RequestContext,
        *,
        in_compute_pool: str | None = None,
        in_schema: str | None = None,
        in_database: str | None = None,
        like: str | None = None,
    ) -> list[dict[str, Any]]:
        """Services the role may see (any privilege on them), in the given scope."""
        sec = self.security
        with self.catalog.transaction() as s:
            query = select(m.Service).order_by(m.Service.id)
            if in_compute_pool:
                pool = lookup.account_level(
                    s,
                    m.ComputePool,
                    ident(in_compute_pool, kind="compute pool name"),
                    "compute pool",
                )
                query = query.where(m.Service.pool_id == pool.id)
            if in_schema:
                parts = [p for p in str(in_schema).split(".") if p]
                db = ident(parts[0], kind="database name") if len(parts) == 2 else ctx.database
                if db is None:
                    raise InvalidArgumentError(
                        f"schema {in_schema!r} is not qualified and no current database is set"
                    )
                sch = lookup.schema(s, db, ident(parts[-1], kind="schema name"))
                query = query.where(m.Service.schema_id == sch.id)
            elif in_database:
                dbrow = lookup.database(s, ident(in_database, kind="database name"))
                ids = [x.id for x in dbrow.schemas]
                query = query.where(m.Service.schema_id.in_(ids or [-1]))
            rows = []
            for svc in s.scalars(query):
                if svc.status == "DELETED":
                    continue
                if not any(
                    sec.has_privilege(s, ctx, p, svc) for p in ("MONITOR", "USAGE", "OPERATE")
                ):
                    continue
                rows.append(self._row(s, svc))
        return filter_like(rows, like)

    def describe_service(self, ctx: RequestContext, name: str | QualifiedName) -> dict[str, Any]:
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "MONITOR", "USAGE")
            return self._describe(s, svc)

    def _describe(self, s: Session, svc: m.Service) -> dict[str, Any]:
        row = self._row(s, svc)
        spec = svc.spec or {}
        # MODEL: made by create_service, holds its model; CUSTOM: from a specification.
        row["kind"] = "CUSTOM" if spec.get("document") else "MODEL"
        row["num_workers"] = spec.get("num_workers")
        row["max_batch_rows"] = spec.get("max_batch_rows")
        row["image_digest"] = None
        if svc.image_id is not None:
            image = s.get(m.Image, svc.image_id)
            row["image_digest"] = image.digest if image is not None else None
        job = s.scalar(
            select(m.Job).where(m.Job.service_id == svc.id).order_by(m.Job.id.desc()).limit(1)
        )
        row["build_job"] = job.name if job is not None else None
        row["instances"] = container_rows(s, svc)
        prov = self.lifecycle.provisioning(svc.id)
        failure = prov.error if prov is not None and svc.status == states.FAILED else None
        row["error_type"] = type(failure).__name__ if isinstance(failure, NeveError) else None
        row["error_code"] = failure.code if isinstance(failure, NeveError) else None
        return row

    def _describe_by_id(self, sid: int) -> dict[str, Any]:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                raise ObjectNotFoundError(f"service #{sid} no longer exists")
            return self._describe(s, svc)

    def show_endpoints(self, ctx: RequestContext, name: str | QualifiedName) -> list[dict]:
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "USAGE", "MONITOR")
            qn = lookup.qualified(s, svc.schema_id, svc.name)
            url = self._control_url()
            port = int(url.rsplit(":", 1)[-1]) if url and url.rsplit(":", 1)[-1].isdigit() else None
            return endpoint_rows(qn, svc, control_url=url, control_port=port)

    def show_containers(self, ctx: RequestContext, name: str | QualifiedName) -> list[dict]:
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "MONITOR")
            return container_rows(s, svc)

    def service_metrics(self, ctx: RequestContext, name: str | QualifiedName) -> bytes:
        """The Prometheus metrics of every started instance of the service, in one page with
        ``service`` and ``instance`` labels (needs MONITOR)."""
        from neve.services.metrics import scrape

        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "MONITOR")
            qn = lookup.qualified(s, svc.schema_id, svc.name)
            targets = [
                (str(inst.instance_index), address)
                for inst in sorted(svc.instances, key=lambda i: i.instance_index)
                if inst.status in (states.INSTANCE_READY, states.INSTANCE_STARTING)
                and (address := instance_address(inst))
            ]
        return scrape(str(qn), targets)

    def get_service_status(self, ctx: RequestContext, name: str | QualifiedName) -> list[dict]:
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "MONITOR")
            return status_rows(s, svc)

    def service_methods(self, ctx: RequestContext, name: str | QualifiedName) -> dict[str, dict]:
        """Method name -> signature dict: its model version's, or for a service from a
        specification those of the version its ``MODEL_REF`` named (kept: the model may go)."""
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "USAGE", "MONITOR")
            return service_signatures(s, svc)

    # -- alter ------------------------------------------------------------------------------------
    def alter_service(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        *,
        suspend: bool = False,
        resume: bool = False,
        min_instances: int | None = None,
        max_instances: int | None = None,
        comment: str | None = None,
        auto_suspend_secs: int | None = None,
        **other: Any,
    ) -> dict[str, Any]:
        """SUSPEND, RESUME, or SET MIN_INSTANCES / MAX_INSTANCES / AUTO_SUSPEND_SECS / COMMENT."""
        if other:
            keys = ", ".join(sorted(k.upper() for k in other))
            raise InvalidArgumentError(
                f"cannot alter {keys} of service {name}: the service spec (model, image, "
                "resources, workers, batching, ingress) is immutable; create a new service "
                "with the new arguments (create_service) and drop this one. Alterable: "
                "SUSPEND, RESUME, MIN_INSTANCES, MAX_INSTANCES, AUTO_SUSPEND_SECS, COMMENT"
            )
        if suspend and resume:
            raise InvalidArgumentError("ALTER SERVICE: SUSPEND and RESUME together")
        scaling = min_instances is not None or max_instances is not None
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            qn = lookup.qualified(s, svc.schema_id, svc.name)
            if comment is not None:
                self.security.require_owner(s, ctx, svc)
                svc.comment = comment
            if suspend or resume or scaling or auto_suspend_secs is not None:
                self.security.require(s, ctx, "OPERATE", svc)
            if svc.status == states.DELETING:
                raise ServiceUnavailableError(f"service {qn} is being dropped")
            if scaling:
                lo = (
                    svc.min_instances
                    if min_instances is None
                    else _int_arg(min_instances, "MIN_INSTANCES", 0)
                )
                hi = (
                    svc.max_instances
                    if max_instances is None
                    else _int_arg(max_instances, "MAX_INSTANCES", 1)
                )
                if max_instances is not None and min_instances is None and lo > hi:
                    lo = hi
                if min_instances is not None and max_instances is None and lo > hi:
                    hi = lo
                if lo > hi:
                    raise InvalidArgumentError(
                        f"service {qn}: MIN_INSTANCES ({lo}) is greater than MAX_INSTANCES ({hi})"
                    )
                svc.min_instances, svc.max_instances = lo, hi
                if lo == 0 and not svc.auto_suspend_secs and auto_suspend_secs is None:
                    from neve.services.spec import DEFAULT_IDLE_SUSPEND_SECS

                    svc.auto_suspend_secs = DEFAULT_IDLE_SUSPEND_SECS
            if auto_suspend_secs is not None:
                secs = _int_arg(auto_suspend_secs, "AUTO_SUSPEND_SECS", 0)
                svc.auto_suspend_secs = secs or None
            sid, status = svc.id, svc.status
            settings = [
                f"{label} {value}"
                for label, value, given in (
                    ("min", svc.min_instances, scaling),
                    ("max", svc.max_instances, scaling),
                    ("auto_suspend_secs", svc.auto_suspend_secs, auto_suspend_secs is not None),
                    ("comment", repr(svc.comment), comment is not None),
                )
                if given
            ]
        if settings:  # in the events log: who changed what, next to the scaling it causes
            self.logs.event(qn, f"altered by {ctx.user}: {', '.join(settings)}")
        provisioning = self.lifecycle.provisioning(sid)
        if suspend:
            if status in states.IN_PROGRESS and (
                status != states.STARTING
                or (provisioning is not None and not provisioning.done.is_set())
            ):
                raise ServiceUnavailableError(
                    f"service {qn} is {status}: wait until it is RUNNING to suspend it"
                )
            self.lifecycle.suspend(sid, f"suspended by {ctx.user} (ALTER SERVICE ... SUSPEND)")
        elif resume:
            if status == states.FAILED:
                raise ServiceUnavailableError(f"service {qn} FAILED; drop it and create it again")
            self.supervisor.start()
            self.lifecycle.resume(sid, f"resumed by {ctx.user}", self.access_lost)
        elif scaling and status in states.ACTIVE:
            self._apply_bounds(sid)
        return self._describe_by_id(sid)

    def _apply_bounds(self, sid: int) -> None:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                return
            current = len(svc.instances)
            target = min(max(current, svc.min_instances, 1), svc.max_instances)
            if svc.min_instances == svc.max_instances:
                target = svc.max_instances
        self.lifecycle.scale_to(sid, target, "ALTER SERVICE")

    # -- drop -------------------------------------------------------------------------------------
    def drop_service(
        self, ctx: RequestContext, name: str | QualifiedName, *, if_exists: bool = False
    ) -> None:
        """Stop every instance (no process left behind), then remove the service and its
        functions and grants in one transaction."""
        with self.catalog.transaction() as s:
            try:
                svc = self._service(s, ctx, name)
            except ObjectNotFoundError:
                if if_exists:
                    return
                raise
            self.security.require_owner(s, ctx, svc)
            sid = svc.id
        self._drop_by_id(sid, reason=f"dropped by {ctx.user}")

    def _drop_by_id(self, sid: int, *, reason: str) -> None:
        lc = self.lifecycle
        if not lc.set_status(sid, states.DELETING, reason):
            return
        # A build under way is of no use any more: stop it (its uv is killed) rather than let
        # it run to the end for nothing.
        for job in self.environments.cancel_service_builds(sid, f"service {reason}"):
            log.info("service #%s: build %s cancelled (%s)", sid, job, reason)
        # A provisioning thread sees DELETING and stops; the lock waits for a launch under way.
        with lc.locks.hold(sid):
            lc.stop_all(sid)
            with self.catalog.transaction() as s:
                svc = s.get(m.Service, sid)
                if svc is None:
                    return
                qn = lookup.qualified(s, svc.schema_id, svc.name)
                self.functions.drop(s, svc)
                self.security.on_drop(s, svc)
                s.delete(svc)
        self.supervisor.forget(sid)
        self._addresses.pop(sid, None)
        lc.locks.forget(sid)
        self.logs.remove(qn)
        log.info("service %s dropped (%s)", qn, reason)

    def _log_file(
        self, ctx: RequestContext, name: str, instance_id: int | str, container: str
    ) -> tuple[QualifiedName, Path, list[int]]:
        """(service, log file, its instance indexes) of an instance's log or (container
        ``events``) of the supervisor's events; needs MONITOR."""
        if container not in (CONTAINER_NAME, "events"):
            raise InvalidArgumentError(
                f"service {name} has no container {container!r}; containers: "
                f"{CONTAINER_NAME} (and 'events' for the supervisor's events)"
            )
        try:
            index = int(instance_id)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"instance_id must be an integer, got {instance_id!r}"
            ) from None
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self._require_any(s, ctx, svc, "MONITOR")
            qn = lookup.qualified(s, svc.schema_id, svc.name)
            known = sorted(i.instance_index for i in svc.instances)
        if container == "events":
            return qn, self.logs.events_log(qn), known
        return qn, self.logs.instance_log(qn, index), known

    def _job_logs(
        self, ctx: RequestContext, name: str, container: str, last_n_lines: int | None
    ) -> str:
        if container != BUILD_CONTAINER_NAME:
            raise InvalidArgumentError(
                f"{name} is a build job: its only container is {BUILD_CONTAINER_NAME!r}"
            )
        envs = self.environments
        text = envs.job_logs(ctx, name)
        if last_n_lines:
            lines = str(text).splitlines()
            text = "\n".join(lines[-int(last_n_lines) :]) + ("\n" if lines else "")
        return str(text)

    # -- shared checks ----------------------------------------------------------------------------
    def _usable_integrations(
        self, s: Session, ctx: RequestContext, names: Iterable[str]
    ) -> list[str]:
        """The external access integrations ``names`` (normalized), each one the role may use."""
        out = []
        for raw in names:
            eai = lookup.account_level(
                s,
                m.ExternalAccessIntegration,
                ident(raw, kind="integration name"),
                "external access integration",
            )
            if eai.integration_type != "EXTERNAL_ACCESS":
                raise InvalidArgumentError(
                    f"integration {eai.name} is an API integration (for external functions), "
                    "not an external access integration"
                )
            self.security.require(s, ctx, "USAGE", eai)
            out.append(eai.name)
        return out

    @staticmethod
    def endpoint_names(svc: m.Service) -> list[str]:
        """The endpoints the service's specification declares."""
        document = document_of(svc.spec or {})
        return [str(e.get("name")) for e in document["spec"].get("endpoints") or []]

    @property
    def closing(self) -> bool:
        """True once ``close()`` began: supervision passes stop early."""
        return self._closing

    def access_lost(self, sid: int) -> str | None:
        """Why the service's owner may no longer run its model (None while it may)."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                return "the service no longer exists"
            spec = svc.spec or {}
            version: m.ModelVersion | None
            if svc.model_version_id is None and spec.get("document"):
                qn = lookup.qualified(s, svc.schema_id, svc.name)
                try:  # a service from a specification: its MODEL_REF may have been dropped
                    version = resolve_model_ref(s, spec.get("model_ref"), label=f"service {qn}")
                except NeveError as exc:
                    return exc.message
            else:
                version = (
                    s.get(m.ModelVersion, svc.model_version_id) if svc.model_version_id else None
                )
            if version is None:
                return "its model version no longer exists"
            model = s.get(m.Model, version.model_id)
            if model is None:
                return "its model no longer exists"
            owner = RequestContext(user="SYSTEM", role=svc.owner_role)
            sec = self.security
            if sec.is_owner(s, owner, model) or sec.has_privilege(s, owner, "USAGE", model):
                return None
            mq = lookup.qualified(s, model.schema_id, model.name)
            return (
                f"the service owner role {svc.owner_role} no longer has access to model {mq} "
                "(it needs ownership or USAGE on it)"
            )

    def fail_service(self, sid: int, reason: str) -> None:
        lc = self.lifecycle
        with lc.locks.hold(sid):
            lc.stop_all(sid)
            lc.set_status(sid, states.FAILED, reason)
        ref, _, _ = lc.ref(sid)
        self.logs.event(ref.qn, f"FAILED: {reason}", level=logging.WARNING)


def _int_arg(value: Any, what: str, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise InvalidArgumentError(f"{what} must be >= {minimum}, got {number}")
    return number
