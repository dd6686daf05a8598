"""The registry's base: name resolution, the rows SHOW and DESCRIBE return (``RegistryManager``'s
first layer)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import RequestContext
from neve.environments import dependencies as deps
from neve.errors import (
    InvalidArgumentError,
)
from neve.identifiers import QualifiedName, qualify
from neve.registry.artifacts import ArtifactStore

if TYPE_CHECKING:
    from neve.catalog import Catalog
    from neve.config import Settings
    from neve.security.manager import SecurityManager

#: Aliases every model has; they cannot be set by users.
SYSTEM_ALIASES = lookup.SYSTEM_ALIASES
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


def json_value(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (numpy scalars become numbers); error names ``what``."""
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidArgumentError(f"{what} is not JSON-serializable: {exc}") from None


class RegistryCore:
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
        return lookup.model_versions(s, model)

    @staticmethod
    def _version(s: Session, model: m.Model, qn: QualifiedName, version: str) -> m.ModelVersion:
        """A version by name, by user alias, or by DEFAULT / FIRST / LAST."""
        return lookup.model_version(s, model, qn, version)

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
            if vid is not None  # the query keeps only services of these versions
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
