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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments import network
from neve.environments.job_store import ACTIVE
from neve.environments.jobs import BuildJobs
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import QualifiedName, ident, qualify, split_name
from neve.like import filter_like
from neve.security.objects import ACCOUNT

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

REPO_PRIVILEGES = ("READ", "WRITE", "SERVICE READ", "SERVICE WRITE")

_Obj = TypeVar("_Obj")  # an image repository, network rule or integration
#: What messages call each object class.
_KIND = {
    m.ImageRepository: "image repository",
    m.NetworkRule: "network rule",
    m.ExternalAccessIntegration: "external access integration",
}
#: A SHOW/CREATE row of a schema-level object: (session, its name, the object) -> dict.
_RowOf = Callable[[Session, QualifiedName, Any], dict]


class EnvironmentManager:
    def __init__(self, catalog: Catalog, settings: Settings, security: SecurityManager) -> None:
        self.catalog = catalog
        self.settings = settings
        self.security = security
        self.jobs = BuildJobs(catalog, settings, security)

    def close(self) -> None:
        """Cancel builds running in this process (their jobs end FAILED) and wait briefly."""
        self.jobs.close()

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _qn(ctx: RequestContext, name: str | QualifiedName, kind: str) -> QualifiedName:
        if isinstance(name, QualifiedName):
            return name
        return qualify(name, database=ctx.database, schema=ctx.schema, kind=kind)

    def _scope(
        self, s: Session, ctx: RequestContext, in_database: str | None, in_schema: str | None
    ) -> tuple[str | None, str | None]:
        """(database, schema) a SHOW ... IN is limited to (None: any)."""
        if in_schema:
            parts = split_name(in_schema)
            if len(parts) > 2:
                raise InvalidArgumentError(f"invalid schema name {in_schema!r}")
            sch = ident(parts[-1], kind="schema name")
            db = ident(parts[0], kind="database name") if len(parts) == 2 else ctx.database
            if db is None:
                raise InvalidArgumentError(
                    f"schema name {in_schema!r} is not qualified and no current database is set"
                )
            lookup.schema(s, db, sch)
            return db, sch
        if in_database:
            db = ident(in_database, kind="database name")
            lookup.database(s, db)
            return db, None
        return None, None

    @staticmethod
    def _in_scope(qn: QualifiedName, db: str | None, sch: str | None) -> bool:
        return (db is None or qn.database == db) and (sch is None or qn.schema == sch)

    def _create_in_schema(
        self,
        ctx: RequestContext,
        qn: QualifiedName,
        cls: type[_Obj],
        if_not_exists: bool,
        row: _RowOf,
        **fields: Any,
    ) -> dict:
        """CREATE <kind> qn: needs CREATE <KIND> on the schema; IF NOT EXISTS returns the existing.

        A concurrent create of the same name surfaces as ``IntegrityError``: callers handle it.
        """
        kind = _KIND[cls]
        with self.catalog.transaction() as s:
            sch = lookup.schema(s, qn.database, qn.schema)
            self.security.require(s, ctx, f"CREATE {kind.upper()}", sch)
            existing = s.scalar(select(cls).where(cls.schema_id == sch.id, cls.name == qn.name))
            if existing is not None:
                if if_not_exists:
                    return row(s, qn, existing)
                raise ObjectExistsError(f"{kind} {qn} already exists")
            obj = cls(
                schema_id=sch.id,
                name=qn.name,
                owner_role=self.security.owner_role_for_create(ctx),
                **fields,
            )
            s.add(obj)
            s.flush()
            return row(s, qn, obj)

    def _owned_for_drop(
        self,
        s: Session,
        ctx: RequestContext,
        cls: type[_Obj],
        name: QualifiedName | str,
        if_exists: bool,
    ) -> _Obj | None:
        """The object a DROP names (schema-level by QualifiedName, else account-level), once its
        owner is checked; None when it does not exist and IF EXISTS was given."""
        try:
            if isinstance(name, QualifiedName):
                obj = lookup.in_schema(s, cls, name, _KIND[cls])
            else:
                obj = lookup.account_level(s, cls, name, _KIND[cls])
        except ObjectNotFoundError:
            if if_exists:
                return None
            raise
        self.security.require_owner(s, ctx, obj)
        return obj

    def _show_in_schema(
        self,
        ctx: RequestContext,
        cls: type[_Obj],
        in_database: str | None,
        in_schema: str | None,
        visible: Callable[[Session, RequestContext, _Obj], bool],
        row: _RowOf,
    ) -> list[dict]:
        """SHOW <objects> [IN DATABASE d | IN SCHEMA s]: those in scope that ``visible`` lets
        the role see, by name."""
        with self.catalog.transaction() as s:
            db, sch = self._scope(s, ctx, in_database, in_schema)
            rows = []
            for obj in s.scalars(select(cls).order_by(cls.name)):
                qn = lookup.qualified(s, obj.schema_id, obj.name)
                if self._in_scope(qn, db, sch) and visible(s, ctx, obj):
                    rows.append(row(s, qn, obj))
        return rows

    def _may_use(self, s: Session, ctx: RequestContext, obj: Any) -> bool:
        """The role owns ``obj`` or holds USAGE on it."""
        return self.security.is_owner(s, ctx, obj) or self.security.has_privilege(
            s, ctx, "USAGE", obj
        )

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

    # -- network rules ----------------------------------------------------------------------------
    @staticmethod
    def _rule_row(s: Session, qn: QualifiedName, rule: m.NetworkRule) -> dict:
        return {
            "created_on": rule.created_on,
            "name": rule.name,
            "database_name": qn.database,
            "schema_name": qn.schema,
            "owner": rule.owner_role,
            "comment": rule.comment,
            "type": rule.type,
            "mode": rule.mode,
            "entries_in_valuelist": len(rule.value_list or []),
            "value_list": list(rule.value_list or []),
        }

    def create_network_rule(
        self,
        ctx: RequestContext,
        name: str,
        mode: str = "EGRESS",
        type: str = "HOST_PORT",  # noqa: A002 (the statement's keyword)
        value_list: list[str] | tuple[str, ...] | None = None,
        *,
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE NETWORK RULE name MODE = 'EGRESS' TYPE = 'HOST_PORT' VALUE_LIST = (...)."""
        qn = self._qn(ctx, name, "network rule")
        mode_v, type_v, entries = network.normalize_rule(str(qn), mode, type, value_list)
        try:
            return self._create_in_schema(
                ctx,
                qn,
                m.NetworkRule,
                if_not_exists,
                self._rule_row,
                mode=mode_v,
                type=type_v,
                value_list=entries,
                comment=comment,
            )
        except IntegrityError:
            raise ObjectExistsError(f"network rule {qn} already exists") from None

    def drop_network_rule(
        self, ctx: RequestContext, name: str | QualifiedName, if_exists: bool = False
    ) -> bool:
        """DROP NETWORK RULE: refused while an integration lists it (naming them)."""
        qn = self._qn(ctx, name, "network rule")
        with self.catalog.transaction() as s:
            rule = self._owned_for_drop(s, ctx, m.NetworkRule, qn, if_exists)
            if rule is None:
                return False
            users = [
                i.name
                for i in s.scalars(select(m.ExternalAccessIntegration))
                if str(qn) in (i.allowed_network_rules or [])
            ]
            if users:
                raise ObjectInUseError(
                    f"network rule {qn} cannot be dropped: external access integration(s) "
                    f"{', '.join(sorted(users))} use it; drop or change those first"
                )
            self.security.on_drop(s, rule)
            s.delete(rule)
        return True

    def show_network_rules(
        self,
        ctx: RequestContext,
        in_database: str | None = None,
        in_schema: str | None = None,
        like: str | None = None,
    ) -> list[dict]:
        rows = self._show_in_schema(
            ctx, m.NetworkRule, in_database, in_schema, self._may_use, self._rule_row
        )
        return filter_like(rows, like)

    def describe_network_rule(self, ctx: RequestContext, name: str | QualifiedName) -> dict:
        qn = self._qn(ctx, name, "network rule")
        with self.catalog.transaction() as s:
            rule = lookup.in_schema(s, m.NetworkRule, qn, "network rule")
            self.security.require(s, ctx, "USAGE", rule)
            return self._rule_row(s, qn, rule)

    # -- external access integrations -------------------------------------------------------------
    @staticmethod
    def _integration_row(integ: m.ExternalAccessIntegration) -> dict:
        # SHOW INTEGRATIONS lists API integrations too (neve.sql.external), as on the reference
        api = integ.integration_type == "API"
        return {
            "name": integ.name,
            "type": "EXTERNAL_API" if api else "EXTERNAL_ACCESS",
            "category": "API" if api else "SECURITY",
            "enabled": bool(integ.enabled),
            "comment": integ.comment,
            "created_on": integ.created_on,
            "allowed_network_rules": list(integ.allowed_network_rules or []),
            "owner": integ.owner_role,
        }

    def create_external_access_integration(
        self,
        ctx: RequestContext,
        name: str,
        allowed_network_rules: list[str] | tuple[str, ...] | None = None,
        enabled: bool = True,
        *,
        comment: str | None = None,
        if_not_exists: bool = False,
    ) -> dict:
        """CREATE EXTERNAL ACCESS INTEGRATION name ALLOWED_NETWORK_RULES = (r, ...) ENABLED = b."""
        integ_name = ident(name, kind="integration name")
        if isinstance(allowed_network_rules, str):
            allowed_network_rules = [allowed_network_rules]
        rules = list(allowed_network_rules or [])
        if not rules:
            raise InvalidArgumentError(
                f"external access integration {integ_name}: ALLOWED_NETWORK_RULES is empty; "
                "name at least one network rule"
            )
        if not isinstance(enabled, bool):
            raise InvalidArgumentError(
                f"external access integration {integ_name}: ENABLED must be TRUE or FALSE"
            )
        try:
            with self.catalog.transaction() as s:
                self.security.require(s, ctx, "CREATE INTEGRATION", ACCOUNT)
                existing = s.scalar(
                    select(m.ExternalAccessIntegration).where(
                        m.ExternalAccessIntegration.name == integ_name
                    )
                )
                if existing is not None:
                    if if_not_exists:
                        return self._integration_row(existing)
                    raise ObjectExistsError(
                        f"external access integration {integ_name} already exists"
                    )
                resolved = []
                for raw in rules:
                    qn = self._qn(ctx, raw, "network rule")
                    rule = lookup.in_schema(s, m.NetworkRule, qn, "network rule")
                    self.security.require(s, ctx, "USAGE", rule)
                    if str(qn) not in resolved:
                        resolved.append(str(qn))
                integ = m.ExternalAccessIntegration(
                    name=integ_name,
                    allowed_network_rules=resolved,
                    enabled=enabled,
                    owner_role=self.security.owner_role_for_create(ctx),
                    comment=comment,
                )
                s.add(integ)
                s.flush()
                return self._integration_row(integ)
        except IntegrityError:
            raise ObjectExistsError(
                f"external access integration {integ_name} already exists"
            ) from None

    def drop_external_access_integration(
        self, ctx: RequestContext, name: str, if_exists: bool = False
    ) -> bool:
        integ_name = ident(name, kind="integration name")
        with self.catalog.transaction() as s:
            integ = self._owned_for_drop(s, ctx, m.ExternalAccessIntegration, integ_name, if_exists)
            if integ is None:
                return False
            self.security.on_drop(s, integ)
            s.delete(integ)
        return True

    def show_external_access_integrations(
        self, ctx: RequestContext, like: str | None = None
    ) -> list[dict]:
        with self.catalog.transaction() as s:
            rows = [
                self._integration_row(i)
                for i in s.scalars(
                    select(m.ExternalAccessIntegration).order_by(m.ExternalAccessIntegration.name)
                )
                if self._may_use(s, ctx, i)
            ]
        return filter_like(rows, like)

    def describe_external_access_integration(self, ctx: RequestContext, name: str) -> dict:
        integ_name = ident(name, kind="integration name")
        with self.catalog.transaction() as s:
            integ = lookup.account_level(
                s, m.ExternalAccessIntegration, integ_name, "external access integration"
            )
            if not self._may_use(s, ctx, integ):
                raise PermissionDeniedError(
                    f"insufficient privileges: role {ctx.role} needs USAGE on INTEGRATION "
                    f"{integ_name}"
                )
            return self._integration_row(integ)

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
