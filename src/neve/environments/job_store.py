"""Build jobs in the catalog and on disk: look-up, SHOW / DESCRIBE, logs, waiting, cancelling, image rows, and recovery of builds whose process died (``BuildJobs``' first layer)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments.builder import (
    IMAGE_MARKER,
    LOCKS_DIR,
    TMP_DIR,
    TRASH_DIR,
    ImageBuilder,
)
from neve.environments.buildlog import BuildLog, tail
from neve.environments.locks import is_locked
from neve.environments.runner import Deadline
from neve.errors import (
    BuildError,
    InvalidArgumentError,
    InvalidStateError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import QualifiedName, ident

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

log = logging.getLogger("neve.environments")

KIND = "MODEL_BUILD"
PENDING, RUNNING, DONE, SKIPPED, FAILED, CANCELLED = (
    "PENDING",
    "RUNNING",
    "DONE",
    "SKIPPED",
    "FAILED",
    "CANCELLED",
)
ACTIVE = (PENDING, RUNNING)
FINAL = (DONE, SKIPPED, FAILED, CANCELLED)
BUILDING, READY = "BUILDING", "READY"
BASE_IMAGES_ENV = "NEVE_BASE_IMAGES_DIR"
DEFAULT_FIND_LINKS = ("/opt/wheels",)


def utc_now() -> datetime:
    return datetime.now(UTC)


def uv_executable() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise BuildError("uv is not installed: it builds the model environments") from None
        return found


@dataclass
class RunningBuild:
    thread: threading.Thread
    deadline: Deadline


def find_links(configured: list[str] | str | None = None) -> list[str]:
    """Local wheel directories: PIP_FIND_LINKS, the account's ``find_links``, /opt/wheels."""
    items: list[str] = []
    for text in (os.environ.get("PIP_FIND_LINKS") or "").split():
        items.append(text)
    if isinstance(configured, str):
        configured = configured.split()
    items.extend(configured or [])
    items.extend(DEFAULT_FIND_LINKS)
    out: list[str] = []
    for item in items:
        path = item[len("file://") :] if item.startswith("file://") else item
        if "://" in path or not Path(path).is_dir():
            continue  # remote find-links would be network access the build was not granted
        resolved = str(Path(path).resolve())
        if resolved not in out:
            out.append(resolved)
    return out


def _clean_tmp(root: Path) -> None:
    """Remove half-built environments whose builder process is gone (and any uv still in them)."""
    for sub in (TMP_DIR, TRASH_DIR):
        base = Path(root) / sub
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if sub == TMP_DIR:
                if _builder_alive(entry.name):
                    continue
                _kill_users(entry)  # a uv orphaned by a killed build still writing there
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                remove_file(entry)


def _builder_alive(name: str) -> bool:
    """Temp entries are named ``<label>.pid<pid>.<random>[...]``: is that pid still running?"""
    match = re.search(r"\.pid(\d+)\.", name)
    if match is None:
        return False
    pid = int(match.group(1))
    return pid == os.getpid() or psutil.pid_exists(pid)


