"""Services: CREATE SERVICE for a model version and FROM SPECIFICATION."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.compute.families import instance_family
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import QualifiedName, ident, qualify, quote
from neve.security.objects import ACCOUNT
from neve.services import states
from neve.services.core import ServiceCore, _int_arg
from neve.services.spec import (
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
    launch_settings,
    resolve_model_ref,
    split_image_name,
)
from neve.services.specification import parse as parse_specification


class ServiceCreation(ServiceCore):
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
            if model_row is None:
                raise ObjectNotFoundError(f"{label}: the model of MODEL_REF no longer exists")
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

    def _register_functions(self, s: Session, svc: m.Service, version_row: m.ModelVersion) -> None:
        self.functions.register(s, svc, dict(version_row.signatures or {}))
