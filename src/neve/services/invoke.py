"""The client behind ``ServiceManager.invoke``: rows to a service's instances, in batches.

Two wire formats carry the same service-function protocol: FLAT JSON rows (``invoke``, one
output dict per row back) and Arrow IPC streams of columns (``invoke_arrow``, a table of output
columns back; what SQL service functions send, with no per-value Python work on either side).

Rows are split into chunks of the service's ``max_batch_rows`` and the chunks are sent
concurrently through the data plane's ``Router`` (pooled keep-alive connections; the ready
instance with the fewest outstanding requests; a chunk whose instance failed before answering
goes to another one; a 429/503 is retried after its ``Retry-After``). Every other error is the
service's own answer and is raised as the matching neve error with the service's message.
Results come back in input order. A table function's (partitioned method's) rows are cut by
partition instead: one request per value of the partition column, or one for all rows without
one, never at ``max_batch_rows``; each answers any number of rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote as url_quote

import orjson
import pyarrow as pa

from neve.dataplane import partitions
from neve.dataplane.balancer import Address
from neve.dataplane.client import answer_error
from neve.dataplane.router import Router, RouterStats
from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
)
from neve.server import arrow_ipc

log = logging.getLogger("neve.services")

#: Rows per request when the service sets no ``max_batch_rows`` (the server's own default).
DEFAULT_CHUNK_ROWS = 1024

#: ``endpoints(refresh)`` gives the ready instances; ``refresh=True`` asks again after failures
#: (it may resume the service and wait for readiness, bounded by the deadline it was given).
EndpointSource = Callable[[bool, float], Sequence[Address]]


#: Counters of an invoker (requests, retries, failed attempts): the router's.
InvokeStats = RouterStats


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


class _PartitionFormat(_ArrowFormat):
    """A table function's rows: one request per partition (the rows sharing a value of
    ``column``), each answered with any number of rows; the answers are joined with the
    partition's value in front."""

    def __init__(self, column: str) -> None:
        self.column = column

    def chunks(self, payload: pa.Table, size: int) -> list[pa.Table]:
        self.column = partitions.partition_column_of(payload, self.column)
        return partitions.split(payload, self.column)

    def decode(self, label: str, chunk: pa.Table, content: bytes) -> pa.Table:
        try:
            table = arrow_ipc.read_stream(content)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ModelExecutionError(
                f"service {label} answered with a body that is not an Arrow stream: {exc}"
            ) from None
        return partitions.with_partition(table, chunk, self.column)

    def join(self, parts: list[pa.Table]) -> pa.Table:
        return partitions.join(parts)


class _WholeArrowFormat(_ArrowFormat):
    """A table function's rows without a partition column: all of them are one partition,
    sent as one request (never cut at ``max_batch_rows``) and answered with any number of
    rows, as the method's own answer in this process."""

    def chunks(self, payload: pa.Table, size: int) -> list[pa.Table]:
        return [payload]

    def decode(self, label: str, chunk: pa.Table, content: bytes) -> pa.Table:
        try:
            return arrow_ipc.read_stream(content)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ModelExecutionError(
                f"service {label} answered with a body that is not an Arrow stream: {exc}"
            ) from None


class _WholeJsonFormat(_WireFormat):
    """JSON rows of a table function: one partition, one request; the answer's rows (any
    number, numbered from 0 by the instance) in order."""

    def chunks(self, payload: list[list], size: int) -> list[list[list]]:
        return [payload]

    def decode(self, label: str, chunk: list[list], content: bytes) -> list[dict]:
        try:
            data = orjson.loads(content)["data"]
            return [out for _index, out in data]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ModelExecutionError(
                f"service {label} answered with a body that is not the service-function format"
            ) from None


JSON_ROWS = _WireFormat()
ARROW_COLUMNS = _ArrowFormat()
WHOLE_JSON_ROWS = _WholeJsonFormat()
WHOLE_ARROW_COLUMNS = _WholeArrowFormat()


class ServiceInvoker:
    """Thread-safe; one per ServiceManager."""

    def __init__(self, *, max_connections: int = 256, threads: int = 16) -> None:
        self.router = Router(max_connections=max_connections, cooldown_s=2.0)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="neve-invoke")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.router.close()

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
        partitioned: bool = False,
    ) -> list[dict]:
        """Send ``rows`` (FLAT, each starting with its row index) to ``POST /<route>``; one
        output dict per row back. ``partitioned``: the method is a table function, the rows
        are one partition (one request) and the answer is its rows, in order."""
        if not rows:
            return []
        wire = WHOLE_JSON_ROWS if partitioned else JSON_ROWS
        return self._invoke(wire, label, route, rows, endpoints, chunk_rows, timeout_s)

    def invoke_arrow(
        self,
        *,
        label: str,
        route: str,
        table: pa.Table,
        endpoints: EndpointSource,
        chunk_rows: int | None,
        timeout_s: float,
        params: dict[str, Any] | None = None,
        partition_column: str | None = None,
        retries: int | None = None,
        partitioned: bool = False,
    ) -> pa.Table:
        """Send ``table`` (one column per method input) as Arrow; a table of outputs back.

        ``params``: the method's parameters for every request. ``partition_column``: a table
        function, called once per partition (its answers: the partition column, then the
        method's output rows). ``partitioned`` without ``partition_column``: a table function
        whose rows are all one partition (one request; its answer as it is).
        """
        if table.num_rows == 0:
            raise InvalidArgumentError(f"service {label}: no rows to send")
        if params:
            route += "?params=" + url_quote(orjson.dumps(params).decode(), safe="")
        wire: _WireFormat
        if partition_column:
            wire = _PartitionFormat(partition_column)
        else:
            wire = WHOLE_ARROW_COLUMNS if partitioned else ARROW_COLUMNS
        return self._invoke(wire, label, route, table, endpoints, chunk_rows, timeout_s, retries)

    def _invoke(
        self,
        wire: _WireFormat,
        label: str,
        route: str,
        payload: Any,
        endpoints: EndpointSource,
        chunk_rows: int | None,
        timeout_s: float,
        retries: int | None = None,
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        size = max(1, int(chunk_rows or DEFAULT_CHUNK_ROWS))
        chunks = wire.chunks(payload, size)
        if len(chunks) == 1:
            return self._send_chunk(wire, label, route, chunks[0], endpoints, deadline, retries)
        futures = [
            self._pool.submit(
                self._send_chunk, wire, label, route, chunk, endpoints, deadline, retries
            )
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
        retries: int | None = None,
    ) -> Any:
        # Balancing, retry on another instance and Retry-After are the router's (one policy).
        resp = self.router.send(
            f"/{route}",
            label=label,
            endpoints=endpoints,
            deadline=deadline,
            content=wire.encode(chunk),
            headers={"Content-Type": wire.content_type, "Accept": wire.content_type},
            max_failures=retries,
        )
        if resp.status_code == 200:
            return wire.decode(label, chunk, resp.content)
        raise answer_error(label, route, resp.status_code, resp.content)

    @property
    def totals(self) -> RouterStats:
        return self.router.stats


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


def _default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, bytes | bytearray):
        import base64

        return base64.b64encode(bytes(obj)).decode()
    return str(obj)
