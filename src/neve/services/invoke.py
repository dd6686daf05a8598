"""The client behind ``ServiceManager.invoke``: rows to a service's instances, in batches.

Two wire formats carry the same service-function protocol: FLAT JSON rows (``invoke``, one
output dict per row back) and Arrow IPC streams of columns (``invoke_arrow``, a table of output
columns back; what SQL service functions send, with no per-value Python work on either side).

Rows are split into chunks of the service's ``max_batch_rows`` and the chunks are sent
concurrently (one shared, pooled ``httpx.Client``; keep-alive connections per instance) to the
ready instance with the fewest outstanding requests. Inference is a pure function of its input,
so a chunk whose instance failed before answering (connection refused or reset, the process was
killed) is sent again to another instance; a 429/503 from admission control is retried after its
``Retry-After``. Every other error is the service's own answer and is raised as the matching
neve error with the service's message. Results come back in input order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pyarrow as pa

from neve.errors import (
    ERRORS_BY_NAME,
    InvalidArgumentError,
    ModelExecutionError,
    NeveError,
    ObjectNotFoundError,
    ServiceUnavailableError,
    SignatureError,
    error_from_dict,
)
from neve.gateway.balancer import Address, LeastOutstanding
from neve.server import arrow_ipc

log = logging.getLogger("neve.services")

#: Rows per request when the service sets no ``max_batch_rows`` (the server's own default).
DEFAULT_CHUNK_ROWS = 1024
#: Longest pause asked by a 429/503 that we honour before trying again.
MAX_RETRY_AFTER_S = 2.0
#: Pause before re-trying when every instance just failed (the supervisor is restarting them).
ALL_FAILED_PAUSE_S = 0.2

#: ``endpoints(refresh)`` gives the ready instances; ``refresh=True`` asks again after failures
#: (it may resume the service and wait for readiness, bounded by the deadline it was given).
EndpointSource = Callable[[bool, float], Sequence[Address]]


@dataclass
class InvokeStats:
    """Counters of one invoke call (for tests and metrics)."""

    requests: int = 0
    retries: int = 0
    failed_attempts: int = 0


class _WireFormat:
    """How a payload of rows is cut into chunks, put on the wire and read back."""

    content_type = "application/json"

    def chunks(self, payload: Any, size: int) -> list[Any]:
        return [payload[i : i + size] for i in range(0, len(payload), size)]

    def encode(self, chunk: Any) -> bytes:
        return orjson.dumps({"data": chunk}, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)

    def decode(self, label: str, chunk: Any, content: bytes) -> Any:
        return _outputs(label, chunk, content)

    def join(self, parts: list[Any]) -> Any:
        return [out for part in parts for out in part]


class _ArrowFormat(_WireFormat):
    content_type = arrow_ipc.ARROW_STREAM

    def chunks(self, payload: pa.Table, size: int) -> list[pa.Table]:
        return [payload.slice(i, size) for i in range(0, payload.num_rows, size)]

    def encode(self, chunk: pa.Table) -> bytes:
        return arrow_ipc.write_stream(chunk)

    def decode(self, label: str, chunk: pa.Table, content: bytes) -> pa.Table:
        try:
            table = arrow_ipc.read_stream(content)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ModelExecutionError(
                f"service {label} answered with a body that is not an Arrow stream: {exc}"
            ) from None
        if table.num_rows != chunk.num_rows:
            raise ModelExecutionError(
                f"service {label} answered {table.num_rows} rows for {chunk.num_rows} rows sent"
            )
        return table

    def join(self, parts: list[pa.Table]) -> pa.Table:
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


JSON_ROWS = _WireFormat()
ARROW_COLUMNS = _ArrowFormat()


class ServiceInvoker:
    """Thread-safe; one per ServiceManager."""

    def __init__(self, *, max_connections: int = 256, threads: int = 16) -> None:
        self._http = httpx.Client(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(300.0, connect=5.0),
            trust_env=False,  # loopback instances: never through a proxy from the environment
        )
        self._balancer = LeastOutstanding(cooldown_s=2.0)
        self._balancer_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="neve-invoke")
        self.totals = InvokeStats()
        self._totals_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # -- public -----------------------------------------------------------------------------------
    def invoke(
        self,
        *,
        label: str,
        route: str,
        rows: list[list],
        endpoints: EndpointSource,
        chunk_rows: int | None,
        timeout_s: float,
    ) -> list[dict]:
        """Send ``rows`` (FLAT, each starting with its row index) to ``POST /<route>``."""
        if not rows:
            return []
        return self._invoke(JSON_ROWS, label, route, rows, endpoints, chunk_rows, timeout_s)

    def invoke_arrow(
        self,
        *,
        label: str,
        route: str,
        table: pa.Table,
        endpoints: EndpointSource,
        chunk_rows: int | None,
        timeout_s: float,
    ) -> pa.Table:
        """Send ``table`` (one column per method input) as Arrow; a table of outputs back."""
        if table.num_rows == 0:
            raise InvalidArgumentError(f"service {label}: no rows to send")
        return self._invoke(ARROW_COLUMNS, label, route, table, endpoints, chunk_rows, timeout_s)

    def _invoke(
        self,
        wire: _WireFormat,
        label: str,
        route: str,
        payload: Any,
        endpoints: EndpointSource,
        chunk_rows: int | None,
        timeout_s: float,
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        size = max(1, int(chunk_rows or DEFAULT_CHUNK_ROWS))
        chunks = wire.chunks(payload, size)
        if len(chunks) == 1:
            return self._send_chunk(wire, label, route, chunks[0], endpoints, deadline)
        futures = [
            self._pool.submit(self._send_chunk, wire, label, route, chunk, endpoints, deadline)
            for chunk in chunks
        ]
        try:
            return wire.join([fut.result() for fut in futures])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    # -- one chunk --------------------------------------------------------------------------------
    def _send_chunk(
        self,
        wire: _WireFormat,
        label: str,
        route: str,
        chunk: Any,
        endpoints: EndpointSource,
        deadline: float,
    ) -> Any:
        body = wire.encode(chunk)
        headers = {"Content-Type": wire.content_type, "Accept": wire.content_type}
        excluded: set[Address] = set()
        refresh = False
        last_error: str | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    f"service {label} did not answer in time"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            addresses = list(endpoints(refresh, remaining))
            refresh = False
            with self._balancer_lock:
                address = self._balancer.choose(addresses, excluded)
            if address is None:
                # Every known instance failed this chunk: ask again (the supervisor restarts
                # dead instances and marks them), after a short pause.
                excluded.clear()
                refresh = True
                time.sleep(min(ALL_FAILED_PAUSE_S, max(0.0, deadline - time.monotonic())))
                continue
            self._count(requests=1)
            try:
                with self._track(address):
                    resp = self._http.post(
                        f"http://{address[0]}:{address[1]}/{route}",
                        content=body,
                        headers=headers,
                        timeout=httpx.Timeout(max(0.05, remaining), connect=min(5.0, remaining)),
                    )
            except httpx.TimeoutException as exc:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailableError(
                        f"service {label}: no answer from instance {address[0]}:{address[1]} "
                        f"before the deadline ({type(exc).__name__})"
                    ) from None
                last_error = f"{type(exc).__name__} from {address[0]}:{address[1]}"
                self._failed(address, excluded)
                continue
            except httpx.TransportError as exc:
                # Refused/reset before an answer: that instance is gone; another one can answer.
                last_error = f"{type(exc).__name__} from {address[0]}:{address[1]}: {exc}"
                log.info("service %s: instance %s:%s failed (%s); retrying", label, *address, exc)
                self._failed(address, excluded)
                refresh = True
                continue
            status = resp.status_code
            if status == 200:
                return wire.decode(label, chunk, resp.content)
            if status in (429, 503):
                last_error = f"HTTP {status} from {address[0]}:{address[1]}"
                self._count(retries=1)
                pause = _retry_after(resp.headers.get("retry-after"))
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                continue
            raise _service_error(label, route, status, resp.content)

    def _failed(self, address: Address, excluded: set[Address]) -> None:
        excluded.add(address)
        with self._balancer_lock:
            self._balancer.failed(address)
        self._count(retries=1, failed_attempts=1)

    @contextmanager
    def _track(self, address: Address) -> Iterator[None]:
        # LeastOutstanding is not thread-safe by itself: its counters change under our lock.
        with self._balancer_lock:
            outstanding = self._balancer.outstanding
            outstanding[address] = outstanding.get(address, 0) + 1
        try:
            yield
        finally:
            with self._balancer_lock:
                left = outstanding.get(address, 1) - 1
                if left <= 0:
                    outstanding.pop(address, None)
                else:
                    outstanding[address] = left

    def _count(self, *, requests: int = 0, retries: int = 0, failed_attempts: int = 0) -> None:
        with self._totals_lock:
            self.totals.requests += requests
            self.totals.retries += retries
            self.totals.failed_attempts += failed_attempts


def _outputs(label: str, chunk: list[list], content: bytes) -> list[dict]:
    try:
        payload = orjson.loads(content)
        data = payload["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ModelExecutionError(
            f"service {label} answered with a body that is not the service-function format"
        ) from None
    if len(data) != len(chunk):
        raise ModelExecutionError(
            f"service {label} answered {len(data)} rows for {len(chunk)} rows sent"
        )
    # Rows normally come back in order; match by index when they do not.
    if all(out[0] == row[0] for out, row in zip(data, chunk, strict=True)):
        return [out[1] for out in data]
    by_index = {out[0]: out[1] for out in data}
    try:
        return [by_index[row[0]] for row in chunk]
    except KeyError as exc:
        raise ModelExecutionError(f"service {label} answered no row for index {exc}") from None


def _service_error(label: str, route: str, status: int, content: bytes) -> NeveError:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        message = f"service {label} ({route}): {body['message']}"
        if body.get("type") in ERRORS_BY_NAME:
            return error_from_dict({**body, "message": message})
        code = str(body.get("code") or "")
    else:
        message = f"service {label} ({route}) answered HTTP {status}: {content[:300]!r}"
        code = ""
    if status == 404:
        return ObjectNotFoundError(message)
    if code == SignatureError.code or (status == 400 and "signature" in code.lower()):
        return SignatureError(message)
    if 400 <= status < 500:
        return InvalidArgumentError(message, code=code or None)
    return ModelExecutionError(message, code=code or None)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.01, min(float(value), MAX_RETRY_AFTER_S)) if value else 0.05
    except ValueError:
        return 0.05


def _default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, bytes | bytearray):
        import base64

        return base64.b64encode(bytes(obj)).decode()
    return str(obj)