def _kill_users(path: Path) -> None:
    """Kill processes whose command line mentions ``path`` (a uv orphaned by a killed build)."""
    needle = str(path)
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(needle in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
                killed.append(proc)
        except psutil.Error:
            continue
    # SIGKILL is delivered asynchronously: wait until they are gone before their files go.
    psutil.wait_procs(killed, timeout=5)


class JobStore:
    def __init__(self, catalog: Catalog, settings: Settings, security: SecurityManager) -> None:
        self.catalog = catalog
        self.settings = settings
        self.security = security
        self.images_dir = settings.images_dir
        bases = os.environ.get(BASE_IMAGES_ENV) or settings.build.base_images_dir
        self.bases_dir = Path(bases).expanduser() if bases else self.images_dir
        self.logs_dir = settings.logs_dir / "jobs"
        self.locks_dir = self.images_dir / LOCKS_DIR
        self._running: dict[str, RunningBuild] = {}
        self._lock = threading.Lock()
        self._builder: ImageBuilder | None = None
        self._recover()

    @property
    def builder(self) -> ImageBuilder:
        if self._builder is None:
            build = self.settings.build
            self._builder = ImageBuilder(
                uv=uv_executable(),
                images_dir=self.images_dir,
                bases_dir=self.bases_dir,
                find_links=find_links(build.find_links),
                base_index_url=build.base_index_url or None,
            )
        return self._builder

    # -- jobs -------------------------------------------------------------------------------------
    def _job(self, s: Session, name: str) -> m.Job:
        job_name = ident(name, kind="job name")
        job = s.scalar(select(m.Job).where(m.Job.name == job_name))
        if job is None:
            raise ObjectNotFoundError(f"job {job_name} does not exist or not authorized")
        return job

    def _may_see(self, s: Session, ctx: RequestContext, job: m.Job) -> bool:
        if self.security.is_owner(s, ctx, job):
            return True
        image = s.get(m.Image, job.image_id) if job.image_id else None
        repo = s.get(m.ImageRepository, image.repository_id) if image is not None else None
        return repo is not None and self.security.has_privilege(s, ctx, "READ", repo)

    def _visible_job(self, s: Session, ctx: RequestContext, name: str) -> m.Job:
        job = self._job(s, name)
        if not self._may_see(s, ctx, job):
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} may not see job {job.name} (its "
                "owner, or READ on its image repository, may)"
            )
        return job

    def _job_dict(self, s: Session, job: m.Job) -> dict:
        image = s.get(m.Image, job.image_id) if job.image_id else None
        started, finished = job.started_on, job.finished_on
        image_path = image.path if image is not None else None
        ready = image is not None and image.status == READY
        return {
            "name": job.name,
            "kind": job.kind,
            "status": job.status,
            "status_reason": job.status_reason,
            "image_id": job.image_id,
            "image_digest": image.digest if image is not None else job.details.get("digest"),
            "image_status": image.status if image is not None else None,
            "image_path": image_path,
            "python": str(Path(image_path) / "bin" / "python") if ready and image_path else None,
            "size_bytes": image.size_bytes if image is not None else None,
            "service_id": job.service_id,
            "pool_id": job.pool_id,
            "owner": job.owner_role,
            "created_on": job.created_on,
            "started_on": started,
            "finished_on": finished,
            "duration_s": (finished - started).total_seconds() if started and finished else None,
            "log_path": job.log_path,
            **{k: v for k, v in (job.details or {}).items() if k not in ("digest", "size_bytes")},
        }

    def describe(self, name: str) -> dict:
        """A job's current state, without a privilege check (the caller made one)."""
        with self.catalog.transaction() as s:
            return self._job_dict(s, self._job(s, name))

    def get_job(self, ctx: RequestContext, name: str) -> dict:
        with self.catalog.transaction() as s:
            return self._job_dict(s, self._visible_job(s, ctx, name))

    def show_jobs(self, ctx: RequestContext) -> list[dict]:
        with self.catalog.transaction() as s:
            return [
                self._job_dict(s, job)
                for job in s.scalars(select(m.Job).where(m.Job.kind == KIND).order_by(m.Job.id))
                if self._may_see(s, ctx, job)
            ]

    def job_logs(self, ctx: RequestContext, name: str, last_n: int | None = None) -> str:
        with self.catalog.transaction() as s:
            job = self._visible_job(s, ctx, name)
            path = job.log_path
        return tail(path, last_n)

    def wait_job(self, name: str, timeout: float | None = None) -> dict:
        """Wait until the job ends (or ``timeout`` seconds pass); return its state."""
        job_name = ident(name, kind="job name")
        with self._lock:
            running = self._running.get(job_name)
        if running is not None:
            running.thread.join(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.describe(job_name)
            if job["status"] in FINAL or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(0.1)

    def cancel_job(self, ctx: RequestContext, name: str) -> dict:
        """Stop a running build (its uv is killed); the job ends CANCELLED."""
        with self.catalog.transaction() as s:
            job = self._job(s, name)
            self.security.require_owner(s, ctx, job)
            job_name, status = job.name, job.status
        if status in FINAL:
            return self.describe(job_name)
        if not self._cancel_running(job_name, f"cancelled by {ctx.user}"):
            raise InvalidStateError(
                f"job {job_name} runs in another process; cancel it where it runs"
            )
        return self.wait_job(job_name, 30)

    def _cancel_running(self, name: str, reason: str) -> bool:
        """Cancel job ``name`` if it runs in this process (its uv is killed); True if it did."""
        with self._lock:
            running = self._running.get(name)
        if running is None:
            return False
        running.deadline.cancel(reason)
        return True

    def cancel_service_builds(self, service_id: int, reason: str) -> list[str]:
        """Cancel the builds running here for a service that no longer wants them (it is being
        dropped; its owner was checked there); return their names. Another service's build of
        the same image is its own job and goes on."""
        with self.catalog.transaction() as s:
            names = list(
                s.scalars(
                    select(m.Job.name).where(
                        m.Job.service_id == service_id, m.Job.status.in_(ACTIVE)
                    )
                )
            )
        cancelled = [name for name in names if self._cancel_running(name, reason)]
        for name in cancelled:
            self.wait_job(name, 30)
        return cancelled

    # -- images -----------------------------------------------------------------------------------
    def image_python(self, image: Any) -> Path:
        """The python executable of an image: an Image row, a job/SHOW IMAGES dict, a path or a
        digest."""
        if isinstance(image, m.Image):
            root = Path(image.path)
        elif isinstance(image, dict):
            root_text = image.get("image_path") or image.get("path")
            if not root_text:
                raise InvalidArgumentError(f"no image path in {sorted(image)}")
            root = Path(root_text)
        else:
            text = str(image)
            root = self.images_dir / text if len(text) == 64 and "/" not in text else Path(text)
        python = root / "bin" / "python"
        if not (root / IMAGE_MARKER).exists() or not python.exists():
            raise ObjectNotFoundError(f"image {root} is not built (no complete image there)")
        return python

    @staticmethod
    def image_row(repo: QualifiedName, image: m.Image) -> dict:
        inputs = dict(image.inputs or {})
        return {
            "created_on": image.created_on,
            "image_name": f"model-env-{image.digest[:12]}",
            "tags": image.digest[:12],
            "digest": f"sha256:{image.digest}",
            "image_path": image.path,
            "size_bytes": int(image.size_bytes or 0),
            "status": image.status,
            "build_seconds": None if image.build_seconds is None else round(image.build_seconds, 2),
            "repository": str(repo),
            "model": inputs.get("model"),
            "version": inputs.get("version"),
            "inputs": {
                k: inputs.get(k)
                for k in ("requirements", "python_version", "server_version", "gpu", "base_digest")
            },
        }

    def remove_image_dir(self, path: Path) -> None:
        """Delete an image directory (only inside the images directory)."""
        path = Path(path)
        if path.parent.resolve() == self.images_dir.resolve() and (path / IMAGE_MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)

    # -- recovery and shutdown --------------------------------------------------------------------
    def _recover(self) -> None:
        """Fail jobs whose builder died; clean what their processes left behind."""
        for root in {self.images_dir, self.bases_dir}:
            _clean_tmp(root)
        try:
            with self.catalog.transaction() as s:
                for job in s.scalars(
                    select(m.Job).where(m.Job.kind == KIND, m.Job.status.in_(ACTIVE))
                ):
                    if is_locked(self.locks_dir / f"job-{job.name}.lock"):
                        continue  # its builder (this or another process) is alive
                    job.status = FAILED
                    job.status_reason = (
                        "the build was interrupted: the process running it ended before it "
                        "finished; no image was marked ready"
                    )
                    job.finished_on = utc_now()
                    if job.log_path:
                        BuildLog(Path(job.log_path)).write("FAILED: " + job.status_reason)
                for image in s.scalars(select(m.Image).where(m.Image.status == BUILDING)):
                    if is_locked(self.locks_dir / f"image-{image.digest}.lock"):
                        continue
                    if any(
                        j.status in ACTIVE
                        for j in s.scalars(select(m.Job).where(m.Job.image_id == image.id))
                    ):
                        continue
                    done = (Path(image.path) / IMAGE_MARKER).exists()
                    image.status = READY if done else FAILED
        except Exception:  # the catalog may be mid-migration in a brand new account
            log.exception("recovering interrupted builds failed")

    def close(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for job in running:
            job.deadline.cancel("the control plane is stopping")
        for job in running:
            job.thread.join(10)


def remove_file(path: Path) -> None:
    try:
        Path(path).unlink()
    except OSError:
        pass
