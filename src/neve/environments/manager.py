"""Image repositories, network rules, external access integrations, and image builds.

Catalog objects (each change one ``catalog.transaction()``):

- image repository ``db.schema.name``: holds the images built for services in that schema.
  CREATE needs CREATE IMAGE REPOSITORY on the schema; the owner drops it; READ lets a role use
  its images, WRITE lets it build new ones.
- network rule ``db.schema.name`` (MODE EGRESS, TYPE HOST_PORT, VALUE_LIST host:port entries):
  CREATE NETWORK RULE on the schema.
- external access integration (account level): bundles network rules; CREATE INTEGRATION on
  the account, USAGE to name it in a build.

Builds (``build_image`` ... ``image_python``) are run by ``neve.environments.jobs.BuildJobs``:
a ``MODEL_BUILD_<random>`` job row, a background thread, a log file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments.egress import REPO_PRIVILEGES, EgressObjects
from neve.environments.job_store import ACTIVE
from neve.errors import (
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
)
from neve.identifiers import QualifiedName, ident
from neve.like import filter_like


class EnvironmentManager(EgressObjects):
    """Image repositories and model image builds."""

    # -- image repositories -----------------------------------------------------------------------
    def repository_url(self, qn: QualifiedName) -> str:
        st = self.settings
        return f"{st.account_name}.registry.{st.ingress.domain}/{qn.database}/{qn.schema}/{qn.name}".lower()

    def image_full_name(self, repo: QualifiedName, image: m.Image) -> str:
        """``<repository_url>/<image_name>:<tag>``: how a specification names a published image."""
        row = self.jobs.image_row(repo, image)
        return f"{self.repository_url(repo)}/{row['image_name']}:{row['tags']}"

    def _repo_row(self, s: Session, qn: QualifiedName, repo: m.ImageRepository) -> dict:
        images = s.scalars(select(m.Image).where(m.Image.repository_id == repo.id)).all()
        return {
            "created_on": repo.created_on,
            "name": repo.name,
            "database_name": qn.database,
            "schema_name": qn.schema,
            "repository_url": self.repository_url(qn),
            "owner": repo.owner_role,
            "comment": repo.comment,
            "images": len(images),
            "size_bytes": sum(int(i.size_bytes or 0) for i in images if i.status == "READY"),
        }

    def create_image_repository(
        self,
        ctx: RequestContext,
        name: str,
        if_not_exists: bool = False,
        *,
        comment: str | None = None,
    ) -> dict:
        """CREATE IMAGE REPOSITORY [IF NOT EXISTS] db.schema.name."""
        qn = self._qn(ctx, name, "image repository")
        try:
            return self._create_in_schema(
                ctx, qn, m.ImageRepository, if_not_exists, self._repo_row, comment=comment
            )
        except IntegrityError:
            if if_not_exists:
                return self.describe_image_repository(ctx, qn)
            raise ObjectExistsError(f"image repository {qn} already exists") from None

    def describe_image_repository(self, ctx: RequestContext, name: str | QualifiedName) -> dict:
        qn = self._qn(ctx, name, "image repository")
        with self.catalog.transaction() as s:
            repo = lookup.in_schema(s, m.ImageRepository, qn, "image repository")
            self._require_repo_any(s, ctx, repo)
            return self._repo_row(s, qn, repo)

    def _may_see_repo(self, s: Session, ctx: RequestContext, repo: m.ImageRepository) -> bool:
        return any(self.security.has_privilege(s, ctx, p, repo) for p in REPO_PRIVILEGES)

    def _require_repo_any(self, s: Session, ctx: RequestContext, repo: m.ImageRepository) -> None:
        if not self._may_see_repo(s, ctx, repo):
            self.security.require(s, ctx, "READ", repo)  # raises, naming what is missing

    def drop_image_repository(
        self, ctx: RequestContext, name: str | QualifiedName, if_exists: bool = False
    ) -> bool:
        """DROP IMAGE REPOSITORY: refused while services use its images or builds run."""
        qn = self._qn(ctx, name, "image repository")
        with self.catalog.transaction() as s:
            repo = self._owned_for_drop(s, ctx, m.ImageRepository, qn, if_exists)
            if repo is None:
                return False
            images = s.scalars(select(m.Image).where(m.Image.repository_id == repo.id)).all()
            ids = [i.id for i in images]
            if ids:
                users = s.scalars(select(m.Service).where(m.Service.image_id.in_(ids))).all()
                if users:
                    names = ", ".join(
                        str(lookup.qualified(s, sv.schema_id, sv.name)) for sv in users
                    )
                    raise ObjectInUseError(
                        f"image repository {qn} cannot be dropped: services use its images "
                        f"({names}); drop those services first"
                    )
                running = s.scalars(
                    select(m.Job.name).where(m.Job.image_id.in_(ids), m.Job.status.in_(ACTIVE))
                ).all()
                if running:
                    raise ObjectInUseError(
                        f"image repository {qn} cannot be dropped: builds are running "
                        f"({', '.join(running)})"
                    )
            paths = {i.path for i in images}
            for image in images:
                s.delete(image)
            self.security.on_drop(s, repo)
            s.delete(repo)
            s.flush()
            # Image directories are shared by content: keep those another repository lists.
            still_used = (
                set(s.scalars(select(m.Image.path).where(m.Image.path.in_(paths))).all())
                if paths
                else set()
            )
        for path in paths - still_used:
            self.jobs.remove_image_dir(Path(path))
        return True

    def show_image_repositories(
        self,
        ctx: RequestContext,
        in_database: str | None = None,
        in_schema: str | None = None,
        like: str | None = None,
    ) -> list[dict]:
        """SHOW IMAGE REPOSITORIES [LIKE] [IN DATABASE d | IN SCHEMA s]."""
        rows = self._show_in_schema(
            ctx, m.ImageRepository, in_database, in_schema, self._may_see_repo, self._repo_row
        )
        return filter_like(rows, like)

    def show_images(
        self, ctx: RequestContext, repo: str | QualifiedName, like: str | None = None
    ) -> list[dict]:
        """SHOW IMAGES IN IMAGE REPOSITORY r: every image with its full name (what a service
        specification's ``image`` says), digest, status, size and inputs."""
        qn = self._qn(ctx, repo, "image repository")
        with self.catalog.transaction() as s:
            row = lookup.in_schema(s, m.ImageRepository, qn, "image repository")
            self._require_repo_any(s, ctx, row)
            images = s.scalars(
                select(m.Image).where(m.Image.repository_id == row.id).order_by(m.Image.id)
            ).all()
            out = [
                {**self.jobs.image_row(qn, image), "image": self.image_full_name(qn, image)}
                for image in images
            ]
        return filter_like(out, like, "image_name")

    # -- builds (see neve.environments.jobs) ------------------------------------------------------
    def build_image(
        self,
        ctx: RequestContext,
        *,
        model_version_id: int,
        repo: str | QualifiedName,
        external_access_integrations: list[str] | tuple[str, ...] = (),
        force_rebuild: bool = False,
        gpu: bool = False,
        timeout_s: float | None = None,
        pool: str | None = None,
        service_id: int | None = None,
    ) -> dict:
        """Build (or reuse) the image for a model version; returns the job (see BuildJobs)."""
        qn = self._qn(ctx, repo, "image repository")
        return self.jobs.build_image(
            ctx,
            model_version_id=model_version_id,
            repo=qn,
            external_access_integrations=external_access_integrations,
            force_rebuild=force_rebuild,
            gpu=gpu,
            timeout_s=timeout_s,
            pool=pool,
            service_id=service_id,
        )

    def model_version_id(self, ctx: RequestContext, model: str, version: str | None) -> int:
        """The id of ``model``'s version ``version`` (a name, an alias, or None: the default)."""
        qn = self._qn(ctx, model, "model")
        with self.catalog.transaction() as s:
            row = lookup.in_schema(s, m.Model, qn, "model")
            versions = list(
                s.scalars(
                    select(m.ModelVersion)
                    .where(m.ModelVersion.model_id == row.id)
                    .order_by(m.ModelVersion.id)
                )
            )
            wanted = ident(version, kind="version name") if version else None
            if wanted in (None, "DEFAULT"):
                wanted = row.default_version
            if wanted == "FIRST" and versions:
                return versions[0].id
            if wanted == "LAST" and versions:
                return versions[-1].id
            for v in versions:
                if v.name == wanted or wanted in (v.aliases or []):
                    return v.id
            known = ", ".join(v.name for v in versions) or "none"
            raise ObjectNotFoundError(f"model {qn} has no version {wanted}; versions: {known}")

    def build_model_image(
        self,
        ctx: RequestContext,
        model: str,
        version: str | None,
        *,
        repo: str,
        **kwargs: Any,
    ) -> dict:
        """``build_image`` for a model version named by model and version name."""
        version_id = self.model_version_id(ctx, model, version)
        return self.build_image(ctx, model_version_id=version_id, repo=repo, **kwargs)

    def get_job(self, ctx: RequestContext, name: str) -> dict:
        return self.jobs.get_job(ctx, name)

    def show_jobs(self, ctx: RequestContext, like: str | None = None) -> list[dict]:
        return filter_like(self.jobs.show_jobs(ctx), like)

    def job_logs(self, ctx: RequestContext, name: str, last_n: int | None = None) -> str:
        return self.jobs.job_logs(ctx, name, last_n)

    def wait_job(self, name: str, timeout: float | None = None) -> dict:
        return self.jobs.wait_job(name, timeout)

    def cancel_job(self, ctx: RequestContext, name: str) -> dict:
        return self.jobs.cancel_job(ctx, name)

    def cancel_service_builds(self, service_id: int, reason: str) -> list[str]:
        return self.jobs.cancel_service_builds(service_id, reason)

    def image_python(self, image: Any) -> Path:
        return self.jobs.image_python(image)
