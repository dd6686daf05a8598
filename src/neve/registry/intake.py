"""Logging versions: ``log_model`` from a directory or an uploaded archive, all-or-nothing."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments import dependencies as deps
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
    ObjectNotFoundError,
    check_fields,
)
from neve.identifiers import QualifiedName, ident, quote
from neve.models import directory_digest, read_manifest
from neve.registry import archive
from neve.registry.core import (
    _AUTO_NAME,
    ARCHIVE_MODEL_DIR,
    ARCHIVE_REQUEST_FIELDS,
    ARCHIVE_REQUEST_FILE,
    DEFAULT_SCHEMA,
    KNOWN_OPTIONS,
    SYSTEM_ALIASES,
    RegistryCore,
    json_value,
)
from neve.security.objects import ACCOUNT

if TYPE_CHECKING:
    pass


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


class ModelIntake(RegistryCore):
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

        opts = json_value(dict(options or {}), "options")
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
        metric_values = json_value(dict(metrics or {}), "metrics")
        tag_values = {
            ident(k, kind="tag name"): json_value(v, f"tag {k!r}")
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
