"""Service operations on a model version, as the user sees them.

``neve.client.model_version.ModelVersion`` inherits ``ServiceMixin``::

    mv.create_service(service_name="forecast_svc", service_compute_pool="cpu_pool",
                      image_repo="ml.registry.images", ingress_enabled=True, max_instances=2)
    mv.run(test_df, function_name="predict", service_name="forecast_svc")
    mv.list_services()            # DataFrame: name, status, inference_endpoint, ...
    mv.delete_service("forecast_svc")

Everything is a REST call (``neve.control.routes.services``). ``create_service`` asks the
control plane to provision in the background and polls the service's status (a ``progress``
callback, or the CLI's rich display, sees each change); ``block=False`` returns a
``ServiceHandle`` at once. Unqualified service and repository names are resolved in the model's
database and schema.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

import numpy as np
import orjson
import pandas as pd

from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
    NeveError,
    ObjectNotFoundError,
    SignatureError,
    error_from_dict,
)
from neve.identifiers import QualifiedName, qualify, quote

#: Rows per request through the data plane (an ingress proxy or an instance; the instance
#: cuts them into its batches).
DEFAULT_REQUEST_ROWS = 10_000
#: Requests of one ``mv.run`` in flight at once (spread over the instances by the router or
#: the proxy), so a large input keeps several instances busy.
CONCURRENT_REQUESTS = 4
POLL_INTERVAL_S = 0.5
TERMINAL = ("RUNNING", "FAILED", "SUSPENDED")
LIST_COLUMNS = [
    "name",
    "status",
    "inference_endpoint",
    "internal_endpoint",
    "pool",
    "instances",
    "created",
    "database_name",
    "schema_name",
    "min_instances",
    "max_instances",
    "ingress_url",
]

Progress = Callable[[dict[str, Any]], None]


def service_path(qn: QualifiedName) -> str:
    seg = [url_quote(quote(p), safe="") for p in (qn.database, qn.schema, qn.name)]
    return "/api/v1/services/" + "/".join(seg)


class ServiceHandle:
    """A service being created (or running): poll ``status()``, ``wait()`` for it."""

    def __init__(self, client: Any, qn: QualifiedName, row: dict[str, Any]) -> None:
        self._client = client
        self.qualified_name = qn
        self.row = row

    @property
    def name(self) -> str:
        return self.qualified_name.name

    def __str__(self) -> str:
        return str(self.qualified_name)

    def __repr__(self) -> str:
        return f"ServiceHandle({self.qualified_name}, status={self.row.get('status')})"

    def describe(self) -> dict[str, Any]:
        self.row = self._client.call("GET", service_path(self.qualified_name))
        return self.row

    def status(self) -> str:
        """PENDING, BUILDING, STARTING, RUNNING, SUSPENDING, SUSPENDED, FAILED or DELETING."""
        return str(self.describe()["status"])

    def done(self) -> bool:
        return self.status() in TERMINAL

    def wait(
        self, timeout: float | None = None, *, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Wait until the service is RUNNING (return its row) or FAILED (raise its error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        while True:
            row = self.describe()
            key = (row.get("status"), row.get("status_reason"), row.get("current_instances"))
            if progress is not None and key != last:
                progress(row)
            last = key
            if row["status"] == "RUNNING":
                return row
            if row["status"] == "FAILED":
                raise service_error(row)
            if row["status"] == "DELETING":
                raise ObjectNotFoundError(f"service {self.qualified_name} is being dropped")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"service {self.qualified_name} is still {row['status']} after {timeout:g} s"
                )
            time.sleep(POLL_INTERVAL_S)

    def logs(self, instance_id: int = 0, last_n_lines: int | None = None) -> str:
        params: dict[str, Any] = {"instance": instance_id}
        if last_n_lines is not None:
            params["last"] = last_n_lines
        return self._client.call("GET", service_path(self.qualified_name) + "/logs", params=params)[
            "text"
        ]


def service_error(row: dict[str, Any]) -> NeveError:
    """The error a FAILED service reports (the class the control plane recorded)."""
    reason = row.get("status_reason") or "no reason recorded"
    return error_from_dict(
        {
            "type": row.get("error_type") or "ServiceUnavailableError",
            "code": row.get("error_code"),
            "message": f"service {row.get('qualified_name') or row.get('name')} failed: {reason}",
        }
    )


class ServiceMixin:
    """Mixed into ``ModelVersion``: ``create_service``, ``list_services``, ``delete_service``,
    and ``_run_on_service`` (``run(..., service_name=...)``)."""

    # Provided by ModelVersion (read-only properties there).
    _client: Any
    if TYPE_CHECKING:

        @property
        def version_name(self) -> str: ...

        @property
        def database_name(self) -> str: ...

        @property
        def schema_name(self) -> str: ...

        @property
        def fully_qualified_model_name(self) -> str: ...

        @property
        def _label(self) -> str: ...

    def _service_qn(self, name: str, kind: str = "service") -> QualifiedName:
        return qualify(name, database=self.database_name, schema=self.schema_name, kind=kind)

    def _context_headers(self) -> dict[str, str]:
        headers = dict(self._client.headers()) if hasattr(self._client, "headers") else {}
        ctx = json.loads(headers.get("X-Neve-Context", "{}"))
        ctx.update({"database": self.database_name, "schema": self.schema_name})
        headers["X-Neve-Context"] = json.dumps(ctx)
        return headers

    # -- create -----------------------------------------------------------------------------------
    def create_service(
        self,
        service_name: str,
        service_compute_pool: str,
        image_repo: str,
        build_external_access_integration: str | None = None,
        ingress_enabled: bool = False,
        max_instances: int = 1,
        cpu_requests: str | None = None,
        memory_requests: str | None = None,
        gpu_requests: str | int | None = None,
        num_workers: int | None = None,
        max_batch_rows: int | None = None,
        force_rebuild: bool = False,
        image_build_compute_pool: str | None = None,
        min_instances: int | None = None,
        block: bool = True,
        *,
        build_external_access_integrations: list[str] | None = None,
        auto_suspend_secs: int | None = None,
        comment: str | None = None,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> ServiceHandle:
        """Deploy this version as a service; return its handle (RUNNING when ``block``).

        Idempotent: the same arguments again neither rebuild nor restart; other arguments on
        an existing name raise. When a blocking create fails, the service is removed again
        and the error says why (a build error names the build job and its log).
        """
        qn = self._service_qn(service_name)
        integrations = list(build_external_access_integrations or [])
        if build_external_access_integration:
            integrations.insert(0, build_external_access_integration)
        body = {
            "model": self.fully_qualified_model_name,
            "version": quote(self.version_name),
            "service_name": str(qn),
            "compute_pool": service_compute_pool,
            "image_repo": str(self._service_qn(image_repo, "image repository")),
            "ingress_enabled": ingress_enabled,
            "max_instances": max_instances,
            "min_instances": min_instances,
            "cpu_requests": cpu_requests,
            "memory_requests": memory_requests,
            "gpu_requests": gpu_requests,
            "num_workers": num_workers,
            "max_batch_rows": max_batch_rows,
            "build_external_access_integrations": integrations,
            "image_build_compute_pool": image_build_compute_pool,
            "force_rebuild": force_rebuild,
            "auto_suspend_secs": auto_suspend_secs,
            "comment": comment,
            "block": False,
        }
        row = self._client.call(
            "POST", "/api/v1/services", json=body, headers=self._context_headers()
        )
        handle = ServiceHandle(self._client, qn, row)
        if not block:
            return handle
        try:
            handle.wait(timeout, progress=progress)
        except NeveError:
            # Nothing half-created: a failed blocking create removes the service again.
            try:
                self._client.call("DELETE", service_path(qn), params={"if_exists": "true"})
            except NeveError:
                pass
            raise
        return handle

    # -- list / delete ----------------------------------------------------------------------------
    def _my_services(self) -> list[dict[str, Any]]:
        rows = self._client.call("GET", "/api/v1/services", headers=self._context_headers())
        return [
            r
            for r in rows
            if r.get("model_name") == self.fully_qualified_model_name
            and r.get("model_version") == self.version_name
        ]

    def list_services(self) -> pd.DataFrame:
        """This version's services: name, status, inference_endpoint (ingress host),
        internal_endpoint, pool, instances, created (build jobs are not listed)."""
        out = []
        for r in self._my_services():
            out.append(
                {
                    "name": r.get("qualified_name") or r["name"],
                    "status": r["status"],
                    "inference_endpoint": r.get("inference_endpoint"),
                    "internal_endpoint": r.get("internal_endpoint"),
                    "pool": r.get("compute_pool"),
                    "instances": r.get("current_instances"),
                    "created": pd.to_datetime(r.get("created_on"), utc=True),
                    "database_name": r.get("database_name"),
                    "schema_name": r.get("schema_name"),
                    "min_instances": r.get("min_instances"),
                    "max_instances": r.get("max_instances"),
                    "ingress_url": r.get("ingress_url"),
                }
            )
        return pd.DataFrame(out, columns=LIST_COLUMNS)

    def delete_service(self, service_name: str) -> None:
        """Drop a service of this version: its instances stop, its functions go."""
        qn = self._service_qn(service_name)
        row = self._client.call("GET", service_path(qn))
        if (
            row.get("model_name") != self.fully_qualified_model_name
            or row.get("model_version") != self.version_name
        ):
            raise InvalidArgumentError(
                f"service {qn} serves model {row.get('model_name')} version "
                f"{row.get('model_version')}, not {self._label}; drop it with DROP SERVICE"
            )
        self._client.call("DELETE", service_path(qn))

    # -- run --------------------------------------------------------------------------------------
    def _run_on_service(
        self,
        X: Any,
        *,
        function_name: str | None = None,
        service_name: str,
        timeout_s: float = 300.0,
        request_rows: int = DEFAULT_REQUEST_ROWS,
    ) -> pd.DataFrame:
        """Send ``X`` to the service in batches; same DataFrame shape as the in-process run."""
        from neve.models.signature import ModelSignature, to_dataframe

        qn = self._service_qn(service_name)
        path = service_path(qn)
        methods = self._client.call("GET", path + "/methods")
        method = _pick_method(methods, function_name, qn)
        signature = ModelSignature.from_dict(methods[method])
        try:
            data = X if isinstance(X, pd.DataFrame) else to_dataframe(X)
        except SignatureError as exc:
            raise SignatureError(f"{self._label}: {exc.message}") from None
        route = f"{path}/invoke/{url_quote(method, safe='')}"
        step = max(1, int(request_rows))
        table = _input_table(data, signature)
        plane = self._data_plane(str(qn), method, timeout_s)
        if table is not None:
            # Columns travel as Arrow IPC, through the data plane (a proxy or the instances),
            # several requests at once.
            parts = concurrent_map(
                lambda chunk: self._invoke_arrow(route, chunk, timeout_s, plane),
                [table.slice(start, step) for start in range(0, table.num_rows, step)],
            )
            out = _arrow_output_frame(parts, signature, data.index)
        else:
            # Columns Arrow cannot type (mixed objects): JSON rows, so that the service names
            # the bad row and column.
            columns = _input_columns(data, signature, method)
            outputs: list[dict] = []
            for start in range(0, len(data), step):
                stop = min(len(data), start + step)
                rows = [
                    [i, *vals]
                    for i, vals in zip(
                        range(start, stop),
                        zip(*(c[start:stop] for c in columns), strict=True),
                        strict=True,
                    )
                ]
                if plane is not None:
                    client, target = plane
                    answer = orjson.loads(
                        client.send(
                            target,
                            orjson.dumps({"data": rows}, option=orjson.OPT_SERIALIZE_NUMPY),
                            content_type="application/json",
                            timeout_s=timeout_s,
                            service=str(qn),
                            method=method,
                        )
                    )
                else:
                    answer = self._client.call(
                        "POST",
                        route,
                        json={"data": rows, "timeout_s": timeout_s},
                        timeout=timeout_s + 30,
                    )
                outputs.extend(out for _idx, out in answer["data"])
            out = _output_frame(outputs, signature, data.index)
        keep = [c for c in data.columns if c not in set(out.columns)]
        return pd.concat([data[keep], out], axis=1)

    def _data_plane(self, service: str, method: str, timeout_s: float) -> tuple[Any, Any] | None:
        """A data-plane client and the service's route; None where the control plane does not
        offer the look-up (then rows go through its invoke route)."""
        from neve.dataplane.client import DataPlaneClient

        def auth_headers() -> dict[str, str]:
            transport = getattr(self._client, "transport", self._client)
            token = getattr(transport, "token", None)
            headers = dict(self._client.headers()) if hasattr(self._client, "headers") else {}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            return headers

        client = DataPlaneClient(self._client.call, auth_headers)
        try:
            return client, client.lookup(service, method, timeout_s)
        except ObjectNotFoundError:  # the service and method exist: the route does not
            return None

    def _invoke_arrow(
        self, route: str, table: Any, timeout_s: float, plane: tuple[Any, Any] | None = None
    ) -> Any:
        from neve.server import arrow_ipc

        if plane is not None:
            client, target = plane
            return arrow_ipc.read_stream(
                client.send(
                    target,
                    arrow_ipc.write_stream(table),
                    content_type=arrow_ipc.ARROW_STREAM,
                    timeout_s=timeout_s,
                    service=target.label,
                    method=target.route,
                )
            )
        content = self._client.call(
            "POST",
            route,
            content=arrow_ipc.write_stream(table),
            headers={"Content-Type": arrow_ipc.ARROW_STREAM, "Accept": arrow_ipc.ARROW_STREAM},
            params={"timeout_s": timeout_s},
            timeout=timeout_s + 30,
            raw=True,
        )
        return arrow_ipc.read_stream(content)


def concurrent_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(item) for item in items]``, up to ``CONCURRENT_REQUESTS`` at once, in order."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(CONCURRENT_REQUESTS, len(items))) as pool:
        return list(pool.map(fn, items))


def _input_table(data: pd.DataFrame, signature: Any) -> Any | None:
    """The signature's input columns as an Arrow table; None when a column has no Arrow type.

    A missing column is left to the JSON path, whose error names it as the service does.
    """
    import pyarrow as pa

    from neve.models.signature import column_lookup

    if len(data) == 0:
        return None
    find = column_lookup(data.columns)
    arrays = []
    for feat in signature.inputs:
        src = find(feat.name)
        if src is None:
            return None
        try:
            arrays.append(pa.array(data[src], from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
            return None
    return pa.Table.from_arrays(arrays, names=signature.input_names)


def _arrow_output_frame(parts: list[Any], signature: Any, index: pd.Index) -> pd.DataFrame:
    """Output tables (one per request) -> the signature's output columns on ``index``."""
    import pyarrow as pa

    from neve.models.signature import column_lookup

    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    find = column_lookup(table.column_names)
    columns: dict[str, Any] = {}
    for feat in signature.outputs:
        src = find(feat.name)
        if src is None:
            raise ModelExecutionError(
                f"the service answered without output {feat.name!r} (got {table.column_names})"
            )
        series = table.column(src).to_pandas()
        series.index = index
        columns[feat.name] = series
    return pd.DataFrame(columns, index=index, columns=signature.output_names)


