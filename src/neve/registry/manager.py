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

``RegistryManager`` is layered: ``core.RegistryCore`` (name resolution, rows) <-
``intake.ModelIntake`` (logging versions) <- ``RegistryManager`` (models, tags, versions,
aliases, metrics, files).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
)
from neve.identifiers import QualifiedName, ident, quote, split_name
from neve.registry.core import RELEASED_SERVICE_STATUSES, SYSTEM_ALIASES, json_value
from neve.registry.intake import ModelIntake

if TYPE_CHECKING:
    pass


class RegistryManager(ModelIntake):
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
        stored = json_value(value, f"tag {name} value")
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
        stored = json_value(value, f"metric {name!r}")
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
