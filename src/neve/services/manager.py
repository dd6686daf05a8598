"""Services: a logged model version running as N inference-server instances on a compute pool.

``ServiceManager(account)`` is what the SQL engine, the gateway, the REST routes and the client
call; every method takes the caller's ``RequestContext`` first and checks privileges with
``account.security``:

- create: ownership of the model, USAGE on the compute pool(s), READ on the image repository,
  CREATE SERVICE on the schema, USAGE on build integrations, BIND SERVICE ENDPOINT on the
  account for ingress;
- invoke / endpoints: USAGE on the service; status, containers, logs: MONITOR; suspend, resume,
  scale: OPERATE; comment and drop: ownership.

The work is split: ``spec`` validates arguments, ``lifecycle`` changes processes (build, start,
stop, suspend, resume, scale), ``supervisor`` keeps them healthy, ``invoke`` sends data,
``logs`` keeps per-instance logs, ``views`` renders rows. Instances are detached processes: they
outlive the client and the daemon; ``recover()`` reattaches to them when the daemon restarts.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.compute.families import instance_family
from neve.context import RequestContext, admin_context
from neve.dataplane.proxies import ingress_url
from neve.dataplane.targets import (
    CatalogIngressTargets,
    IngressTarget,
    service_method_entries,
    service_signatures,
)
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from neve.identifiers import QualifiedName, ident, qualify, quote
from neve.like import filter_like
from neve.security.objects import ACCOUNT
from neve.services import states
from neve.services.instances import InstanceRuntime
from neve.services.invoke import ServiceInvoker
from neve.services.lifecycle import Lifecycle
from neve.services.logs import ServiceLogs, read_from, tail
from neve.services.spec import (
    BUILD_CONTAINER_NAME,
    CONTAINER_NAME,
    DEFAULT_IDLE_SUSPEND_SECS,
    MAX_INSTANCES_LIMIT,
    default_num_workers,
    differences,
    identity,
    new_ingress_host,
    validate_create_args,
)
from neve.services.specification import (
    ENV_MODEL_REF,
    document_of,
    launch_settings,
    resolve_model_ref,
    split_image_name,
    to_yaml,
)
from neve.services.specification import parse as parse_specification
from neve.services.supervisor import Supervisor
from neve.services.views import (
    container_rows,
    endpoint_rows,
    instance_address,
    service_row,
    status_rows,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from neve.catalog import Catalog
    from neve.compute.manager import ComputeManager
    from neve.config import Settings
    from neve.environments.manager import EnvironmentManager
    from neve.registry.manager import RegistryManager
    from neve.security.manager import SecurityManager

log = logging.getLogger("neve.services")

#: How long ``invoke`` keeps the resolved instances of a service before asking the catalog again.
ADDRESS_TTL_S = 0.5
#: Alter keywords that may change; anything else is part of the immutable spec.
ALTERABLE = ("min_instances", "max_instances", "comment", "auto_suspend_secs")


class ServiceManager:
    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        security: SecurityManager,
        registry: RegistryManager,
        environments: EnvironmentManager,
        compute: ComputeManager,
    ) -> None:
        self.catalog = catalog
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
        add_listener = getattr(compute, "add_pool_listener", None)
        if add_listener is not None:
            add_listener(self._on_pool_action)

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

    # -- create -----------------------------------------------------------------------------------
    def create_service(
        self,
        ctx: RequestContext,
        *,
        model: str,
        version: str,
        service_name: str,
        compute_pool: str,
        image_repo: str,
        ingress_enabled: bool = False,
        max_instances: int = 1,
        min_instances: int | None = None,
        cpu_requests: str | float | None = None,
        memory_requests: str | int | None = None,
        gpu_requests: str | int | None = None,
        num_workers: int | None = None,
        max_batch_rows: int | None = None,
        build_external_access_integrations: list[str] | tuple[str, ...] | str | None = (),
        force_rebuild: bool = False,
        auto_suspend_secs: int | None = None,
        comment: str | None = None,
        image_build_compute_pool: str | None = None,
        block: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Build (or reuse) the image and start the instances; return the DESCRIBE row.

        Idempotent: the same arguments on an existing service return it unchanged (a FAILED one
        is provisioned again); different arguments raise ``ObjectExistsError`` listing them.
        With ``block=True`` a failure removes the service again (nothing half-created) and
        raises; with ``block=False`` the service is returned at once and shows its progress
        (PENDING, BUILDING, STARTING, RUNNING or FAILED with a reason).
        """
        args = validate_create_args(
            service_name=service_name,
            model=model,
            version=version,
            compute_pool=compute_pool,
            image_repo=image_repo,
            ingress_enabled=ingress_enabled,
            max_instances=max_instances,
            min_instances=min_instances,
            cpu_requests=cpu_requests,
            memory_requests=memory_requests,
            gpu_requests=gpu_requests,
            num_workers=num_workers,
            max_batch_rows=max_batch_rows,
            build_external_access_integrations=build_external_access_integrations,
            image_build_compute_pool=image_build_compute_pool,
            auto_suspend_secs=auto_suspend_secs,
        )
        qn = self._qn(ctx, service_name)
        model_qn = qualify(model, database=ctx.database, schema=ctx.schema, kind="model")
        # Resolves the version name or alias (and checks USAGE on the model).
        version_name = self.registry.describe_version(ctx, model_qn, version)["name"]
        repo_qn = qualify(
            image_repo, database=ctx.database, schema=ctx.schema, kind="image repository"
        )
        sec = self.security
        with self.catalog.transaction() as s:
            sch = lookup.schema(s, qn.database, qn.schema)
            model_row = lookup.in_schema(s, m.Model, model_qn, "model")
            if not sec.is_owner(s, ctx, model_row):
                raise PermissionDeniedError(
                    f"only the owner of model {model_qn} (role {model_row.owner_role}) may create "
                    f"a service for it; role {ctx.role} does not own it"
                )
            version_row = s.scalar(
                select(m.ModelVersion).where(
                    m.ModelVersion.model_id == model_row.id, m.ModelVersion.name == version_name
                )
            )
            if version_row is None:
                raise ObjectNotFoundError(f"model {model_qn} has no version {quote(version_name)}")
            pool = lookup.account_level(
                s, m.ComputePool, ident(compute_pool, kind="compute pool name"), "compute pool"
            )
            sec.require(s, ctx, "USAGE", pool)
            build_pool = None
            if image_build_compute_pool:
                build_pool = lookup.account_level(
                    s,
                    m.ComputePool,
                    ident(image_build_compute_pool, kind="compute pool name"),
                    "compute pool",
                )
                sec.require(s, ctx, "USAGE", build_pool)
            repo = lookup.in_schema(s, m.ImageRepository, repo_qn, "image repository")
            sec.require(s, ctx, "READ", repo)
            integrations = self._usable_integrations(
                s, ctx, args.build_external_access_integrations
            )
            if args.ingress_enabled:
                sec.require(s, ctx, "BIND SERVICE ENDPOINT", ACCOUNT)
            key = identity(
                args,
                model=str(model_qn),
                version=version_name,
                compute_pool=pool.name,
                image_repo=str(repo_qn),
                integrations=integrations,
                build_pool=build_pool.name if build_pool is not None else None,
            )
            existing = s.scalar(
                select(m.Service).where(m.Service.schema_id == sch.id, m.Service.name == qn.name)
            )
            if existing is not None:
                if existing.status == states.DELETING:
                    raise InvalidStateError(
                        f"service {qn} is being dropped; create it again once it is gone"
                    )
                old = (existing.spec or {}).get("create_args") or {}
                diff = differences(old, key)
                if diff:
                    raise ObjectExistsError(
                        f"service {qn} already exists with other arguments ({'; '.join(diff)}); "
                        "drop it first (delete_service / DROP SERVICE) or choose another name; "
                        "instance counts change with ALTER SERVICE ... SET MIN_INSTANCES / "
                        "MAX_INSTANCES"
                    )
                if force_rebuild and existing.status != states.FAILED:
                    # not silently ignored: an existing service keeps the image it runs
                    raise ObjectExistsError(
                        f"service {qn} already exists ({existing.status}); force_rebuild builds "
                        "the image of a new service: drop this one first (delete_service / DROP "
                        "SERVICE), then create it again with force_rebuild=True"
                    )
                self._require_any(s, ctx, existing, "OPERATE")
                sid, retry = existing.id, existing.status == states.FAILED
                if retry:
                    existing.status, existing.status_reason = states.PENDING, "retrying"
            else:
                sec.require(s, ctx, "CREATE SERVICE", sch)
                self._check_fits(pool, args.resources, version_row, qn)
                spec = {
                    "model": str(model_qn),
                    "version": version_name,
                    "model_type": version_row.model_type,
                    "image_repo": str(repo_qn),
                    "compute_pool": pool.name,
                    "image_build_compute_pool": build_pool.name if build_pool else None,
                    "build_external_access_integrations": integrations,
                    "resources": args.resources.to_dict(),
                    "num_workers": args.num_workers
                    or default_num_workers(
                        args.resources, instance_family(pool.instance_family).vcpu
                    ),
                    "max_batch_rows": args.max_batch_rows,
                    "device": args.device,
                    "ingress_enabled": args.ingress_enabled,
                    "container": CONTAINER_NAME,
                    "create_args": key,
                }
                svc = m.Service(
                    schema_id=sch.id,
                    name=qn.name,
                    model_version_id=version_row.id,
                    pool_id=pool.id,
                    status=states.PENDING,
                    status_reason="waiting to build the image",
                    spec=spec,
                    min_instances=args.min_instances,
                    max_instances=args.max_instances,
                    auto_suspend_secs=args.auto_suspend_secs,
                    ingress_enabled=args.ingress_enabled,
                    ingress_host=(
                        new_ingress_host(
                            self.settings.account_name,
                            self.settings.ingress.domain,
                        )
                        if args.ingress_enabled
                        else None
                    ),
                    owner_role=sec.owner_role_for_create(ctx),
                    comment=comment,
                )
                s.add(svc)
                s.flush()
                self._register_functions(s, svc, version_row)
                sid, retry = svc.id, True
        self.supervisor.start()
        if retry:
            self.logs.event(qn, f"created by {ctx.user} (role {ctx.role}); provisioning")
            self.lifecycle.provision(ctx, sid, force_rebuild=force_rebuild)
        if block:
            try:
                self.lifecycle.wait_provisioned(sid, timeout_s)
            except BaseException:
                # Nothing half-created: remove the failed service and its processes again.
                self._drop_by_id(sid, reason="creation failed")
                raise
        return self._describe_by_id(sid)

    def create_service_from_specification(
        self,
        ctx: RequestContext,
        *,
        service_name: str,
        compute_pool: str,
        specification: str | dict[str, Any],
        if_not_exists: bool = False,
        min_instances: int | None = None,
        max_instances: int | None = None,
        auto_resume: bool = True,
        auto_suspend_secs: int | None = None,
        external_access_integrations: list[str] | tuple[str, ...] = (),
        comment: str | None = None,
        block: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """CREATE SERVICE ... FROM SPECIFICATION: a service running a published image with the
        settings of a YAML document (typically a model service's, copied and changed).

        Needs CREATE SERVICE on the schema, USAGE on the pool, READ on the image's repository,
        USAGE on the model ``MODEL_REF`` names and BIND SERVICE ENDPOINT for a public endpoint.
        Unlike a model service it does not hold its model: the model may be dropped, and the
        service fails when it next starts an instance. Every check runs before anything is
        written, in one transaction.
        """
        qn = self._qn(ctx, service_name)
        label = f"service {qn}"
        parsed = parse_specification(specification, label=label)
        lo = 1 if min_instances is None else _int_arg(min_instances, "MIN_INSTANCES", 0)
        hi = max(lo, 1) if max_instances is None else _int_arg(max_instances, "MAX_INSTANCES", 1)
        if lo > hi:
            raise InvalidArgumentError(
                f"{label}: MIN_INSTANCES ({lo}) is greater than MAX_INSTANCES ({hi})"
            )
        if hi > MAX_INSTANCES_LIMIT:
            raise InvalidArgumentError(
                f"{label}: MAX_INSTANCES {hi} is over the limit of {MAX_INSTANCES_LIMIT}"
            )
        idle = (
            None
            if auto_suspend_secs is None
            else _int_arg(auto_suspend_secs, "AUTO_SUSPEND_SECS", 0)
        )
        if lo == 0 and not idle:
            idle = DEFAULT_IDLE_SUSPEND_SECS
        image_key = "spec.containers[0].image"
        sec = self.security
        with self.catalog.transaction() as s:
            sch = lookup.schema(s, qn.database, qn.schema)
            existing = s.scalar(
                select(m.Service).where(m.Service.schema_id == sch.id, m.Service.name == qn.name)
            )
            if existing is not None:
                if not if_not_exists:
                    raise ObjectExistsError(
                        f"{label} already exists; drop it first or use CREATE SERVICE IF NOT EXISTS"
                    )
                self._require_any(s, ctx, existing, "MONITOR", "USAGE", "OPERATE")
                return self._describe(s, existing)
            sec.require(s, ctx, "CREATE SERVICE", sch)
            pool = lookup.account_level(
                s, m.ComputePool, ident(compute_pool, kind="compute pool name"), "compute pool"
            )
            sec.require(s, ctx, "USAGE", pool)
            # The image: a READY image of a repository the role may READ.
            db, schema, repo_name, tag = split_image_name(parsed.image, label=label)
            repo_qn = QualifiedName(
                ident(db, kind="database name"),
                ident(schema, kind="schema name"),
                ident(repo_name, kind="image repository name"),
            )
            try:
                repo = lookup.in_schema(s, m.ImageRepository, repo_qn, "image repository")
            except ObjectNotFoundError:
                raise ObjectNotFoundError(
                    f"{label}: {image_key} {parsed.image!r}: image repository {repo_qn} does "
                    "not exist or not authorized"
                ) from None
            try:
                sec.require(s, ctx, "READ", repo)
            except PermissionDeniedError as exc:
                raise PermissionDeniedError(
                    f"{label}: {image_key} is in image repository {repo_qn}: {exc.message}"
                ) from None
            repo_url = self.environments.repository_url(repo_qn)
            if not parsed.image.startswith("/") and not parsed.image.lower().startswith(
                repo_url + "/"
            ):
                raise InvalidArgumentError(
                    f"{label}: {image_key} {parsed.image!r} is not in this account's registry: "
                    f"images of {repo_qn} are named {repo_url}/<image_name>:<tag>"
                )
            digest = tag.lower().removeprefix("sha256:")
            image = next(
                (
                    i
                    for i in s.scalars(
                        select(m.Image).where(
                            m.Image.repository_id == repo.id, m.Image.status == "READY"
                        )
                    )
                    if len(digest) >= 12 and i.digest.startswith(digest)
                ),
                None,
            )
            if image is None:
                raise ObjectNotFoundError(
                    f"{label}: {image_key} {parsed.image!r}: image repository {repo_qn} has no "
                    f"published image with tag or digest {tag!r} (SHOW IMAGES IN IMAGE "
                    f"REPOSITORY {repo_qn})"
                )
            # The model the server loads: the role must be allowed to use it.
            version_row = resolve_model_ref(s, parsed.model_ref, label=label)
            model_row = s.get(m.Model, version_row.model_id)
            model_qn = lookup.qualified(s, model_row.schema_id, model_row.name)
            if not (
                sec.is_owner(s, ctx, model_row) or sec.has_privilege(s, ctx, "USAGE", model_row)
            ):
                raise PermissionDeniedError(
                    f"{label}: env {ENV_MODEL_REF} names model {model_qn}, on which role "
                    f"{ctx.role} has no USAGE"
                )
            if parsed.public:
                sec.require(s, ctx, "BIND SERVICE ENDPOINT", ACCOUNT)
            integrations = self._usable_integrations(s, ctx, external_access_integrations or ())
            resources = parsed.resources
            try:
                self._check_fits(pool, resources, version_row, qn)
            except NeveError as exc:
                raise type(exc)(
                    f"{exc.message} (spec.containers[0].resources)", code=exc.code
                ) from None
            family = instance_family(pool.instance_family)
            document = copy.deepcopy(parsed.document)
            env = document["spec"]["containers"][0].setdefault("env", {})
            if "NUM_WORKERS" not in env:
                # Written into the document, so that it says how the instances really run.
                env["NUM_WORKERS"] = str(default_num_workers(resources, family.vcpu))
            settings = launch_settings(document, label=label)
            spec = {
                "kind": "custom",
                "document": document,
                "image": parsed.image,
                "model_ref": f"{model_qn}/{quote(version_row.name)}",
                "model": str(model_qn),
                "version": version_row.name,
                "model_type": version_row.model_type,
                # The routes a caller may use, kept: the model may be dropped while it runs.
                "signatures": dict(version_row.signatures or {}),
                "image_repo": str(repo_qn),
                "compute_pool": pool.name,
                "external_access_integrations": integrations,
                "resources": resources.to_dict(),
                "num_workers": settings["num_workers"],
                "max_batch_rows": settings["max_batch_rows"],
                "device": settings["device"],
                "ingress_enabled": parsed.public,
                "auto_resume": bool(auto_resume),
                "container": parsed.container,
            }
            svc = m.Service(
                schema_id=sch.id,
                name=qn.name,
                model_version_id=None,  # a service from a specification does not hold its model
                pool_id=pool.id,
                image_id=image.id,
                status=states.PENDING,
                status_reason="starting from its specification",
                spec=spec,
                min_instances=lo,
                max_instances=hi,
                auto_suspend_secs=idle or None,
                ingress_enabled=parsed.public,
                ingress_host=(
                    new_ingress_host(self.settings.account_name, self.settings.ingress.domain)
                    if parsed.public
                    else None
                ),
                owner_role=sec.owner_role_for_create(ctx),
                comment=comment,
            )
            s.add(svc)
            s.flush()
            sid = svc.id
        self.supervisor.start()
        self.logs.event(
            qn, f"created from a specification by {ctx.user} (role {ctx.role}); starting"
        )
        self.lifecycle.provision(ctx, sid, force_rebuild=False)
        if block:
            try:
                self.lifecycle.wait_provisioned(sid, timeout_s)
            except BaseException:
                self._drop_by_id(sid, reason="creation failed")
                raise
        return self._describe_by_id(sid)

    def _check_fits(
        self, pool: m.ComputePool, resources: Any, version_row: m.ModelVersion, qn: QualifiedName
    ) -> None:
        """Refuse at once what can never run: too big for a node, GPU on a CPU pool or model."""
        self.runtime.check_fits(pool, resources, label=f"service {qn}")
        if resources.gpu and not version_row.gpu_capable:
            raise InvalidArgumentError(
                f"service {qn}: gpu_requests={resources.gpu} but model type "
                f"{version_row.model_type} runs only on CPU; omit gpu_requests"
            )

    @staticmethod
    def _register_functions(s: Session, svc: m.Service, version_row: m.ModelVersion) -> None:
        try:
            from neve.sql.functions import register_service_functions
        except ImportError:  # the SQL surface is optional for the services component
            return
        register_service_functions(s, svc, dict(version_row.signatures or {}))

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

    def get_service_logs(
        self,
        ctx: RequestContext,
        name: str,
        instance_id: int | str = 0,
        container_name: str = CONTAINER_NAME,
        last_n_lines: int | None = None,
    ) -> str:
        """An instance's log (``model-inference``), or a build job's log (``model-build``)."""
        if last_n_lines is not None and int(last_n_lines) < 0:
            raise InvalidArgumentError(f"last_n_lines must be >= 0, got {last_n_lines}")
        container = str(container_name).strip().lower()
        if container == BUILD_CONTAINER_NAME or str(name).upper().startswith("MODEL_BUILD_"):
            return self._job_logs(ctx, name, container, last_n_lines)
        qn, path, known = self._log_file(ctx, name, instance_id, container)
        if container == CONTAINER_NAME and not path.exists():
            index = int(instance_id)
            if index not in known:
                listed = ", ".join(map(str, known)) or "none running"
                raise InvalidArgumentError(
                    f"service {qn} has no instance {index} (instances: {listed})"
                )
        return tail(path, last_n_lines)

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

    def follow_service_log(
        self,
        ctx: RequestContext,
        name: str,
        instance_id: int = 0,
        container_name: str = CONTAINER_NAME,
        offset: int = 0,
    ) -> dict[str, Any]:
        """What an instance's log (or ``events``) got since byte ``offset``: ``{"text",
        "offset"}``, the offset to ask from next time (``neve services logs --follow``).
        Offset -1: nothing, and the current end to follow from."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < -1:
            raise InvalidArgumentError(f"offset must be an integer >= -1, got {offset!r}")
        container = str(container_name).strip().lower()
        _, path, _ = self._log_file(ctx, name, instance_id, container)
        text, next_offset = read_from(path, offset)
        return {"text": text, "offset": next_offset}

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
            self.lifecycle.resume(sid, f"resumed by {ctx.user}", self._access_lost)
        elif scaling and status in states.ACTIVE:
            self._apply_bounds(sid)
        return self._describe_by_id(sid)

    def _apply_bounds(self, sid: int) -> None:
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
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
                try:
                    from neve.sql.functions import drop_service_functions
                except ImportError:
                    pass
                else:
                    drop_service_functions(s, svc)
                self.security.on_drop(s, svc)
                s.delete(svc)
        self.supervisor.forget(sid)
        self._addresses.pop(sid, None)
        lc.locks.forget(sid)
        self.logs.remove(qn)
        log.info("service %s dropped (%s)", qn, reason)

    # -- invoke and ingress -----------------------------------------------------------------------
    def invoke(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        method: str,
        rows: list[list],
        *,
        timeout_s: float = 300,
    ) -> list[dict]:
        """FLAT rows ``[[idx, a, b, ...], ...]`` -> one output dict per row, in order (a table
        function's: the rows it answers, see :meth:`invoke_rows`)."""
        return [
            out for _index, out in self.invoke_rows(ctx, name, method, rows, timeout_s=timeout_s)
        ]

    def invoke_rows(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        method: str,
        rows: list[list],
        *,
        timeout_s: float = 300,
    ) -> list[list]:
        """FLAT rows -> ``[[idx, {output: value}], ...]``: a function's row for row, with the
        input's indexes; a table function's (partitioned method) all rows as one partition,
        one instance call, its answer's rows numbered from 0 (as an instance answers them)."""
        target = self._target(ctx, name, method)
        outputs = self.invoker.invoke(rows=rows, timeout_s=timeout_s, **target)
        if target["partitioned"]:
            return [[index, out] for index, out in enumerate(outputs)]
        return [[row[0], out] for row, out in zip(rows, outputs, strict=True)]

    def invoke_arrow(
        self,
        ctx: RequestContext,
        name: str | QualifiedName,
        method: str,
        table: pa.Table,
        *,
        timeout_s: float = 300,
        params: dict[str, Any] | None = None,
        partition_column: str | None = None,
        retries: int | None = None,
    ) -> pa.Table:
        """A table of one column per method input -> a table of its outputs, row for row.

        The columnar twin of :meth:`invoke` (Arrow IPC on the wire); SQL service functions
        call it. ``params``: the method's parameters; ``retries``: attempts after a failure to
        reach an instance (None: until ``timeout_s``). A table function (partitioned method)
        is called once per partition of ``partition_column`` (``ServiceInvoker.invoke_arrow``),
        or without it once for all rows (one partition, as ``mv.run`` in-process); its answer
        is its own rows.
        """
        target = self._target(ctx, name, method)
        if partition_column and not target["partitioned"]:
            raise InvalidArgumentError(
                f"function {target['route']!r} of service {target['label']} is not "
                "partitioned: partition_column applies to methods marked @neve.partitioned_api"
            )
        return self.invoker.invoke_arrow(
            table=table,
            timeout_s=timeout_s,
            params=params,
            partition_column=partition_column,
            retries=retries,
            **target,
        )

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

    def _target(
        self, ctx: RequestContext, name: str | QualifiedName, method: str
    ) -> dict[str, Any]:
        """Where an invoke goes, after the USAGE check: label, route, endpoints, chunk rows,
        whether the method is partitioned (a table function)."""
        with self.catalog.transaction() as s:
            svc = self._service(s, ctx, name)
            self.security.require(s, ctx, "USAGE", svc)
            qn = lookup.qualified(s, svc.schema_id, svc.name)
            route = _route(method, service_signatures(s, svc), qn)
            sid = svc.id
            chunk = (svc.spec or {}).get("max_batch_rows")
            partitioned = _is_table_function(s, svc, route)
        self.touch(sid)

        def endpoints(refresh: bool, remaining: float) -> list[tuple[str, int]]:
            return self._ready_addresses(ctx, sid, refresh=refresh, timeout_s=remaining)

        return {
            "label": str(qn),
            "route": route,
            "endpoints": endpoints,
            "chunk_rows": chunk,
            "partitioned": partitioned,
        }

    def route(
        self, ctx: RequestContext, name: str | QualifiedName, method: str, *, timeout_s: float
    ) -> dict[str, Any]:
        """What a data-plane caller needs (USAGE checked; a suspended service is woken):
        ``label``, ``route``, ready ``instances`` and whether it has an ``ingress`` endpoint."""
        target = self._target(ctx, name, method)
        with self.catalog.transaction() as s:
            ingress = bool(self._service(s, ctx, name).ingress_enabled)
        return {
            "label": target["label"],
            "route": target["route"],
            "instances": [list(a) for a in target["endpoints"](False, timeout_s)],
            "ingress": ingress,
        }

    def _ready_addresses(
        self, ctx: RequestContext, sid: int, *, refresh: bool, timeout_s: float
    ) -> list[tuple[str, int]]:
        cached = self._addresses.get(sid)
        if cached is not None and not refresh and time.monotonic() - cached[0] < ADDRESS_TTL_S:
            return cached[1]
        target = self._targets.target_by_id(sid)
        if not target.ready:
            target = self.ensure_running(ctx, sid, min(timeout_s, self.resume_timeout_s))
        self._addresses[sid] = (time.monotonic(), list(target.instances))
        return list(target.instances)

    def ingress_target(
        self, ctx: RequestContext, *, host: str | None = None, name: str | None = None
    ) -> IngressTarget:
        return self._targets.ingress_target(ctx, host=host, name=name)

    def ensure_running(
        self, ctx: RequestContext, service_id: int, timeout_s: float
    ) -> IngressTarget:
        """Resume a suspended service and wait (bounded) until an instance is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.lifecycle.status_of(service_id)
            if status is None:
                raise ObjectNotFoundError(f"service #{service_id} no longer exists")
            if status[0] in states.RESUMABLE:
                self._check_auto_resume(service_id)
                self.supervisor.start()
                self.lifecycle.resume(service_id, "resumed by a call", self._access_lost)
            with self.lifecycle.locks.try_hold(service_id) as got:
                if got:
                    self.lifecycle.probe(service_id)
                    self._promote(service_id)
            target = self._targets.target_by_id(service_id)
            if target.ready:
                return target
            if target.status in (states.FAILED, states.DELETING):
                raise ServiceUnavailableError(
                    f"service {target.qualified_name} is {target.status}"
                    + (f": {target.status_reason}" if target.status_reason else "")
                )
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"service {target.qualified_name} is not ready after {timeout_s:g} s "
                    f"(status {target.status}"
                    + (f": {target.status_reason}" if target.status_reason else "")
                    + ")"
                )
            time.sleep(0.1)

    def _check_auto_resume(self, sid: int) -> None:
        """A service created with AUTO_RESUME = FALSE is resumed only by ALTER SERVICE."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None or (svc.spec or {}).get("auto_resume", True):
                return
            qn = lookup.qualified(s, svc.schema_id, svc.name)
        raise ServiceUnavailableError(
            f"service {qn} is suspended and was created with AUTO_RESUME = FALSE; resume it "
            f"with ALTER SERVICE {qn} RESUME"
        )

    def _promote(self, sid: int) -> None:
        """A resumed (STARTING) service is RUNNING once one instance is ready."""
        prov = self.lifecycle.provisioning(sid)
        if prov is not None and not prov.done.is_set():
            return  # a new service: RUNNING only once all its instances are ready
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None or svc.status != states.STARTING:
                return
            if any(i.status == states.INSTANCE_READY for i in svc.instances):
                svc.status, svc.status_reason = states.RUNNING, None

    def touch(self, service_id: int) -> None:
        """Remember the time of the last request (for auto-suspend); throttled."""
        self._targets.touch(service_id)

    # -- supervision ------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """One supervisor pass (the daemon may call this periodically; a thread also runs it)."""
        self.supervisor.reconcile()

    def start_supervisor(self) -> bool:
        return self.supervisor.start()

    def recover(self) -> None:
        """At daemon start: reattach to live instances, restart the rest, resume interrupted work."""
        if not self.supervisor.lock.acquire():
            log.warning("another process supervises the services of this account")
            return
        ctx = admin_context()
        with self.catalog.transaction() as s:
            services = [(svc.id, svc.status) for svc in s.scalars(select(m.Service))]
        for sid, status in services:
            try:
                self._recover_service(ctx, sid, status)
            except Exception:
                log.exception("recovering service #%s failed", sid)
        self.supervisor.start()

    def _recover_service(self, ctx: RequestContext, sid: int, status: str) -> None:
        lc = self.lifecycle
        if status == states.DELETING:
            self._drop_by_id(sid, reason="finishing a drop interrupted by a restart")
            return
        if status in (states.PENDING, states.BUILDING):
            lc.provision(ctx, sid, force_rebuild=False)
            return
        if status == states.SUSPENDING:
            lc.suspend(sid, "suspend interrupted by a restart")
            return
        if status not in states.ACTIVE:
            return
        ref, _status, instances = lc.ref(sid)
        for inst in instances:
            alive = inst.pid is not None and self.runtime.is_alive(ref, inst)
            if alive and self.runtime.probe_ready(inst):
                lc.update_instance(sid, inst.index, status=states.INSTANCE_READY)
                self.logs.event(ref.qn, f"reattached to instance {inst.index} (pid {inst.pid})")
            elif alive:
                lc.update_instance(sid, inst.index, status=states.INSTANCE_STARTING)
            elif inst.status != states.INSTANCE_PENDING:
                lc.update_instance(
                    sid,
                    inst.index,
                    status=states.INSTANCE_FAILED,
                    status_reason="not running after a control-plane restart",
                    pid=None,
                )
                self.logs.event(ref.qn, f"instance {inst.index} was gone at recovery; restarting")
        if status == states.STARTING and not instances:
            lc.provision(ctx, sid, force_rebuild=False)

    def _access_lost(self, sid: int) -> str | None:
        """Why the service's owner may no longer run its model (None while it may)."""
        with self.catalog.transaction() as s:
            svc = s.get(m.Service, sid)
            if svc is None:
                return "the service no longer exists"
            spec = svc.spec or {}
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
            owner = RequestContext(user="SYSTEM", role=svc.owner_role)
            sec = self.security
            if sec.is_owner(s, owner, model) or sec.has_privilege(s, owner, "USAGE", model):
                return None
            mq = lookup.qualified(s, model.schema_id, model.name)
            return (
                f"the service owner role {svc.owner_role} no longer has access to model {mq} "
                "(it needs ownership or USAGE on it)"
            )

    def _fail_service(self, sid: int, reason: str) -> None:
        lc = self.lifecycle
        with lc.locks.hold(sid):
            lc.stop_all(sid)
            lc.set_status(sid, states.FAILED, reason)
        ref, _, _ = lc.ref(sid)
        self.logs.event(ref.qn, f"FAILED: {reason}", level=logging.WARNING)

    def close(self) -> None:
        """Stop supervising (instances keep running: services are long-lived)."""
        self._closing = True
        self.supervisor.stop()
        self.invoker.close()
        self.runtime.close()


def _route(method: str, methods: dict[str, Any], qn: QualifiedName) -> str:
    """The server route of ``method`` (case-insensitive, ``-`` for ``_``), or a clear error."""
    wanted = str(method).strip().lower().replace("-", "_")
    for name in methods:
        if name.lower() == wanted:
            return name.lower()
    raise ObjectNotFoundError(
        f"service {qn} has no method {method!r}; methods: {', '.join(sorted(methods)) or 'none'}"
    )


def _is_table_function(s: Session, svc: m.Service, route: str) -> bool:
    """Whether the method served at ``route`` is partitioned (its manifest entry says
    TABLE_FUNCTION): the model version's entry, or the one a specification service kept."""
    for method, entry in service_method_entries(s, svc).items():
        if method.lower() == route:
            return isinstance(entry, dict) and entry.get("function_type") == "TABLE_FUNCTION"
    return False


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
