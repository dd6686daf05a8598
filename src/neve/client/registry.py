"""The registry as the user sees it: ``Registry``, ``Model`` and ``ModelVersion``.

``Registry(session, database_name="ml", schema_name="registry").log_model(model, ...)`` saves
the model in THIS process (``neve.models.save_model``: signatures inferred from the sample
input, dependencies pinned to what is installed here), packs the directory into one tar file
in a temporary directory and streams that file to the control plane (with its size and
SHA-256), and returns a ``ModelVersion``. Everything else is a REST call
(``neve.control.routes.registry``). Neither side holds a whole model archive in memory:
downloads are extracted as they arrive too.

``ModelVersion.run(data)`` without ``service_name`` runs the method in this process ("warehouse"
mode): the version's files are downloaded once into the account's cache, keyed and verified by
their checksum, loaded, and called. With ``service_name`` it goes to the service
(``neve.client.services.ServiceMixin``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pandas as pd

from neve.client import compat
from neve.client.model import Model
from neve.client.model_version import ModelVersion
from neve.client.rest import (
    UPLOAD_SHA_HEADER,
    RestClient,
    as_list,
    current_setting,
    default_context,
    frame,
    jsonable,
    rebuild_error,
    segment,
)
from neve.errors import (
    InvalidArgumentError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from neve.identifiers import ident, quote

if TYPE_CHECKING:
    pass


class Registry:
    """The models of one schema. The schema (and its database) is created on first log_model.

    Model names may be qualified (``"db.schema.model"``, ``"schema.model"``): such a name
    addresses that schema's registry, as in the reference API.
    """

    def __init__(
        self,
        session: Any,
        database_name: str | None = None,
        schema_name: str | None = None,
        options: dict | None = None,
    ) -> None:
        self._client = RestClient(session)
        self._session = session
        db = database_name or current_setting(session, "database")
        sch = schema_name or current_setting(session, "schema")
        if not db or not sch:
            raise InvalidArgumentError(
                "Registry needs a database and a schema: Registry(session, database_name=..., "
                "schema_name=...), or set them on the session (USE DATABASE / USE SCHEMA)"
            )
        self.database_name = ident(db, kind="database name")
        self.schema_name = ident(sch, kind="schema name")
        # The reference's one option (enable_monitoring) has nothing to switch here: monitor
        # methods say they are not supported.
        self._options = dict(options or {})
        default_context(session, self.database_name, self.schema_name)

    def __repr__(self) -> str:
        return f"Registry({quote(self.database_name)}.{quote(self.schema_name)})"

    @property
    def location(self) -> str:
        return f"{quote(self.database_name)}.{quote(self.schema_name)}"

    def _path(self, model: str | None = None) -> str:
        base = f"/api/v1/models/{segment(self.database_name)}/{segment(self.schema_name)}"
        return base if model is None else f"{base}/{segment(model)}"

    def _locate(self, model_name: str) -> tuple[Registry, str]:
        """The registry a (possibly qualified) model name lives in, and the bare name."""
        database, schema, name = compat.split_model_name(model_name)
        database = database or self.database_name
        schema = schema or self.schema_name
        if (database, schema) == (self.database_name, self.schema_name):
            return self, name
        other = Registry.__new__(Registry)
        other._client, other._session, other._options = self._client, self._session, self._options
        other.database_name, other.schema_name = database, schema
        return other, name

    # -- log ------------------------------------------------------------------------------------
    def log_model(
        self,
        model: Any,
        model_name: str,
        version_name: str | None = None,
        *,
        comment: str | None = None,
        metrics: dict | None = None,
        conda_dependencies: list[str] | None = None,
        pip_requirements: list[str] | None = None,
        artifact_repository_map: dict[str, str] | None = None,
        resource_constraint: dict[str, str] | None = None,
        target_platforms: list[str] | None = None,
        python_version: str | None = None,
        signatures: dict | None = None,
        sample_input_data: Any = None,
        user_files: dict[str, list[str]] | None = None,
        code_paths: list[str | os.PathLike] | None = None,
        ext_modules: list[ModuleType] | None = None,
        task: compat.Task | str = compat.Task.UNKNOWN,
        options: dict | None = None,
        tags: dict | None = None,
    ) -> ModelVersion:
        """Save ``model`` here, upload it, register it as a new version; return that version.

        ``model`` may also be a ``ModelVersion``: its files are copied as a new version of
        ``model_name``. ``options``: ``target_methods`` (list), ``method_options`` ({method:
        {"max_batch_size": n}}), ``relax_version`` (widen the automatic ``==installed`` pins to
        ``>=X.Y,<X+1``). ``user_files`` ({subdirectory: [paths]}) are shipped under
        ``user_files/<subdirectory>/`` of the model directory; ``ext_modules`` are pickled with
        the model by value.
        """
        from neve.environments.dependencies import pin_dependencies
        from neve.models import handler_for_model, save_model

        if artifact_repository_map:
            raise compat.unsupported(
                "log_model(artifact_repository_map=...)",
                "packages come from the package index the build is allowed to reach: list them "
                "in pip_requirements and grant the build an external access integration",
            )
        if resource_constraint:
            raise compat.unsupported(
                "log_model(resource_constraint=...)",
                "in-process runs use this machine; size services with create_service("
                "cpu_requests=..., memory_requests=..., gpu_requests=...)",
            )
        registry, bare = self._locate(model_name)
        if registry is not self:
            return registry.log_model(
                model,
                bare,
                version_name,
                comment=comment,
                metrics=metrics,
                conda_dependencies=conda_dependencies,
                pip_requirements=pip_requirements,
                target_platforms=target_platforms,
                python_version=python_version,
                signatures=signatures,
                sample_input_data=sample_input_data,
                user_files=user_files,
                code_paths=code_paths,
                ext_modules=ext_modules,
                task=task,
                options=options,
                tags=tags,
            )
        name = bare
        label = f"model {self.location}.{quote(name)}"
        version = ident(version_name, kind="version name") if version_name else None
        if version is not None:
            self._refuse_existing_version(name, version, label)
        if isinstance(model, ModelVersion):
            return self._copy_version(model, name, version_name, comment, metrics, tags, label)
        opts = dict(options or {})
        for key in ("target_methods", "method_options"):
            if key in opts and opts[key] is not None and not isinstance(opts[key], list | dict):
                raise InvalidArgumentError(f"{label}: options[{key!r}] has the wrong type")
        kind = compat.as_task(task)
        if kind is not compat.Task.UNKNOWN:
            opts["task"] = kind.value
        conda = as_list(conda_dependencies, "conda_dependencies")
        pip = as_list(pip_requirements, "pip_requirements")
        with tempfile.TemporaryDirectory(prefix="neve-log-") as tmp:
            work = Path(tmp)
            try:
                handler = handler_for_model(model)
                # Pinned here: this process is where the model was trained and tested.
                pinned = pin_dependencies(
                    handler.requirements(model),
                    conda,
                    pip,
                    relax_version=bool(opts.get("relax_version")),
                )
                payload = work / "payload"
                with compat.pickled_by_value(ext_modules):
                    save_model(
                        model,
                        payload / "model",
                        sample_input=sample_input_data,
                        signatures=signatures,
                        target_methods=opts.get("target_methods"),
                        method_options=opts.get("method_options"),
                        code_paths=code_paths,
                        user_files=user_files,
                        python_version=python_version,
                        dependencies=pinned,
                    )
                request = {
                    "version_name": version_name,
                    "conda_dependencies": conda,
                    "pip_requirements": pip,
                    "python_version": python_version,
                    "comment": comment,
                    "metrics": metrics,
                    "options": opts,
                    "target_platforms": target_platforms,
                    "tags": tags,
                }
                packed = self._pack(payload, request, label, work)
            except NeveError as exc:
                raise rebuild_error(exc, f"cannot log {label}: {exc.message}") from None
            return self._upload(name, packed)

    def _pack(self, payload: Path, request: dict, label: str, work: Path) -> Any:
        from neve.registry import archive

        (payload / "request.json").write_text(json.dumps(jsonable(request, label)))
        # a file, not bytes: memory stays flat whatever the weights weigh
        packed = archive.pack_file(payload, work / "upload.tar")
        shutil.rmtree(payload)  # the archive holds it: do not keep the disk twice
        return packed

    def _upload(self, name: str, packed: Any) -> ModelVersion:
        from neve.registry import archive

        row = self._client.call(
            "POST",
            self._path(name) + "/versions",
            content=archive.FileChunks(packed.path),
            headers={
                "Content-Type": packed.media_type,
                "Content-Length": str(packed.size),
                UPLOAD_SHA_HEADER: packed.sha256,
            },
        )
        return ModelVersion(Model(self, name), row["name"], row)

    def _copy_version(
        self,
        source: ModelVersion,
        name: str,
        version_name: str | None,
        comment: str | None,
        metrics: dict | None,
        tags: dict | None,
        label: str,
    ) -> ModelVersion:
        """A new version whose files, dependencies and platforms are ``source``'s."""
        info = source._describe()
        with tempfile.TemporaryDirectory(prefix="neve-copy-") as tmp:
            work = Path(tmp)
            shutil.copytree(source._local_dir(info), work / "payload" / "model")
            request = {
                "version_name": version_name,
                "conda_dependencies": info.get("conda_dependencies") or [],
                "pip_requirements": info.get("pip_requirements") or [],
                "python_version": info.get("python_version") or None,
                "comment": comment if comment is not None else info.get("comment"),
                "metrics": metrics if metrics is not None else source.show_metrics(),
                "options": info.get("options") or {},
                "target_platforms": info.get("target_platforms"),
                "tags": tags,
            }
            packed = self._pack(work / "payload", request, label, work)
            return self._upload(name, packed)

    def _refuse_existing_version(self, model: str, version: str, label: str) -> None:
        """Fail before the (possibly slow) save when the version name is already taken."""
        try:
            row = self._client.call("GET", f"{self._path(model)}/versions/{segment(version)}")
        except ObjectNotFoundError:
            return
        if row.get("name") == version:
            raise ObjectExistsError(f"{label} already has a version {quote(version)}")

    # -- models ---------------------------------------------------------------------------------
    def get_model(self, model_name: str) -> Model:
        """The model ``model_name`` (``ObjectNotFoundError``, a ``ValueError``, when absent)."""
        registry, name = self._locate(model_name)
        row = registry._client.call("GET", registry._path(name))
        return Model(registry, row["name"], row)

    def models(self) -> list[Model]:
        return [Model(self, row["name"], row) for row in self._client.call("GET", self._path())]

    def show_models(self) -> pd.DataFrame:
        return frame(self._client.call("GET", self._path()))

    def delete_model(self, model_name: str) -> None:
        registry, name = self._locate(model_name)
        registry._client.call("DELETE", registry._path(name))

    # -- monitoring (not offered) -----------------------------------------------------------------
    def add_monitor(self, name: str, source_config: Any, model_monitor_config: Any) -> Any:
        raise compat.unsupported("model monitoring (add_monitor)", _MONITORING_INSTEAD)

    def get_monitor(self, *, name: str | None = None, model_version: Any = None) -> Any:
        raise compat.unsupported("model monitoring (get_monitor)", _MONITORING_INSTEAD)

    def show_model_monitors(self) -> list[Any]:
        raise compat.unsupported("model monitoring (show_model_monitors)", _MONITORING_INSTEAD)

    def delete_monitor(self, name: str) -> None:
        raise compat.unsupported("model monitoring (delete_monitor)", _MONITORING_INSTEAD)


_MONITORING_INSTEAD = (
    "record quality figures with mv.set_metric(...) and read a service's request metrics with "
    "`neve services metrics <service>` (Prometheus)"
)