def _pick_method(methods: dict[str, Any], function_name: str | None, qn: QualifiedName) -> str:
    if function_name is None:
        if len(methods) == 1:
            return next(iter(methods))
        raise InvalidArgumentError(
            f"service {qn} has several functions ({', '.join(sorted(methods))}): pass "
            "function_name=..."
        )
    wanted = function_name.upper().replace("-", "_")
    for method in methods:
        if method.upper() == wanted:
            return method
    raise ObjectNotFoundError(
        f"service {qn} has no function {function_name!r}; functions: "
        f"{', '.join(sorted(methods)) or 'none'}"
    )


def _input_columns(data: pd.DataFrame, signature: Any, method: str) -> list[list]:
    """One JSON-ready list per signature input (columns matched case-insensitively)."""
    by_upper = {str(c).upper(): c for c in data.columns}
    out = []
    missing = []
    for feat in signature.inputs:
        src = feat.name if feat.name in data.columns else by_upper.get(feat.name.upper())
        if src is None:
            missing.append(feat.name)
            continue
        out.append(_json_column(data[src]))
    if missing:
        raise SignatureError(
            f"method {method!r}: input is missing column(s) {missing}; expected "
            f"{signature.input_names}, got {[str(c) for c in data.columns]}"
        )
    return out


def _json_column(col: pd.Series) -> list:
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return [None if pd.isna(v) else v.isoformat() for v in col]
    if col.dtype.kind in "biuf":
        return col.tolist()  # numpy scalars -> Python numbers (NaN stays NaN -> null)
    values = col.astype(object).tolist()
    return [_json_value(v) for v in values]


def _json_value(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def _output_frame(outputs: list[dict], signature: Any, index: pd.Index) -> pd.DataFrame:
    from neve.models.signature import DTYPES

    names = signature.output_names
    columns: dict[str, Any] = {}
    for feat in signature.outputs:
        values = [o.get(feat.name) for o in outputs]
        if feat.shape:
            columns[feat.name] = pd.Series(
                [np.asarray(v) if v is not None else None for v in values],
                index=index,
                dtype=object,
            )
            continue
        series = pd.Series(values, index=index)
        dtype = DTYPES.get(feat.type)
        if dtype is not None and dtype is not object and not series.isna().any():
            try:
                series = series.astype(dtype)
            except (TypeError, ValueError):
                pass
        columns[feat.name] = series
    return pd.DataFrame(columns, index=index, columns=names)
