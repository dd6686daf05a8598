"""The model registry: models, versions, their files, metadata and the rules around them.

Every public method takes the caller's ``RequestContext`` first and checks privileges with
``account.security``: CREATE MODEL on the schema to log a new model, ownership of the model to
add versions or change anything, USAGE on the model (or ownership) to read.

Models are addressed by a name resolved against the context (``forecast``,
``registry.forecast``, ``ml.registry.forecast``, or a ``QualifiedName``); versions by name or by
alias (``set_alias``), and by the system aliases DEFAULT, FIRST and LAST.

Logging a version (``log_model``) is all-or-nothing: the version directory goes into the
artifact store and the catalog rows are inserted in one transaction; if anything fails the rows
roll back and the files are removed again. ``log_model_archive`` does the same from an
uploaded archive file (``model/`` plus ``request.json``), unpacked next to it and moved, not
copied, into the store.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments import dependencies as deps
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    check_fields,
)
from neve.identifiers import QualifiedName, ident, qualify, quote, split_name
from neve.models import directory_digest, read_manifest
from neve.registry import archive
from neve.registry.artifacts import ArtifactStore
from neve.security.objects import ACCOUNT

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

#: Aliases every model has; they cannot be set by users.
SYSTEM_ALIASES = ("DEFAULT", "FIRST", "LAST")
#: Keys ``log_model(options=...)`` understands.
KNOWN_OPTIONS = {
    "task",
    "relax_version",
    "target_methods",
    "method_options",
    "enable_explainability",
    "embed_local_ml_library",
}
#: Services in these statuses no longer hold on to their model version.
RELEASED_SERVICE_STATUSES = ("DELETED",)
#: In an uploaded archive: the saved model directory and the log_model arguments (JSON).
ARCHIVE_MODEL_DIR = "model"
ARCHIVE_REQUEST_FILE = "request.json"
#: Keys ``request.json`` may hold (the keyword arguments of ``log_model``).
ARCHIVE_REQUEST_FIELDS = {
    "version_name",
    "conda_dependencies",
    "pip_requirements",
    "python_version",
    "comment",
    "metrics",
    "options",
    "target_platforms",
    "tags",
}
DEFAULT_SCHEMA = "PUBLIC"
_AUTO_NAME = re.compile(r"^V(\d+)$")


def _json_value(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (numpy scalars become numbers); error names ``what``."""
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidArgumentError(f"{what} is not JSON-serializable: {exc}") from None


def _string_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{what} must be a list of strings, got {value!r}")
    return [v.strip() for v in value]


def _log_target(
    ctx: RequestContext, database: str | None, schema: str | None, model_name: str
) -> QualifiedName:
    """The model ``log_model`` writes to: the names given or the context's current ones."""
    db_raw = database if database is not None else ctx.database
    sch_raw = schema if schema is not None else ctx.schema
    if db_raw is None or sch_raw is None:
        raise InvalidArgumentError(
            "log_model needs a database and a schema: pass database_name/schema_name or set "
            "a current database and schema"
        )
    qn = QualifiedName(
        ident(db_raw, kind="database name"),
        ident(sch_raw, kind="schema name"),
        ident(model_name, kind="model name"),
    )
    if "__" in qn.database:
        raise InvalidArgumentError(
            f"database name {qn.database} must not contain '__' (reserved by the warehouse)"
        )
    return qn


