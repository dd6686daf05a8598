"""Image build jobs: ``MODEL_BUILD_<random>`` rows, a background thread each, a log file.

``build_image`` validates everything it can at once (repository, model version, privileges,
integrations, GPU capability, python) and raises on bad input, creating nothing. Otherwise it
records a job and either finishes it at once as SKIPPED (the image for these inputs exists: it
is reused) or starts the build in a thread and returns the PENDING job; ``wait_job`` waits for
it. Job statuses: PENDING, RUNNING, DONE, SKIPPED, FAILED, CANCELLED.

A build holds a lock file per job and one per image digest (``neve.environments.locks``). At
start-up the manager marks jobs whose lock nobody holds (their process died) FAILED, and
removes half-built directories, killing a uv that outlived its builder, so a killed build never
leaves an image marked READY.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments import inputs as image_inputs
from neve.environments.builder import (
    IMAGE_MARKER,
)
from neve.environments.buildlog import BuildLog
from neve.environments.job_store import (
    BUILDING,
    CANCELLED,
    DONE,
    FAILED,
    KIND,
    PENDING,
    READY,
    RUNNING,
    SKIPPED,
    JobStore,
    RunningBuild,
    log,
    remove_file,
    utc_now,
)
from neve.environments.locks import FileLock
from neve.environments.network import index_policy
from neve.environments.runner import BuildCancelledError, Deadline
from neve.errors import (
    BuildError,
    InvalidArgumentError,
    InvalidStateError,
    NeveError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import QualifiedName, ident, qualify


class BuildJobs(JobStore):
    """Planning a build (inputs, integrations, time limit) and running it in a thread."""

    # -- planning ---------------------------------------------------------------------------------
    def _timeout(self, timeout_s: float | None) -> float:
        value = self.settings.build.timeout_secs if timeout_s is None else timeout_s
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise InvalidArgumentError(
                f"build timeout must be a number of seconds > 0, got {value!r}"
            )
        return float(value)

    def _requirements(self, v: m.ModelVersion) -> list[str]:
        if v.dependencies:
            return list(v.dependencies)
        # Older rows without the pinned list: the handler's packages plus what was declared.
        from neve.environments.dependencies import pin_dependencies
        from neve.models import handler_by_type

        try:
            packages = list(getattr(handler_by_type(v.model_type), "packages", []) or [])
        except NeveError:
            packages = []
        return pin_dependencies(packages, v.conda_dependencies, v.pip_requirements)

    def _integrations(
        self, s: Session, ctx: RequestContext, names: list[str] | tuple[str, ...] | str
    ) -> dict[str, list[str]]:
        if isinstance(names, str):
            names = [names]
        allowed: dict[str, list[str]] = {}
        for raw in names or ():
            name = ident(raw, kind="integration name")
            integ = lookup.account_level(
                s, m.ExternalAccessIntegration, name, "external access integration"
            )
            if integ.integration_type != "EXTERNAL_ACCESS":
                raise InvalidArgumentError(
                    f"integration {name} is an API integration (for external functions), not an "
                    "external access integration"
                )
            if not (
                self.security.is_owner(s, ctx, integ)
                or self.security.has_privilege(s, ctx, "USAGE", integ)
            ):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} needs USAGE on INTEGRATION {name}"
                )
            if not integ.enabled:
                raise InvalidStateError(
                    f"external access integration {name} is disabled (ENABLED = FALSE): a build "
                    "cannot use it"
                )
            hosts: list[str] = []
            for rule_name in integ.allowed_network_rules or []:
                qn = qualify(rule_name, database=None, schema=None, kind="network rule")
                try:
                    rule = lookup.in_schema(s, m.NetworkRule, qn, "network rule")
                except ObjectNotFoundError:
                    raise ObjectNotFoundError(
                        f"network rule {qn} of external access integration {name} no longer exists"
                    ) from None
                hosts.extend(rule.value_list or [])
            allowed[name] = hosts
        return allowed

    def build_image(
        self,
        ctx: RequestContext,
        *,
        model_version_id: int,
        repo: QualifiedName,
        external_access_integrations: list[str] | tuple[str, ...] | str = (),
        force_rebuild: bool = False,
        gpu: bool = False,
        timeout_s: float | None = None,
        pool: str | None = None,
        service_id: int | None = None,
    ) -> dict:
        timeout = self._timeout(timeout_s)
        if isinstance(model_version_id, bool) or not isinstance(model_version_id, int):
            raise InvalidArgumentError(
                f"model_version_id must be an integer, got {model_version_id!r}"
            )
        with self.catalog.transaction() as s:
            repo_row = lookup.in_schema(s, m.ImageRepository, repo, "image repository")
            if not any(
                self.security.has_privilege(s, ctx, p, repo_row)
                for p in ("READ", "WRITE", "SERVICE READ", "SERVICE WRITE")
            ):
                self.security.require(s, ctx, "READ", repo_row)
            version = s.get(m.ModelVersion, model_version_id)
            if version is None:
                raise ObjectNotFoundError(f"model version id {model_version_id} does not exist")
            model = s.get(m.Model, version.model_id)
            assert model is not None
            model_qn = lookup.qualified(s, model.schema_id, model.name)
            self.security.require(s, ctx, "USAGE", model)
            what = f"image for model {model_qn} version {version.name}"
            if gpu and not version.gpu_capable:
                raise BuildError(
                    f"cannot build a GPU {what}: {version.model_type} models run on CPU only; "
                    "leave gpu_requests unset (or use a CPU compute pool)"
                )
            pool_id = None
            if pool:
                pool_row = lookup.account_level(
                    s, m.ComputePool, ident(pool, kind="compute pool name"), "compute pool"
                )
                self.security.require(s, ctx, "USAGE", pool_row)
                pool_id = pool_row.id
            allowed = self._integrations(s, ctx, external_access_integrations)
            requirements = self._requirements(version)
            conda = list(version.conda_dependencies or [])
            python_version = version.python_version
            repo_id, schema_id = repo_row.id, repo_row.schema_id
            details = {
                "model": str(model_qn),
                "version": version.name,
                "model_type": version.model_type,
                "repository": str(repo),
                "gpu": bool(gpu),
                "integrations": sorted(allowed),
                "timeout_s": timeout,
            }
        policy = index_policy(allowed, self.settings.build.index_urls)
        server_version = image_inputs.server_version()
        python, full_version = image_inputs.find_python(python_version, self.builder.uv)
        base = image_inputs.BaseSpec(
            python=python,
            python_version=full_version,
            packages=image_inputs.base_packages(self.settings.build.base_frameworks),
            server_version=server_version,
            gpu=bool(gpu),
        )
        plan = _Plan(
            what=what,
            inputs=image_inputs.ImageInputs(
                requirements=image_inputs.normalize_requirements(requirements),
                python_version=".".join(full_version.split(".")[:2]),
                server_version=server_version,
                gpu=bool(gpu),
                base_digest=base.digest,
                conda_mapping=image_inputs.conda_mapping(conda),
            ),
            base=base,
            policy=policy,
            force=bool(force_rebuild),
            timeout_s=timeout,
        )
        details["digest"] = plan.inputs.digest
        details["requirements"] = list(plan.inputs.requirements)
        return self._record(ctx, plan, repo, repo_id, schema_id, pool_id, service_id, details)

    def _record(
        self,
        ctx: RequestContext,
        plan: _Plan,
        repo: QualifiedName,
        repo_id: int,
        schema_id: int,
        pool_id: int | None,
        service_id: int | None,
        details: dict,
    ) -> dict:
        digest = plan.inputs.digest
        image_dir = self.builder.image_path(digest)
        name = new_job_name()
        job_lock = FileLock(self.locks_dir / f"job-{name}.lock")
        job_lock.try_acquire()
        log_path = self.logs_dir / f"{name}.log"
        try:
            with self.catalog.transaction() as s:
                repo_row = s.get(m.ImageRepository, repo_id)
                if repo_row is None:
                    raise ObjectNotFoundError(f"image repository {repo} does not exist")
                image = s.scalar(
                    select(m.Image).where(
                        m.Image.repository_id == repo_id, m.Image.digest == digest
                    )
                )
                exists = (image_dir / IMAGE_MARKER).exists()
                reuse = exists and not plan.force
                if not reuse:
                    self.security.require(s, ctx, "WRITE", repo_row)
                if image is None:
                    image = m.Image(
                        repository_id=repo_id,
                        digest=digest,
                        status=READY if reuse else BUILDING,
                        inputs={
                            **plan.inputs.to_dict(),
                            "model": details["model"],
                            "version": details["version"],
                        },
                        path=str(image_dir),
                    )
                    s.add(image)
                    s.flush()
                elif not exists:
                    image.status = BUILDING
                now = utc_now()
                job = m.Job(
                    name=name,
                    kind=KIND,
                    status=PENDING,
                    schema_id=schema_id,
                    service_id=service_id,
                    image_id=image.id,
                    pool_id=pool_id,
                    log_path=str(log_path),
                    owner_role=self.security.owner_role_for_create(ctx),
                    details=details,
                    created_on=now,
                )
                s.add(job)
                if reuse:
                    image.status = READY
                    if not image.size_bytes:
                        image.size_bytes = _marker_size(image_dir)
                    job.status = SKIPPED
                    job.status_reason = f"image {digest[:12]} already exists: reused, build skipped"
                    job.started_on = job.finished_on = now
                s.flush()
            if reuse:
                job_lock.release()
                remove_file(job_lock.path)
                blog = BuildLog(log_path)
                blog.write(f"job {name}: {plan.what}")
                blog.write(f"image {digest} already exists at {image_dir}: reused, build skipped")
                return self.describe(name)
        except BaseException:
            job_lock.release()
            remove_file(job_lock.path)
            raise
        deadline = Deadline(plan.timeout_s)
        thread = threading.Thread(
            target=self._run,
            args=(name, plan, repo_id, job_lock, deadline, log_path),
            name=f"neve-build-{name}",
            daemon=True,
        )
        with self._lock:
            self._running[name] = RunningBuild(thread, deadline)
        thread.start()
        return self.describe(name)

    # -- the build thread -------------------------------------------------------------------------
    def _set_job(self, name: str, **fields: Any) -> None:
        with self.catalog.transaction() as s:
            job = s.scalar(select(m.Job).where(m.Job.name == name))
            if job is None:
                return
            details = fields.pop("details", None)
            if details:
                job.details = {**(job.details or {}), **details}
            for key, value in fields.items():
                setattr(job, key, value)

    def _run(
        self,
        name: str,
        plan: _Plan,
        repo_id: int,
        job_lock: FileLock,
        deadline: Deadline,
        log_path: Path,
    ) -> None:
        blog = BuildLog(log_path)
        digest = plan.inputs.digest
        started = time.monotonic()
        image_lock = FileLock(self.locks_dir / f"image-{digest}.lock")
        try:
            self._set_job(name, status=RUNNING, started_on=utc_now())
            self._log_header(blog, name, plan)
            image_lock.acquire(deadline, what=f"image {digest[:12]} (built by another job)")
            image_dir = self.builder.image_path(digest)
            if not plan.force and (image_dir / IMAGE_MARKER).exists():
                blog.write(f"image {digest[:12]} was built by another job meanwhile: reused")
                self._finish(name, repo_id, digest, SKIPPED, "image built by another job: reused")
                return
            base = self.builder.ensure_base(plan.base, blog, deadline)
            with blog.step("build the model layer"):
                result = self.builder.build_image(
                    plan.inputs, base, plan.base, blog, deadline, plan.policy, what=plan.what
                )
            seconds = time.monotonic() - started
            base_size = _marker_size(base, marker="neve-base.json")
            blog.write(
                f"image ready: {result.path} — model layer {result.size_bytes / 2**20:.2f} MiB "
                f"(+ base {base_size / 2**20:.0f} MiB shared), built in {seconds:.2f}s"
            )
            self._finish(
                name,
                repo_id,
                digest,
                DONE,
                f"image {digest[:12]} built in {seconds:.1f}s",
                size=result.size_bytes,
                seconds=seconds,
                details={
                    "size_bytes": result.size_bytes,
                    "base_size_bytes": base_size,
                    "base_path": str(base),
                    "installed": result.installed,
                    "used_network": result.used_network,
                    "build_seconds": round(seconds, 3),
                },
            )
        except BuildCancelledError as exc:
            blog.write(f"CANCELLED: {exc.message}")
            self._finish(name, repo_id, digest, CANCELLED, exc.message)
        except NeveError as exc:
            blog.write(f"FAILED: {exc.message}")
            self._finish(name, repo_id, digest, FAILED, exc.message)
        except Exception as exc:  # a bug or an OS error: the job must still end
            blog.write("FAILED with an internal error:\n" + traceback.format_exc())
            log.exception("build job %s failed", name)
            self._finish(name, repo_id, digest, FAILED, f"internal error: {exc!r}")
        finally:
            image_lock.release()
            job_lock.release()
            remove_file(job_lock.path)
            with self._lock:
                self._running.pop(name, None)

    @staticmethod
    def _log_header(blog: BuildLog, name: str, plan: _Plan) -> None:
        inp = plan.inputs
        blog.write(f"job {name}: {plan.what}")
        blog.write(
            f"image digest {inp.digest} (server {inp.server_version}, python "
            f"{plan.base.python_version}, {'GPU' if inp.gpu else 'CPU'})"
        )
        blog.write("requirements: " + (", ".join(inp.requirements) or "(none)"))
        if inp.conda_mapping:
            blog.write(
                "no conda client is configured: conda dependencies are installed from PyPI as "
                + ", ".join(f"{c} -> {p}" for c, p in inp.conda_mapping)
            )
        if inp.gpu:
            blog.write("GPU image: frameworks come from the local wheels and the allowed indexes")
        blog.write("network: " + plan.policy.describe())
        blog.write(f"time limit: {plan.timeout_s:g} s" + ("; force_rebuild" if plan.force else ""))

    def _finish(
        self,
        name: str,
        repo_id: int,
        digest: str,
        status: str,
        reason: str,
        *,
        size: int | None = None,
        seconds: float | None = None,
        details: dict | None = None,
    ) -> None:
        image_dir = self.builder.image_path(digest)
        with self.catalog.transaction() as s:
            job = s.scalar(select(m.Job).where(m.Job.name == name))
            if job is not None:
                job.status = status
                job.status_reason = reason
                job.finished_on = utc_now()
                if details:
                    job.details = {**(job.details or {}), **details}
            image = s.scalar(
                select(m.Image).where(m.Image.repository_id == repo_id, m.Image.digest == digest)
            )
            if image is not None:
                if (image_dir / IMAGE_MARKER).exists():
                    # Complete on disk (a failed force-rebuild keeps the previous, good image).
                    image.status = READY
                    image.path = str(image_dir)
                    if size is not None:
                        image.size_bytes = size
                    elif not image.size_bytes:
                        image.size_bytes = _marker_size(image_dir)
                    if seconds is not None:
                        image.build_seconds = seconds
                else:
                    image.status = FAILED


def new_job_name() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "MODEL_BUILD_" + "".join(secrets.choice(alphabet) for _ in range(10))


@dataclass
class _Plan:
    """Everything a build thread needs, decided (and checked) before the job is recorded."""

    what: str
    inputs: image_inputs.ImageInputs
    base: image_inputs.BaseSpec
    policy: Any
    force: bool
    timeout_s: float


def _marker_size(path: Path, marker: str = IMAGE_MARKER) -> int:
    import json

    try:
        return int(json.loads((Path(path) / marker).read_text()).get("size_bytes") or 0)
    except (OSError, ValueError):
        return 0
