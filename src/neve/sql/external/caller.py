"""Calling an external function's endpoint in batches over HTTP (one connection pool), in the external-function data format."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pyarrow as pa

from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
    NeveError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    pass

from neve.sql.external.functions import JSON_RETURNS, RESULT, SCALAR_TYPES, ExternalTarget
from neve.sql.external.urls import remote_service

#: Answers retried (with the batch's retries and deadline): the remote is busy or restarting.
_RETRY_STATUS = frozenset({429, 502, 503, 504})


_ARROW = {
    "DOUBLE": pa.float64(),
    "INT64": pa.int64(),
    "STRING": pa.string(),
    "BOOL": pa.bool_(),
    "TIMESTAMP_NTZ": pa.timestamp("us"),
}


class ExternalCaller:
    """Sends external functions' batches over HTTP (one connection pool per SQL engine)."""

    def __init__(self) -> None:
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                    follow_redirects=False,  # a redirect could leave the allowed prefixes
                )
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def call(
        self, target: ExternalTarget, table: pa.Table, *, timeout_s: float, retries: int | None
    ) -> pa.Table:
        """One batch: ``table``'s rows out, a one-column table (``RESULT``) of answers back."""
        columns = [c.to_pylist() for c in table.columns]
        n = table.num_rows
        body = orjson.dumps(
            {"data": [[i, *values] for i, values in enumerate(zip(*columns, strict=True))]}
            if columns
            else {"data": [[i] for i in range(n)]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        headers = {"content-type": "application/json", "accept": "application/json"}
        if target.key:
            headers["authorization"] = f"Bearer {target.key}"
        payload = self._post(target, body, headers, timeout_s, 3 if retries is None else retries)
        return pa.table({RESULT: self._results(target, payload, n)})

    def _post(
        self,
        target: ExternalTarget,
        body: bytes,
        headers: dict[str, str],
        timeout_s: float,
        retries: int,
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            failure: NeveError
            pause = min(2.0, 0.1 * 2**attempt)
            try:
                resp = self.http.post(
                    target.url, content=body, headers=headers, timeout=max(0.1, remaining)
                )
            except httpx.TimeoutException:
                failure = ServiceUnavailableError(
                    f"external function {target.function}: {target.url} did not answer within "
                    f"{timeout_s:g} s (BATCH_TIMEOUT_SECS)",
                    code="REMOTE_TIMEOUT",
                )
            except httpx.TransportError as exc:
                failure = ServiceUnavailableError(
                    f"external function {target.function}: cannot connect to {target.url} "
                    f"({type(exc).__name__}: {exc}); is the remote installation running and the "
                    "URL right?",
                    code="REMOTE_UNREACHABLE",
                )
            else:
                if resp.status_code == 200:
                    try:
                        return orjson.loads(resp.content)
                    except orjson.JSONDecodeError:
                        raise ModelExecutionError(
                            f"external function {target.function}: {target.url} answered HTTP "
                            f"200 with a body that is not JSON: {resp.text[:200]!r}"
                        ) from None
                failure = self._refusal(target, resp)
                if resp.status_code not in _RETRY_STATUS:
                    raise failure
                after = resp.headers.get("retry-after", "")
                if after.replace(".", "", 1).isdigit():
                    pause = min(5.0, float(after))
            attempt += 1
            if attempt > retries or time.monotonic() + pause >= deadline:
                raise failure
            time.sleep(pause)

    @staticmethod
    def _refusal(target: ExternalTarget, resp: httpx.Response) -> NeveError:
        """The error a non-200 answer means, naming the function, the URL and the remote's own
        message (a neve ingress answers ``{"code", "message"}``)."""
        try:
            answer = orjson.loads(resp.content)
            message = str(answer.get("message") or answer) if isinstance(answer, dict) else ""
        except orjson.JSONDecodeError:
            message = ""
        message = (message or resp.text or resp.reason_phrase)[:500]
        service = remote_service(target.url)
        where = f"{target.url}" + (f" (remote service {service})" if service else "")
        status = resp.status_code
        if status in (401, 403):
            return PermissionDeniedError(
                f"external function {target.function}: the remote {where} refused the key of "
                f"API integration {target.integration} (HTTP {status}: {message}); ask the "
                "remote installation for a valid token and set it with ALTER API INTEGRATION "
                f"{target.integration} SET API_KEY = '...'",
                code="REMOTE_REFUSED_KEY",
            )
        text = (
            f"external function {target.function}: the remote {where} answered HTTP {status}: "
            f"{message}"
        )
        if status in _RETRY_STATUS:
            return ServiceUnavailableError(text, code="REMOTE_UNAVAILABLE")
        if status >= 500:
            return ModelExecutionError(text, code="REMOTE_ERROR")
        return InvalidArgumentError(text, code="REMOTE_REJECTED")

    @staticmethod
    def _results(target: ExternalTarget, payload: Any, n: int) -> pa.Array:
        """The answers in row order, checked: one per row sent, matched by row index."""
        label = f"external function {target.function}: {target.url}"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ModelExecutionError(
                f"{label} answered without a 'data' list (the external-function format is "
                '{"data": [[row_index, value], ...]})'
            )
        if len(data) != n:
            raise ModelExecutionError(f"{label} answered {len(data)} rows for a batch of {n}")
        values: list[Any] = [None] * n
        seen = [False] * n
        for row in data:
            if (
                not isinstance(row, list)
                or len(row) != 2
                or not isinstance(row[0], int)
                or isinstance(row[0], bool)
                or not 0 <= row[0] < n
                or seen[row[0]]
            ):
                raise ModelExecutionError(
                    f"{label} answered a row that is not [row_index, value] for a distinct row "
                    f"index from 0 to {n - 1}: {str(row)[:200]}"
                )
            seen[row[0]] = True
            values[row[0]] = row[1]
        if target.returns in JSON_RETURNS:
            return pa.array(
                [None if v is None else orjson.dumps(v).decode() for v in values], pa.string()
            )
        for i, v in enumerate(values):
            if isinstance(v, dict):  # a neve endpoint answers {"<output>": value}
                if len(v) != 1:
                    raise ModelExecutionError(
                        f"{label} answered an object of {len(v)} values ({', '.join(map(str, v))})"
                        f" for a {target.returns} result; declare RETURNS OBJECT"
                    )
                values[i] = next(iter(v.values()))
        typ = _ARROW[SCALAR_TYPES.get(target.returns, "STRING")]
        try:
            if pa.types.is_timestamp(typ):
                return pa.array(values, pa.string()).cast(typ)
            return pa.array(values, typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            sample = next((v for v in values if v is not None), None)
            raise ModelExecutionError(
                f"{label} answered {str(sample)[:100]!r}, which is not a {target.returns}"
            ) from None