def _archive_request(file: Path, what: str) -> dict:
    """The ``request.json`` of an uploaded archive (absent: all defaults), checked."""
    if not file.is_file():
        return {}
    try:
        request = json.loads(file.read_text())
    except ValueError as exc:
        raise InvalidArgumentError(f"{what}: {file.name} is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidArgumentError(f"{what}: {file.name} must hold a JSON object")
    check_fields(request, ARCHIVE_REQUEST_FIELDS, what=f"{what}: {file.name}")
    return request


def _is_unique_violation(exc: IntegrityError) -> bool:
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate key" in text


class RegistryManager:
    def __init__(self, catalog: Catalog, settings: Settings, security: SecurityManager) -> None:
        self.catalog = catalog
        self.settings = settings
        self.security = security
        self.store = ArtifactStore(
            settings.resolved_artifact_store, cache_dir=settings.home / "cache" / "artifacts"
        )

    def warehouse_channel(self) -> frozenset[str]:
        """The package names models may use and still run in-process (settings-configurable)."""
        return deps.load_warehouse_channel(deps.channel_file(self.settings.warehouse.channel_file))

    # -- name resolution --------------------------------------------------------------------------
    @staticmethod
    def _qn(ctx: RequestContext, model: str | QualifiedName) -> QualifiedName:
        if isinstance(model, QualifiedName):
            return model
        return qualify(model, database=ctx.database, schema=ctx.schema, kind="model")

    def _model(self, s: Session, qn: QualifiedName) -> m.Model:
        return lookup.in_schema(s, m.Model, qn, "model")

    def _readable_model(self, s: Session, ctx: RequestContext, qn: QualifiedName) -> m.Model:
        model = self._model(s, qn)
        self.security.require(s, ctx, "USAGE", model)
        return model

    def _owned_model(self, s: Session, ctx: RequestContext, qn: QualifiedName) -> m.Model:
        model = self._model(s, qn)
        self.security.require_owner(s, ctx, model)
        return model

    @staticmethod
    def _versions(s: Session, model: m.Model) -> list[m.ModelVersion]:
        return list(
            s.scalars(
                select(m.ModelVersion)
                .where(m.ModelVersion.model_id == model.id)
                .order_by(m.ModelVersion.id)
            )
        )

    def _version(
        self, s: Session, model: m.Model, qn: QualifiedName, version: str
    ) -> m.ModelVersion:
        """A version by name, by user alias, or by DEFAULT / FIRST / LAST."""
        name = ident(version, kind="version name or alias")
        versions = self._versions(s, model)
        for row in versions:
            if row.name == name:
                return row
        for row in versions:
            if name in (row.aliases or []):
                return row
        if versions and name in SYSTEM_ALIASES:
            if name == "FIRST":
                return versions[0]
            if name == "LAST":
                return versions[-1]
            default = next((v for v in versions if v.name == model.default_version), None)
            return default or versions[-1]
        known = ", ".join(quote(v.name) for v in versions) or "none"
        raise ObjectNotFoundError(
            f"model {qn} has no version or alias {quote(name)}; versions: {known}"
        )

    # -- log ------------------------------------------------------------------------------------
    def log_model(
        self,
        ctx: RequestContext,
        database: str | None,
        schema: str | None,
        model_name: str,
        version_name: str | None,
        model_dir: str | Path,
        *,
        conda_dependencies: list[str] | None = None,
        pip_requirements: list[str] | None = None,
        python_version: str | None = None,
        comment: str | None = None,
        metrics: dict | None = None,
        options: dict | None = None,
        target_platforms: list[str] | str | None = None,
        tags: dict | None = None,
        move_files: bool = False,
    ) -> dict:
        """Register the saved model directory ``model_dir`` as a new version; return its row.

        ``model_dir`` was written by ``neve.models.save_model`` in the logging process (its
        manifest carries the methods, signatures and, when the client pinned them there, the
        dependency list). The database and schema are created when missing. With
        ``move_files`` the directory may be moved into the store instead of copied.
        """
        qn = _log_target(ctx, database, schema, model_name)
        version = ident(version_name, kind="version name") if version_name else None
        if version is not None and version in SYSTEM_ALIASES:
            raise InvalidArgumentError(
                f"version name {version} is reserved (system alias of model {qn})"
            )
        source = Path(model_dir)
        try:
            manifest = read_manifest(source)
        except ObjectNotFoundError as exc:
            raise InvalidArgumentError(f"cannot log model {qn}: {exc.message}") from None
        if not manifest.get("methods"):
            raise InvalidArgumentError(f"model {qn}: the saved model has no target methods")

        opts = _json_value(dict(options or {}), "options")
        unknown = set(opts) - KNOWN_OPTIONS
        if unknown:
            raise InvalidArgumentError(
                f"model {qn}: unknown option(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(KNOWN_OPTIONS))}"
            )
        conda = _string_list(conda_dependencies, "conda_dependencies")
        pip = _string_list(pip_requirements, "pip_requirements")
        framework = list(manifest.get("framework_packages") or [])
        pinned = list(manifest.get("dependencies") or []) or deps.pin_dependencies(
            framework, conda, pip, relax_version=bool(opts.get("relax_version"))
        )
        eligibility = deps.check_warehouse(framework, conda, pip, self.warehouse_channel())
        label = f"model {qn} version {version or '(new)'}"
        platforms = deps.target_platforms(target_platforms, eligibility, label=label)
        metric_values = _json_value(dict(metrics or {}), "metrics")
        tag_values = {
            ident(k, kind="tag name"): _json_value(v, f"tag {k!r}")
            for k, v in dict(tags or {}).items()
        }
        digest = directory_digest(source)
        fields = {
            "comment": comment,
            "model_type": manifest["model_type"],
            "artifact_sha256": digest,
            "python_version": str(python_version or manifest.get("python_version") or ""),
            "conda_dependencies": conda,
            "pip_requirements": pip,
            "dependencies": pinned,
            "target_platforms": platforms,
            "signatures": manifest["methods"],
            "options": opts,
            "metrics": metric_values,
            "gpu_capable": bool(manifest.get("gpu_capable")),
        }
        for attempt in range(2):
            try:
                return self._insert_version(
                    ctx, qn, version, source, fields, tag_values, move=move_files
                )
            except IntegrityError as exc:
                # A concurrent log_model created the same model or version name: once more,
                # so the duplicate is reported by the regular checks.
                if not _is_unique_violation(exc):
                    raise
                if attempt == 1:
                    raise ObjectExistsError(
                        f"model {qn} version {version} was created concurrently"
                    ) from None
        raise AssertionError("unreachable")

    def check_can_log(
        self, ctx: RequestContext, database: str | None, schema: str | None, model_name: str
    ) -> None:
        """Refuse, before an upload is received, what ``log_model`` would refuse for the name
        and the caller's privileges (CREATE DATABASE / SCHEMA / MODEL where missing, ownership
        of an existing model), so a large body is not sent only to be denied. Read only:
        ``log_model`` checks again in its transaction."""
        qn = _log_target(ctx, database, schema, model_name)
        with self.catalog.transaction() as s:
            db = s.scalar(select(m.Database).where(m.Database.name == qn.database))
            if db is None:
                self.security.require(s, ctx, "CREATE DATABASE", ACCOUNT)
                return
            sch = s.scalar(
                select(m.Schema).where(m.Schema.database_id == db.id, m.Schema.name == qn.schema)
            )
            if sch is None:
                self.security.require(s, ctx, "CREATE SCHEMA", db)
                return
            model = s.scalar(
                select(m.Model).where(m.Model.schema_id == sch.id, m.Model.name == qn.name)
            )
            if model is None:
                self.security.require(s, ctx, "CREATE MODEL", sch)
            else:
                self.security.require_owner(s, ctx, model)

    def log_model_archive(
        self,
        ctx: RequestContext,
        database: str | None,
        schema: str | None,
        model_name: str,
        archive_path: Path,
        *,
        max_unpacked_bytes: int | None = None,
    ) -> dict:
        """Register an uploaded tar[.gz] file holding ``model/`` (a saved model directory) and
        ``request.json`` (``log_model``'s arguments, all optional) as a new version.

        The archive is unpacked into a temporary directory beside it (the same filesystem as
        the account, so the files are renamed into a local store, not copied), at most
        ``max_unpacked_bytes`` of files; the temporary directory is always removed again.
        """
        parts = ((database, "database name"), (schema, "schema name"), (model_name, "model name"))
        what = "model upload for " + ".".join(quote(ident(n, kind=k)) for n, k in parts if n)
        work = Path(tempfile.mkdtemp(prefix="unpack-", dir=archive_path.parent))
        try:
            content = archive.unpack(
                archive_path, work / "content", what=what, max_bytes=max_unpacked_bytes
            )
            request = _archive_request(content / ARCHIVE_REQUEST_FILE, what)
            model_dir = content / ARCHIVE_MODEL_DIR
            if not model_dir.is_dir():
                raise InvalidArgumentError(f"{what} has no {ARCHIVE_MODEL_DIR}/ directory")
            return self.log_model(
                ctx,
                database,
                schema,
                model_name,
                request.get("version_name"),
                model_dir,
                conda_dependencies=request.get("conda_dependencies"),
                pip_requirements=request.get("pip_requirements"),
                python_version=request.get("python_version"),
                comment=request.get("comment"),
                metrics=request.get("metrics"),
                options=request.get("options"),
                target_platforms=request.get("target_platforms"),
                tags=request.get("tags"),
                move_files=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _insert_version(
        self,
        ctx: RequestContext,
        qn: QualifiedName,
        version: str | None,
        source: Path,
        fields: dict,
        tags: dict,
        *,
        move: bool,
    ) -> dict:
        key: str | None = None
        try:
            with self.catalog.transaction() as s:
                sch = self._ensure_schema(s, ctx, qn.database, qn.schema)
                model = s.scalar(
                    select(m.Model).where(m.Model.schema_id == sch.id, m.Model.name == qn.name)
                )
                if model is None:
                    self.security.require(s, ctx, "CREATE MODEL", sch)
                    model = m.Model(
                        schema_id=sch.id,
                        name=qn.name,
                        owner_role=self.security.owner_role_for_create(ctx),
                        tags={},
                    )
                    s.add(model)
                    s.flush()
                else:
                    self.security.require_owner(s, ctx, model)
                existing = self._versions(s, model)
                taken = {v.name for v in existing}
                name = version or self._auto_name(taken)
                if name in taken:
                    raise ObjectExistsError(f"model {qn} already has a version {quote(name)}")
                for row in existing:
                    if name in (row.aliases or []):
                        raise ObjectExistsError(
                            f"model {qn}: {quote(name)} is already an alias of version "
                            f"{quote(row.name)}; choose another version name"
                        )
                if tags:
                    model.tags = {**(model.tags or {}), **tags}
                key = self.store.new_key(qn.database, qn.schema, qn.name, name)
                self.store.put(source, key, move=move)
                row = m.ModelVersion(model_id=model.id, name=name, artifact_uri=key, **fields)
                s.add(row)
                s.flush()
                if model.default_version is None:
                    model.default_version = name
                s.flush()
                return self._version_row(s, qn, model, row)
        except BaseException:
            if key is not None:
                self.store.delete(key)
            raise

    @staticmethod
    def _auto_name(taken: set[str]) -> str:
        numbers = [int(mt.group(1)) for n in taken if (mt := _AUTO_NAME.match(n))]
        n = max(numbers, default=0) + 1
        while f"V{n}" in taken:
            n += 1
        return f"V{n}"

    def _ensure_schema(self, s: Session, ctx: RequestContext, db_name: str, sch_name: str):
        """The schema, created (with its database) when missing, as the context's role."""
        db = s.scalar(select(m.Database).where(m.Database.name == db_name))
        owner = self.security.owner_role_for_create(ctx)
        if db is None:
            self.security.require(s, ctx, "CREATE DATABASE", ACCOUNT)
            db = m.Database(name=db_name, owner_role=owner)
            s.add(db)
            s.flush()
            if sch_name != DEFAULT_SCHEMA:
                s.add(m.Schema(database_id=db.id, name=DEFAULT_SCHEMA, owner_role=owner))
        sch = s.scalar(
            select(m.Schema).where(m.Schema.database_id == db.id, m.Schema.name == sch_name)
        )
        if sch is None:
            self.security.require(s, ctx, "CREATE SCHEMA", db)
            sch = m.Schema(database_id=db.id, name=sch_name, owner_role=owner)
            s.add(sch)
            s.flush()
        return sch

    # -- rows -------------------------------------------------------------------------------------
    def _services_using(self, s: Session, version_ids: list[int]) -> list[tuple[str, str, int]]:
        """(qualified service name, status, version id) of services holding these versions."""
        if not version_ids:
            return []
        rows = s.execute(
            select(
                m.Service.schema_id, m.Service.name, m.Service.status, m.Service.model_version_id
            )
            .where(
                m.Service.model_version_id.in_(version_ids),
                m.Service.status.notin_(RELEASED_SERVICE_STATUSES),
            )
            .order_by(m.Service.id)
        )
        return [
            (str(lookup.qualified(s, schema_id, name)), status, vid)
            for schema_id, name, status, vid in rows
        ]

    def _model_row(self, s: Session, qn: QualifiedName, model: m.Model) -> dict:
        versions = self._versions(s, model)
        aliases: dict[str, str] = {}
        if versions:
            default = model.default_version or versions[-1].name
            aliases = {"DEFAULT": default, "FIRST": versions[0].name, "LAST": versions[-1].name}
        for v in versions:
            for alias in v.aliases or []:
                aliases[alias] = v.name
        return {
            "created_on": model.created_on,
            "name": model.name,
            "model_type": "USER_MODEL",
            "database_name": qn.database,
            "schema_name": qn.schema,
            "comment": model.comment,
            "owner": model.owner_role,
            "default_version_name": model.default_version,
            "versions": [v.name for v in versions],
            "aliases": aliases,
            "tags": dict(model.tags or {}),
        }

    def _version_row(
        self, s: Session, qn: QualifiedName, model: m.Model, v: m.ModelVersion
    ) -> dict:
        methods = v.signatures or {}
        services = [name for name, _status, _vid in self._services_using(s, [v.id])]
        return {
            "created_on": v.created_on,
            "name": v.name,
            "aliases": list(v.aliases or []),
            "comment": v.comment,
            "database_name": qn.database,
            "schema_name": qn.schema,
            "model_name": qn.name,
            "is_default_version": v.name == model.default_version,
            "functions": [name.upper() for name in methods],
            "metadata": {"metrics": dict(v.metrics or {})},
            "user_data": {},
            "model_type": v.model_type,
            "target_platforms": list(v.target_platforms or []),
            "python_version": v.python_version,
            "conda_dependencies": list(v.conda_dependencies or []),
            "pip_requirements": list(v.pip_requirements or []),
            "dependencies": list(v.dependencies or []),
            "gpu_capable": bool(v.gpu_capable),
            "options": dict(v.options or {}),
            "artifact_sha256": v.artifact_sha256,
            "inference_services": services,
            "owner": model.owner_role,
        }

    def _platform_reasons(self, v: m.ModelVersion) -> list[str]:
        """Why a version cannot run in-process ([] when it can)."""
        if deps.WAREHOUSE in (v.target_platforms or []):
            return []
        framework = [
            deps.parse_pip_requirement(d).name for d in (v.dependencies or [])
        ]  # includes the handler's own packages
        conda_names = {deps.parse_conda_dependency(c).pypi_name for c in v.conda_dependencies or []}
        pip_names = {deps.parse_pip_requirement(p).name for p in v.pip_requirements or []}
        framework = [n for n in framework if n not in conda_names and n not in pip_names]
        found = deps.check_warehouse(
            framework, v.conda_dependencies, v.pip_requirements, self.warehouse_channel()
        )
        if found.warehouse:
            return ["it was logged with target_platforms=['SERVICE']"]
        return list(found.reasons)

    # -- models -----------------------------------------------------------------------------------
    def show_models(
        self,
        ctx: RequestContext,
        database: str | None = None,
        schema: str | None = None,
        *,
        in_database: str | None = None,
        in_schema: str | None = None,
        in_account: bool = False,
    ) -> list[dict]:
        """SHOW MODELS [IN ACCOUNT | DATABASE d | SCHEMA d.s]: models the role may use.

        With no scope: the current schema if one is set, else the current database, else the
        whole account. A schema or database that does not exist is an error.
        """
        db_name, sch_name = self._scope(ctx, database, schema, in_database, in_schema, in_account)
        with self.catalog.transaction() as s:
            query = (
                select(m.Model, m.Schema, m.Database)
                .join(m.Schema, m.Model.schema_id == m.Schema.id)
                .join(m.Database, m.Schema.database_id == m.Database.id)
                .order_by(m.Database.name, m.Schema.name, m.Model.name)
            )
            if db_name is not None:
                lookup.database(s, db_name)
                query = query.where(m.Database.name == db_name)
            if sch_name is not None:
                lookup.schema(s, db_name or "", sch_name)
                query = query.where(m.Schema.name == sch_name)
            rows = []
            for model, sch, db in s.execute(query):
                if self.security.has_privilege(s, ctx, "USAGE", model):
                    rows.append(
                        self._model_row(s, QualifiedName(db.name, sch.name, model.name), model)
                    )
            return rows

    @staticmethod
    def _scope(
        ctx: RequestContext,
        database: str | None,
        schema: str | None,
        in_database: str | None,
        in_schema: str | None,
        in_account: bool,
    ) -> tuple[str | None, str | None]:
        if in_account:
            return None, None
        if in_schema is not None:
            parts = split_name(in_schema)
            if len(parts) > 2:
                raise InvalidArgumentError(f"invalid schema name {in_schema!r}")
            db = ident(parts[0], kind="database name") if len(parts) == 2 else ctx.database
            if db is None:
                raise InvalidArgumentError(
                    f"schema {in_schema!r} is not qualified and no current database is set"
                )
            return db, ident(parts[-1], kind="schema name")
        if in_database is not None:
            return ident(in_database, kind="database name"), None
        if database is not None:
            db = ident(database, kind="database name")
            return db, ident(schema, kind="schema name") if schema is not None else None
        if ctx.database is not None:
            return ctx.database, ctx.schema
        return None, None

    def describe_model(self, ctx: RequestContext, model: str | QualifiedName) -> dict:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            row = self._readable_model(s, ctx, qn)
            return self._model_row(s, qn, row)

    get_model = describe_model

    def delete_model(
        self, ctx: RequestContext, model: str | QualifiedName, *, if_exists: bool = False
    ) -> bool:
        """DROP MODEL: every version and its files; refused while a service uses a version."""
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            try:
                row = self._model(s, qn)
            except ObjectNotFoundError:
                if if_exists:
                    return False
                raise
            self.security.require_owner(s, ctx, row)
            versions = self._versions(s, row)
            users = self._services_using(s, [v.id for v in versions])
            if users:
                by_id = {v.id: v.name for v in versions}
                listed = ", ".join(f"{n} ({st}, version {by_id[vid]})" for n, st, vid in users)
                raise ObjectInUseError(
                    f"model {qn} cannot be deleted: used by service(s) {listed}; delete the "
                    "service(s) first (delete_service / DROP SERVICE)"
                )
            self._release_deleted_services(s, [v.id for v in versions])
            keys = [v.artifact_uri for v in versions]
            self.security.on_drop(s, row)
            s.delete(row)
        for key in keys:  # after commit: a failed delete must not leave rows without files
            self.store.delete(key)
        return True

    drop_model = delete_model

    @staticmethod
    def _release_deleted_services(s: Session, version_ids: list[int]) -> None:
        """Deleted services keep their rows; they stop referencing the versions going away."""
        if not version_ids:
            return
        for svc in s.scalars(
            select(m.Service).where(
                m.Service.model_version_id.in_(version_ids),
                m.Service.status.in_(RELEASED_SERVICE_STATUSES),
            )
        ):
            svc.model_version_id = None
        s.flush()

    def set_model_comment(
        self, ctx: RequestContext, model: str | QualifiedName, comment: str | None
    ) -> None:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            self._owned_model(s, ctx, qn).comment = comment

    def rename_model(self, ctx: RequestContext, model: str | QualifiedName, new_name: str) -> dict:
        """Rename a model in its schema. Versions, grants and services refer to it by id, so
        they follow; a taken name is refused."""
        qn = self._qn(ctx, model)
        name = ident(new_name, kind="model name")
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            if name != row.name:
                taken = s.scalar(
                    select(m.Model).where(m.Model.schema_id == row.schema_id, m.Model.name == name)
                )
                if taken is not None:
                    raise ObjectExistsError(
                        f"cannot rename model {qn}: {qn.database}.{qn.schema} already has a "
                        f"model {quote(name)}"
                    )
                row.name = name
                s.flush()
            renamed = QualifiedName(qn.database, qn.schema, name)
            return self._model_row(s, renamed, row)

    def set_default_version(
        self, ctx: RequestContext, model: str | QualifiedName, version: str
    ) -> dict:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            target = self._version(s, row, qn, version)
            row.default_version = target.name
            s.flush()
            return self._version_row(s, qn, row, target)

    # -- tags -------------------------------------------------------------------------------------
    def set_tag(
        self, ctx: RequestContext, model: str | QualifiedName, tag: str, value: Any
    ) -> None:
        qn = self._qn(ctx, model)
        name = ident(tag, kind="tag name")
        stored = _json_value(value, f"tag {name} value")
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            # a new dict: JSON columns notice assignment, not in-place changes
            row.tags = {**(row.tags or {}), name: stored}

    def unset_tag(self, ctx: RequestContext, model: str | QualifiedName, tag: str) -> None:
        qn = self._qn(ctx, model)
        name = ident(tag, kind="tag name")
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            tags = dict(row.tags or {})
            if name not in tags:
                raise ObjectNotFoundError(f"model {qn} has no tag {quote(name)}")
            del tags[name]
            row.tags = tags

    def show_tags(self, ctx: RequestContext, model: str | QualifiedName) -> dict:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            return dict(self._readable_model(s, ctx, qn).tags or {})

    # -- versions ---------------------------------------------------------------------------------
    def show_versions(self, ctx: RequestContext, model: str | QualifiedName) -> list[dict]:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            row = self._readable_model(s, ctx, qn)
            return [self._version_row(s, qn, row, v) for v in self._versions(s, row)]

    def describe_version(
        self, ctx: RequestContext, model: str | QualifiedName, version: str
    ) -> dict:
        """The version's SHOW VERSIONS row plus ``platform_reasons`` (why not WAREHOUSE) and
        ``methods`` ({target method: signature}), all a caller needs to run it."""
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            row = self._readable_model(s, ctx, qn)
            v = self._version(s, row, qn, version)
            out = self._version_row(s, qn, row, v)
            out["platform_reasons"] = self._platform_reasons(v)
            out["methods"] = {
                method: spec.get("signature", spec) for method, spec in (v.signatures or {}).items()
            }
            return out

    def show_functions(
        self, ctx: RequestContext, model: str | QualifiedName, version: str
    ) -> list[dict]:
        """One row per target method: name, target_method, signature, is_partitioned, options."""
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            v = self._version(s, self._readable_model(s, ctx, qn), qn, version)
            return [
                {
                    "name": method.upper(),
                    "target_method": method,
                    # TABLE_FUNCTION: a partitioned method (all rows of a partition in, any
                    # number of rows out)
                    "target_method_function_type": spec.get("function_type") or "FUNCTION",
                    "signature": spec.get("signature", spec),
                    "is_partitioned": spec.get("function_type") == "TABLE_FUNCTION",
                    "options": dict(spec.get("options") or {}),
                }
                for method, spec in (v.signatures or {}).items()
            ]

    def set_version_comment(
        self, ctx: RequestContext, model: str | QualifiedName, version: str, comment: str | None
    ) -> None:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            self._version(s, row, qn, version).comment = comment

    def delete_version(self, ctx: RequestContext, model: str | QualifiedName, version: str) -> None:
        """ALTER MODEL ... DROP VERSION: refused for the default version while others exist,
        and while a service uses the version."""
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            v = self._version(s, row, qn, version)
            users = self._services_using(s, [v.id])
            if users:
                listed = ", ".join(f"{n} ({st})" for n, st, _ in users)
                raise ObjectInUseError(
                    f"model {qn} version {quote(v.name)} cannot be deleted: used by service(s) "
                    f"{listed}; delete the service(s) first (delete_service / DROP SERVICE)"
                )
            versions = self._versions(s, row)
            if v.name == row.default_version and len(versions) > 1:
                raise InvalidStateError(
                    f"version {quote(v.name)} is the default version of model {qn}: set another "
                    "default version first (model.default = ...), or delete the model"
                )
            if len(versions) == 1:
                raise InvalidStateError(
                    f"version {quote(v.name)} is the only version of model {qn}: delete the "
                    "model instead (registry.delete_model / DROP MODEL)"
                )
            self._release_deleted_services(s, [v.id])
            key = v.artifact_uri
            s.delete(v)
        self.store.delete(key)

    drop_version = delete_version

    # -- aliases ----------------------------------------------------------------------------------
    def set_alias(
        self, ctx: RequestContext, model: str | QualifiedName, version: str, alias: str
    ) -> None:
        qn = self._qn(ctx, model)
        name = ident(alias, kind="alias")
        if name in SYSTEM_ALIASES:
            raise InvalidArgumentError(
                f"alias {name} is a system alias of every model ({', '.join(SYSTEM_ALIASES)})"
            )
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            target = self._version(s, row, qn, version)
            for other in self._versions(s, row):
                if other.name == name:
                    raise InvalidArgumentError(
                        f"alias {quote(name)} of model {qn} would shadow the version of that name"
                    )
                if other.id != target.id and name in (other.aliases or []):
                    raise ObjectExistsError(
                        f"alias {quote(name)} of model {qn} already names version "
                        f"{quote(other.name)}; unset it there first"
                    )
            if name not in (target.aliases or []):
                target.aliases = [*(target.aliases or []), name]

    def unset_alias(self, ctx: RequestContext, model: str | QualifiedName, alias: str) -> None:
        qn = self._qn(ctx, model)
        name = ident(alias, kind="alias")
        with self.catalog.transaction() as s:
            row = self._owned_model(s, ctx, qn)
            for v in self._versions(s, row):
                if name in (v.aliases or []):
                    v.aliases = [a for a in v.aliases if a != name]
                    return
            raise ObjectNotFoundError(f"model {qn} has no alias {quote(name)}")

    # -- metrics ----------------------------------------------------------------------------------
    def set_metric(
        self, ctx: RequestContext, model: str | QualifiedName, version: str, name: str, value: Any
    ) -> None:
        qn = self._qn(ctx, model)
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgumentError(f"metric name {name!r} must be a non-empty string")
        stored = _json_value(value, f"metric {name!r}")
        with self.catalog.transaction() as s:
            v = self._version(s, self._owned_model(s, ctx, qn), qn, version)
            v.metrics = {**(v.metrics or {}), name: stored}

    def show_metrics(self, ctx: RequestContext, model: str | QualifiedName, version: str) -> dict:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            return dict(
                self._version(s, self._readable_model(s, ctx, qn), qn, version).metrics or {}
            )

    def get_metric(
        self, ctx: RequestContext, model: str | QualifiedName, version: str, name: str
    ) -> Any:
        metrics = self.show_metrics(ctx, model, version)
        if name not in metrics:
            raise ObjectNotFoundError(
                f"model {self._qn(ctx, model)} version {version} has no metric {name!r}; "
                f"metrics: {sorted(metrics) or 'none'}"
            )
        return metrics[name]

    def delete_metric(
        self, ctx: RequestContext, model: str | QualifiedName, version: str, name: str
    ) -> None:
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            v = self._version(s, self._owned_model(s, ctx, qn), qn, version)
            metrics = dict(v.metrics or {})
            if name not in metrics:
                raise ObjectNotFoundError(
                    f"model {qn} version {quote(v.name)} has no metric {name!r}; metrics: "
                    f"{sorted(metrics) or 'none'}"
                )
            del metrics[name]
            v.metrics = metrics

    # -- files ------------------------------------------------------------------------------------
    def version_dir(self, ctx: RequestContext, model: str | QualifiedName, version: str) -> Path:
        """A local directory holding the version's files (the store, or a verified cache)."""
        qn = self._qn(ctx, model)
        with self.catalog.transaction() as s:
            v = self._version(s, self._readable_model(s, ctx, qn), qn, version)
            key, digest = v.artifact_uri, v.artifact_sha256
        return self.store.local_dir(key, digest)

    def version_path(self, version: m.ModelVersion) -> Path:
        """The files of a version row a caller already found (and checked privileges for)."""
        return self.store.local_dir(version.artifact_uri, version.artifact_sha256)

    def export(
        self, ctx: RequestContext, model: str | QualifiedName, version: str, destination: Path
    ) -> Path:
        """Copy the version's model directory to the new directory ``destination``."""
        source = self.version_dir(ctx, model, version)
        if destination.exists() and any(destination.iterdir()):
            raise InvalidArgumentError(f"export destination {destination} is not empty")
        shutil.copytree(source, destination, dirs_exist_ok=True)
        return destination

    def load(self, ctx: RequestContext, model: str | QualifiedName, version: str) -> Any:
        """The Python object back (the framework's model), loaded in this process."""
        from neve.models import load_model

        return load_model(self.version_dir(ctx, model, version)).raw
