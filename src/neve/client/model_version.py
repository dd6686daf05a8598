"""``ModelVersion``: one logged version: metadata, metrics, aliases, files, load and run."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from neve.client import compat
from neve.client.rest import rebuild_error, segment
from neve.client.services import ServiceMixin
from neve.errors import (
    InvalidArgumentError,
    InvalidStateError,
    NeveError,
    NotSupportedError,
    ObjectNotFoundError,
    SignatureError,
)
from neve.identifiers import ident, quote

if TYPE_CHECKING:
    from neve.client.model import Model
    from neve.models import LoadedModel


_LOADED_MAX = 8


def _check_strict(data: pd.DataFrame, signature: dict, label: str) -> None:
    """``strict_input_validation``: every input column present with exactly its signature type
    (no conversion from strings, no float-to-int narrowing)."""
    from neve.models.signature import FeatureSpec, _type_of_values, column_lookup

    find = column_lookup(data.columns)
    for raw in signature.get("inputs", []):
        feat = FeatureSpec(**raw)
        src = find(feat.name)
        if src is None:
            raise SignatureError(f"{label}: input has no column {feat.name!r}")
        if feat.shape:
            continue
        got, _shape = _type_of_values(data[src], str(src))
        widening = {("FLOAT", "DOUBLE"), ("INT32", "INT64"), ("INT16", "INT64"), ("INT8", "INT64")}
        if got != feat.type and (got, feat.type) not in widening:
            raise SignatureError(
                f"{label}: strict_input_validation: column {feat.name!r} is {got}, the "
                f"signature says {feat.type}"
            )


def _environment_mismatches(requirements: list[str]) -> list[str]:
    """Requirements (PEP 508) this process does not satisfy, each with what is installed."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append(f"{text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            out.append(f"{text} (installed: {installed})")
    return out


def segment_name(text: str, kind: str) -> str:
    """A name as the user wrote it, checked and normalized here, as one URL path segment."""
    return segment(ident(text, kind=kind))


class _LoadedCache:
    """Models loaded in this process, by artifact checksum (repeated runs skip the load)."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, directory: Path) -> LoadedModel:
        from neve.models import load_model

        with self._lock:
            loaded = self._items.get(digest)
            if loaded is not None:
                self._items.move_to_end(digest)
                return loaded
        loaded = load_model(directory)
        with self._lock:
            self._items[digest] = loaded
            while len(self._items) > _LOADED_MAX:
                self._items.popitem(last=False)
        return loaded


_LOADED = _LoadedCache()


class ModelVersion(ServiceMixin):
    """One version of a model: its functions, metrics, aliases, files, and runs."""

    def __init__(self, model: Model, version_name: str, row: dict | None = None) -> None:
        self._model = model
        self._registry = model._registry
        self._client = model._client
        self._session = self._registry._session
        self._transport = self._client.transport
        self._version_name = version_name
        self._row = row
        self._functions: list[dict[str, Any]] | None = None  # show_functions: never changes

    def __repr__(self) -> str:
        return f"ModelVersion({self.fully_qualified_model_name}, {quote(self.version_name)})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ModelVersion)
            and other.fully_qualified_model_name == self.fully_qualified_model_name
            and other.version_name == self.version_name
        )

    def __hash__(self) -> int:
        return hash((self.fully_qualified_model_name, self.version_name))

    # -- names ------------------------------------------------------------------------------------
    @property
    def version_name(self) -> str:
        return self._version_name

    @property
    def model_name(self) -> str:
        return self._model.name

    @property
    def database_name(self) -> str:
        return self._registry.database_name

    @property
    def schema_name(self) -> str:
        return self._registry.schema_name

    @property
    def fully_qualified_model_name(self) -> str:
        return self._model.fully_qualified_name

    @property
    def model(self) -> Model:
        return self._model

    @property
    def _path(self) -> str:
        return f"{self._model._path}/versions/{segment(self.version_name)}"

    @property
    def _label(self) -> str:
        return f"model {self.fully_qualified_model_name} version {quote(self.version_name)}"

    def _describe(self) -> dict:
        self._row = self._client.call("GET", self._path)
        return self._row

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def comment(self) -> str | None:
        return self._describe().get("comment")

    @comment.setter
    def comment(self, text: str | None) -> None:
        self._client.call("PATCH", self._path, json={"comment": text})

    description = comment

    @property
    def target_platforms(self) -> list[str]:
        return list(self._describe()["target_platforms"])

    @property
    def dependencies(self) -> list[str]:
        """The pinned PEP 508 requirements the service image is built from."""
        return list(self._describe()["dependencies"])

    @property
    def aliases(self) -> list[str]:
        return list(self._describe()["aliases"])

    def show_functions(self) -> list[dict[str, Any]]:
        """One dict per function: name (as SQL calls it), target_method,
        target_method_function_type (FUNCTION, or TABLE_FUNCTION for a partitioned method),
        signature (a ``ModelSignature``), is_partitioned, options."""
        from neve.models.signature import ModelSignature

        return [
            {
                "name": row["name"],
                "target_method": row["target_method"],
                "target_method_function_type": row["target_method_function_type"],
                "signature": ModelSignature.from_dict(row["signature"]),
                "is_partitioned": bool(row["is_partitioned"]),
                "options": row.get("options") or {},
            }
            for row in self._client.call("GET", self._path + "/functions")
        ]

    def get_model_task(self) -> compat.Task:
        """The task given at log time (``log_model(task=...)``); UNKNOWN when none was."""
        return compat.as_task((self._describe().get("options") or {}).get("task") or "UNKNOWN")

    def set_metric(self, metric_name: str, value: Any) -> None:
        self._client.call(
            "PUT", self._path + "/metrics", json={"name": metric_name, "value": value}
        )

    def get_metric(self, metric_name: str) -> Any:
        metrics = self.show_metrics()
        if metric_name not in metrics:
            raise ObjectNotFoundError(
                f"{self._label} has no metric {metric_name!r}; metrics: {sorted(metrics) or 'none'}"
            )
        return metrics[metric_name]

    def show_metrics(self) -> dict[str, Any]:
        return self._client.call("GET", self._path + "/metrics")

    def delete_metric(self, metric_name: str) -> None:
        self._client.call("DELETE", self._path + "/metrics", params={"name": metric_name})

    def set_alias(self, alias_name: str) -> None:
        self._client.call("PUT", f"{self._path}/aliases/{segment_name(alias_name, 'alias')}")

    def unset_alias(self, version_or_alias: str) -> None:
        """Remove the alias ``version_or_alias`` from the model (whichever version holds it)."""
        self._client.call(
            "DELETE", f"{self._model._path}/aliases/{segment_name(version_or_alias, 'alias')}"
        )

    # -- files ------------------------------------------------------------------------------------
    def _download(self, destination: Path) -> str:
        """Fetch the model directory into the new directory ``destination``; return its digest."""
        from neve.models import directory_digest
        from neve.registry import archive

        what = f"{self._label} artifact"
        self._client.call(
            "GET",
            self._path + "/artifact",
            # extracted as it arrives: the archive is never held whole in memory
            stream_to=lambda chunks: archive.unpack_stream(chunks, destination, what=what),
        )
        return directory_digest(destination)

    def _local_dir(self, info: dict | None = None) -> Path:
        """The version's files in the account cache, downloaded once and verified by checksum."""
        info = info or self._describe()
        digest = info["artifact_sha256"]
        root = self._client.cache_root()
        cached = root / digest
        if cached.is_dir():
            return cached
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=root))
        try:
            got = self._download(work / "d")
            if got != digest:
                raise InvalidStateError(
                    f"{self._label}: downloaded files have checksum {got[:12]}, the registry "
                    f"recorded {digest[:12]}"
                )
            try:
                os.rename(work / "d", cached)
            except OSError:
                if not cached.is_dir():  # a concurrent download finished first: use that one
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return cached

    def export(
        self,
        target_path: str | os.PathLike,
        *,
        export_mode: compat.ExportMode | str = compat.ExportMode.MODEL,
    ) -> Path:
        """Write the version's model directory (manifest.json, model/, code/) to ``target_path``.

        ``export_mode=ExportMode.FULL`` also writes ``requirements.txt``: the pinned
        dependencies the service environment is built from.
        """
        mode = compat.as_export_mode(export_mode)
        target = Path(target_path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise InvalidArgumentError(
                f"export target {target} exists and is not an empty directory"
            )
        if target.exists():
            target.rmdir()
        self._download(target)
        if mode is compat.ExportMode.FULL:
            (target / "requirements.txt").write_text("".join(f"{d}\n" for d in self.dependencies))
        return target

    def load(self, *, force: bool = False, options: dict | None = None) -> Any:
        """The Python model object, loaded in this process from the version's files.

        The version's pinned dependencies are checked against what is installed here first:
        a missing or different package is an error naming it, unless ``force=True``.
        ``options={"use_gpu": True}`` loads it onto the GPU.
        """
        from neve.models import load_model

        info = self._describe()
        opts = dict(options or {})
        device = "cuda" if opts.pop("use_gpu", False) else "cpu"
        if opts:
            raise InvalidArgumentError(
                f"unknown load option(s) {', '.join(sorted(opts))}; known: use_gpu"
            )
        if not force:
            mismatched = _environment_mismatches(info.get("dependencies") or [])
            if mismatched:
                raise InvalidStateError(
                    f"{self._label} was logged with packages this process lacks or has in "
                    f"another version: {'; '.join(mismatched)}. Install them, or pass "
                    "load(force=True) to load anyway"
                )
        return load_model(self._local_dir(info), device=device).raw

    # -- run ------------------------------------------------------------------------------------
    def run(
        self,
        X: Any,
        *,
        service_name: str | None = None,
        function_name: str | None = None,
        partition_column: str | None = None,
        strict_input_validation: bool = False,
        params: dict[str, Any] | None = None,
        **service_options: Any,
    ) -> pd.DataFrame:
        """Call a method; return the input columns followed by the output columns.

        Without ``service_name`` the model runs in this process (it must target WAREHOUSE);
        with it, the call goes to that service. ``X`` is a DataFrame (columns matched to the
        signature by name), or a list / numpy array (matched by position). ``params`` sets the
        method's declared parameters for this call. A partitioned method (a table function)
        runs once per value of ``partition_column`` and returns that column followed by its
        output rows; without ``partition_column`` all rows are one partition and the answer is
        the method's output rows (in this process and on a service alike).
        ``strict_input_validation`` refuses input that would need conversion.
        """
        if service_name is not None:
            if strict_input_validation:
                info = self._describe()
                method, signature = self._function(info["methods"], function_name)
                _check_strict(self._input_frame(X, signature), signature, self._label)
            runner = getattr(self, "_run_on_service", None)
            if runner is None:
                raise NotSupportedError(
                    f"{self._label}: running on service {service_name} needs the services "
                    "component (neve.client.services), which is not available"
                )
            from neve.client import table_calls

            if (
                partition_column is not None
                or params
                or table_calls.is_table_function(self, function_name)
            ):
                return table_calls.run_on_service(
                    self,
                    X,
                    service_name=service_name,
                    function_name=function_name,
                    partition_column=partition_column,
                    params=params,
                    **service_options,
                )
            return runner(
                X, function_name=function_name, service_name=service_name, **service_options
            )
        if service_options:
            raise InvalidArgumentError(
                f"unexpected argument(s) {', '.join(sorted(service_options))} for an in-process "
                "run (they apply with service_name=...)"
            )
        info = self._describe()
        if "WAREHOUSE" not in info["target_platforms"]:
            reasons = "; ".join(info.get("platform_reasons") or []) or "it targets SERVICE only"
            raise NotSupportedError(
                f"{self._label} cannot run in this process: {reasons}. It needs a service: "
                "mv.create_service(service_name=..., service_compute_pool=..., image_repo=...), "
                "then mv.run(data, function_name=..., service_name=...)"
            )
        method, signature = self._function(info["methods"], function_name)
        data = self._input_frame(X, signature)
        if strict_input_validation:
            _check_strict(data, signature, self._label)
        loaded = _LOADED.get(info["artifact_sha256"], self._local_dir(info))
        try:
            if loaded.method(method).partitioned:
                return loaded.call_partitioned(method, data, partition_column, params)
            if partition_column is not None:
                raise InvalidArgumentError(
                    f"function {method!r} is not partitioned: partition_column applies to "
                    "methods marked @neve.partitioned_api"
                )
            out = loaded.call(method, data, params)
        except NeveError as exc:
            raise rebuild_error(exc, f"{self._label}: {exc.message}") from None
        keep = [c for c in data.columns if c not in set(out.columns)]
        result = pd.concat([data[keep].reset_index(drop=True), out.reset_index(drop=True)], axis=1)
        result.index = data.index
        return result

    def create_service(  # type: ignore[override]
        self,
        *,
        service_name: str,
        image_build_compute_pool: str | None = None,
        service_compute_pool: str,
        image_repo: str | None = None,
        ingress_enabled: bool = False,
        min_instances: int | None = None,
        max_instances: int = 1,
        cpu_requests: str | None = None,
        memory_requests: str | None = None,
        gpu_requests: str | int | None = None,
        num_workers: int | None = None,
        max_batch_rows: int | None = None,
        force_rebuild: bool = False,
        build_external_access_integration: str | None = None,
        build_external_access_integrations: list[str] | None = None,
        block: bool = True,
        autocapture: bool | None = None,
        inference_engine_options: dict | None = None,
        experimental_options: dict | None = None,
        feature_sources_per_function: dict | None = None,
        auto_suspend_secs: int | None = None,
        comment: str | None = None,
        progress: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Deploy this version as a service (``ServiceMixin.create_service``).

        Without ``image_repo`` the image goes to the schema's default repository
        (``NEVE_DEFAULT_IMAGES``, created when missing). ``min_instances`` defaults to
        ``max_instances`` (a fixed size); 0 lets the service suspend itself when idle.
        """
        if autocapture:
            raise compat.unsupported(
                "create_service(autocapture=True) (inference logging to a table)",
                "log requests in your method, or read `neve services logs`",
            )
        for name, value, instead in (
            (
                "inference_engine_options",
                inference_engine_options,
                "neve serves models with "
                "its own inference server; tune it with num_workers and max_batch_rows",
            ),
            ("experimental_options", experimental_options, "leave it out"),
            (
                "feature_sources_per_function",
                feature_sources_per_function,
                "join the features in SQL before calling the service function",
            ),
        ):
            if value:
                raise compat.unsupported(f"create_service({name}=...)", instead)
        if image_repo is None:
            image_repo = self._default_image_repo()
        return ServiceMixin.create_service(
            self,
            service_name=service_name,
            service_compute_pool=service_compute_pool,
            image_repo=image_repo,
            build_external_access_integration=build_external_access_integration,
            ingress_enabled=ingress_enabled,
            max_instances=max_instances,
            cpu_requests=cpu_requests,
            memory_requests=memory_requests,
            gpu_requests=gpu_requests,
            num_workers=num_workers,
            max_batch_rows=max_batch_rows,
            force_rebuild=force_rebuild,
            image_build_compute_pool=image_build_compute_pool,
            min_instances=min_instances,
            block=block,
            build_external_access_integrations=build_external_access_integrations,
            auto_suspend_secs=auto_suspend_secs,
            comment=comment,
            progress=progress,
            timeout=timeout,
        )

    def _default_image_repo(self) -> str:
        name = f"{quote(self.database_name)}.{quote(self.schema_name)}.{compat.DEFAULT_IMAGE_REPO}"
        sql = getattr(self._session, "sql", None)
        if sql is None:
            raise InvalidArgumentError("create_service needs image_repo=... with this session")
        sql(f"CREATE IMAGE REPOSITORY IF NOT EXISTS {name}").collect()
        return name

    def run_batch(self, X: Any = None, *, compute_pool: str, **job_options: Any) -> Any:
        """Not offered: batch jobs on a compute pool."""
        raise compat.unsupported(
            "run_batch (batch inference jobs)",
            "run the rows through a service: mv.run(df, service_name=...) streams them in "
            "Arrow batches, or SELECT <service>_<method>(...) FROM <table> in SQL",
        )

    def _input_frame(self, X: Any, signature: dict) -> pd.DataFrame:
        """``X`` as a DataFrame; positional input (list, array) gets the signature's names."""
        from neve.models.signature import to_dataframe

        positional = not isinstance(X, pd.DataFrame) or not all(
            isinstance(c, str) for c in X.columns
        )
        try:
            data = to_dataframe(X)
        except SignatureError as exc:
            raise rebuild_error(exc, f"{self._label}: {exc.message}") from None
        names = [f["name"] for f in signature.get("inputs", [])]
        if positional and len(names) == len(data.columns):
            data = data.set_axis(names, axis=1)
        return data

    def _function(self, methods: dict[str, dict], function_name: str | None) -> tuple[str, dict]:
        """(target method, signature) a function name means (case-insensitive, '-' for '_')."""
        if function_name is None:
            if len(methods) == 1:
                return next(iter(methods.items()))
            raise InvalidArgumentError(
                f"{self._label} has several functions ({', '.join(sorted(methods))}): pass "
                "function_name=..."
            )
        wanted = function_name.upper().replace("-", "_")
        for method, signature in methods.items():
            if method.upper() == wanted:
                return method, signature
        raise ObjectNotFoundError(
            f"{self._label} has no function {function_name!r}; functions: "
            f"{', '.join(sorted(methods)) or 'none'}"
        )
