"""How a service's instances come to exist: the image (environments) and processes (compute).

``InstanceRuntime`` is the only place the services component talks to ``account.environments``
(build the model environment, find its python) and ``account.compute`` (place an instance on a
pool node, start / stop / check its process). It also probes an instance over HTTP: ``/ready``
for health and ``/metrics`` for queue depth (autoscaling).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from neve.catalog import models as m
from neve.compute.backends.base import InstanceHandle, InstanceSpec
from neve.compute.families import instance_family
from neve.compute.resources import DEFAULT_CPU, DEFAULT_MEMORY_GB, ResourceRequest
from neve.context import RequestContext
from neve.errors import (
    BuildError,
    InvalidArgumentError,
    InvalidStateError,
    ObjectNotFoundError,
    ResourceError,
)
from neve.identifiers import QualifiedName
from neve.services.specification import document_of, launch_settings, resolve_model_ref

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.compute.manager import ComputeManager
    from neve.environments.manager import EnvironmentManager
    from neve.registry.manager import RegistryManager

log = logging.getLogger("neve.services")

PROBE_TIMEOUT_S = 2.0
#: How long an instance's server may take to bind its port (model loading comes after).
START_TIMEOUT_S = 60.0
#: Build job statuses after which the image is usable.
BUILD_OK = ("DONE", "SKIPPED")
_QUEUE_LINE = re.compile(r"^neve_server_queue_rows(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


@dataclass(frozen=True)
class ServiceRef:
    """What the runtime needs to know about a service (a snapshot of its catalog row)."""

    id: int
    qn: QualifiedName
    pool_id: int
    pool_name: str
    spec: dict[str, Any]
    image_id: int | None
    model_version_id: int | None
    owner_role: str


@dataclass(frozen=True)
class InstanceRef:
    """A snapshot of one ``service_instances`` row."""

    service_id: int
    index: int
    status: str
    status_reason: str | None
    host: str | None
    port: int | None
    pid: int | None
    node: str | None
    backend_ref: str | None
    restart_count: int

    @classmethod
    def of(cls, row: m.ServiceInstance) -> InstanceRef:
        return cls(
            service_id=row.service_id,
            index=row.instance_index,
            status=row.status,
            status_reason=row.status_reason,
            host=row.host,
            port=row.port,
            pid=row.pid,
            node=row.node,
            backend_ref=row.backend_ref,
            restart_count=row.restart_count or 0,
        )

    @property
    def address(self) -> tuple[str, int] | None:
        return (self.host, int(self.port)) if self.host and self.port else None


@dataclass(frozen=True)
class Launched:
    host: str
    port: int
    pid: int | None
    node: str | None
    backend_ref: str | None


class InstanceRuntime:
    def __init__(
        self,
        catalog: Catalog,
        registry: RegistryManager,
        environments: EnvironmentManager,
        compute: ComputeManager,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.environments = environments
        self.compute = compute
        self._http = httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False)

    def close(self) -> None:
        self._http.close()

    # -- placement checks ---------------------------------------------------------------------------
    @staticmethod
    def request_of(spec: dict[str, Any]) -> ResourceRequest:
        """The compute request of one instance (the compute defaults where none was given)."""
        res = spec.get("resources") or {}
        cpu = res.get("cpu") or DEFAULT_CPU
        memory = res.get("memory_bytes")
        return ResourceRequest(
            cpu=float(cpu),
            memory_gb=float(memory) / 2**30 if memory else DEFAULT_MEMORY_GB,
            gpu=int(res.get("gpu") or 0),
        )

    def check_fits(self, pool: m.ComputePool, resources: Any, *, label: str) -> None:
        """Refuse requests no node of the pool can ever hold (GPU on a CPU-only pool, too big)."""
        family = instance_family(pool.instance_family)
        if resources.gpu and not family.gpu:
            raise InvalidArgumentError(
                f"{label}: gpu_requests={resources.gpu} but compute pool {pool.name} "
                f"(instance family {family.name}) has no GPUs; use a GPU_NV_* pool or omit "
                "gpu_requests"
            )
        request = self.request_of(
            {
                "resources": {
                    "cpu": resources.cpu,
                    "memory_bytes": resources.memory_bytes,
                    "gpu": resources.gpu,
                }
            }
        )
        if (
            request.cpu > family.vcpu
            or request.memory_gb > family.memory_gb
            or request.gpu > family.gpu
        ):
            raise ResourceError(
                f"{label} requests {request.describe()} per instance, more than one node of "
                f"compute pool {pool.name} has ({family.vcpu:g} vCPU, {family.memory_gb:g} GiB "
                f"memory, {family.gpu} GPU; instance family {family.name}); request less or use "
                "a pool with a larger INSTANCE_FAMILY"
            )

    # -- image ------------------------------------------------------------------------------------
    def build_image(self, ctx: RequestContext, ref: ServiceRef, *, force_rebuild: bool) -> int:
        """Build (or reuse) the service's image as a MODEL_BUILD_ job; return the image id.
        A service created from a specification runs the published image it names."""
        envs = self.environments
        spec = ref.spec
        if spec.get("document"):
            return self.published_image(ref)
        if ref.model_version_id is None:
            raise InvalidStateError(f"service {ref.qn} names no model version to build")
        job = envs.build_image(
            ctx,
            model_version_id=ref.model_version_id,
            repo=spec["image_repo"],
            external_access_integrations=tuple(
                spec.get("build_external_access_integrations") or ()
            ),
            force_rebuild=force_rebuild,
            gpu=spec.get("device") == "cuda",
            pool=spec.get("image_build_compute_pool"),
            service_id=ref.id,
        )
        name = job["name"]
        done = envs.wait_job(name)
        if done.get("status") not in BUILD_OK or done.get("image_id") is None:
            log_tail = "\n".join(str(envs.job_logs(ctx, name, 20)).splitlines()[-20:])
            raise BuildError(
                f"service {ref.qn}: image build {name} {done.get('status')}: "
                f"{done.get('status_reason') or 'no reason recorded'}; full log: "
                f"neve services logs {name} (or CALL SYSTEM$GET_SERVICE_LOGS('{name}', 0, "
                f"'model-build')); end of the log:\n{log_tail}"
            )
        return int(done["image_id"])

    def published_image(self, ref: ServiceRef) -> int:
        """The READY image a service from a specification was created with."""
        with self.catalog.transaction() as s:
            image = s.get(m.Image, ref.image_id) if ref.image_id is not None else None
            if image is None or image.status != "READY":
                raise ObjectNotFoundError(
                    f"service {ref.qn}: the image of its specification "
                    f"({ref.spec.get('image')}) is no longer published"
                )
            return image.id

    def python_of(self, ref: ServiceRef) -> str:
        """The python executable of the service's image."""
        with self.catalog.transaction() as s:
            image = s.get(m.Image, ref.image_id) if ref.image_id is not None else None
            if image is None:
                raise ObjectNotFoundError(f"service {ref.qn}: its image is not built")
            return str(self.environments.image_python(image))

    def model_dir_of(self, ref: ServiceRef) -> Path:
        """The model version's files (from the registry's artifact store): the service's own
        version, or for a service created from a specification the version its ``MODEL_REF``
        names (which may have been dropped since: a custom service does not hold its model)."""
        with self.catalog.transaction() as s:
            if ref.model_version_id is not None:
                version = s.get(m.ModelVersion, ref.model_version_id)
                if version is None:
                    raise ObjectNotFoundError(
                        f"service {ref.qn}: its model version no longer exists"
                    )
            else:
                version = resolve_model_ref(s, ref.spec.get("model_ref"), label=f"service {ref.qn}")
            return Path(self.registry.version_path(version))

    # -- processes --------------------------------------------------------------------------------
    @staticmethod
    def holder(ref: ServiceRef, index: int) -> str:
        """The name the instance's placement is held under (``DB.SCHEMA.SVC/0``)."""
        return f"{ref.qn.database}.{ref.qn.schema}.{ref.qn.name}/{index}"

    def launch(self, ref: ServiceRef, index: int, log_path: Path) -> Launched:
        """Place the instance on a pool node and start its server; return where it listens."""
        compute = self.compute
        request = self.request_of(ref.spec)
        holder = self.holder(ref, index)
        python = self.python_of(ref)
        model_dir = self.model_dir_of(ref)
        # Model services and services from a specification start alike: from the document's
        # container env (the server settings) and resources.
        settings = launch_settings(document_of(ref.spec), label=f"service {ref.qn}")
        placement = compute.place(None, ref.pool_name, request, holder=holder)
        try:
            spec = InstanceSpec(
                python=python,
                model_dir=str(model_dir),
                service=f"{ref.qn.database}.{ref.qn.schema}.{ref.qn.name}",
                instance_index=index,
                log_path=str(log_path),
                request=request,
                num_workers=settings["num_workers"],
                max_batch_rows=settings["max_batch_rows"],
                env=settings["env"],
                node=placement.node,
                gpu_ids=tuple(placement.gpu_ids),
                server_options={
                    **settings["server_options"],
                    "device": settings["device"],
                    "model_name": ref.qn.name.lower(),
                },
                start_timeout_s=START_TIMEOUT_S,
            )
            handle = compute.backend_for(ref.pool_name).start_instance(spec)
        except BaseException:
            compute.release(None, ref.pool_name, holder)
            raise
        return Launched(
            host=handle.host,
            port=int(handle.port),
            pid=handle.pid,
            node=handle.node or placement.node,
            backend_ref=handle.to_json(),
        )

    @staticmethod
    def handle_of(inst: InstanceRef) -> InstanceHandle | None:
        if not inst.backend_ref:
            return None
        try:
            return InstanceHandle.from_json(inst.backend_ref)
        except (ValueError, KeyError, TypeError):
            return None

    def stop(self, ref: ServiceRef, inst: InstanceRef) -> None:
        """Stop the instance's process (and its workers) and give its placement back."""
        compute = self.compute
        handle = self.handle_of(inst)
        if handle is not None:
            compute.backend_for(ref.pool_name).stop_instance(handle)
        compute.release(None, ref.pool_name, self.holder(ref, inst.index))

    def is_alive(self, ref: ServiceRef, inst: InstanceRef) -> bool:
        handle = self.handle_of(inst)
        if handle is None:
            return False
        return self.compute.backend_for(ref.pool_name).is_alive(handle)

    # -- HTTP probes ------------------------------------------------------------------------------
    def probe_ready(self, inst: InstanceRef) -> bool:
        address = inst.address
        if address is None:
            return False
        try:
            resp = self._http.get(f"http://{address[0]}:{address[1]}/ready")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def queue_rows(self, inst: InstanceRef) -> float | None:
        """Rows waiting in the instance's queues (summed over methods), from ``/metrics``."""
        address = inst.address
        if address is None:
            return None
        try:
            resp = self._http.get(f"http://{address[0]}:{address[1]}/metrics")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        return sum(float(v) for v in _QUEUE_LINE.findall(resp.text))
