"""Admission control and dynamic batching for the whole instance: one queue per model method.

All requests of an instance reach the front process, so there is one budget and one FIFO
queue per method, whichever connection a request came on. A request is admitted only while
the instance's queued rows stay within ``max_queue_rows``; otherwise it is refused at once with
429 (``OverloadedError`` carrying ``retry_after_s``), so a flood costs no memory beyond what is
queued. An admitted request is cut into chunks of at most ``max_batch_rows`` rows and appended
to its method's queue.

The batcher task waits for a chunk, then for a free compute slot of the ``WorkerPool`` (so
while every slot is busy, requests pile up into the next batch), then keeps taking whole chunks
until the batch holds ``max_batch_rows`` rows or ``batch_timeout`` has passed (it does not wait
for more once the batch is half full, and never waits past the timeout), and hands the batch to
the worker without waiting for it: the next batch forms while this one computes. Results are
split back by row offsets, so chunks are never reordered or mixed. A chunk still queued after
``queue_timeout``, less the time its rows take at the model's recent speed, is dropped and its
request answered 503: what is served ends within the budget.

When a batch of several requests fails, each request is re-run alone: one request that makes
the model raise gets its 500 and its neighbours still get their answers. A batch whose worker
died is re-run once the same way; a request whose re-run kills a worker too gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import orjson

from neve.errors import (
    ModelExecutionError,
    NeveError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from neve.server import metrics
from neve.server.protocol import OutputColumns, ServiceRequest

if TYPE_CHECKING:
    from neve.models.modeldir import MethodSpec
    from neve.server.pool import Worker, WorkerPool

log = logging.getLogger("neve.server")


class Admission:
    """The instance's budget: rows waiting for the model and request bytes being received."""

    def __init__(self, max_queue_rows: int, max_inflight_bytes: int) -> None:
        self.max_queue_rows = max_queue_rows
        self.max_inflight_bytes = max_inflight_bytes
        self.queued_rows = 0
        self.inflight_bytes = 0
        # Rows per second the model has been answering (EMA), to suggest a Retry-After.
        self._rows_per_s = 0.0

    def reserve_bytes(self, n: int) -> bool:
        if self.inflight_bytes + n > self.max_inflight_bytes:
            return False
        self.inflight_bytes += n
        return True

    def release_bytes(self, n: int) -> None:
        self.inflight_bytes -= n

    def observe_throughput(self, rows: int, seconds: float) -> None:
        rate = rows / max(seconds, 1e-6)
        self._rows_per_s = rate if self._rows_per_s == 0 else 0.8 * self._rows_per_s + 0.2 * rate

    def expected_seconds(self, rows: int) -> float:
        """How long the model has recently taken for ``rows`` rows (0 before any call)."""
        return rows / self._rows_per_s if self._rows_per_s > 0 else 0.0

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained (1..30)."""
        if self._rows_per_s <= 0:
            return 1
        return int(min(30, max(1, math.ceil(self.queued_rows / self._rows_per_s))))


@dataclass(slots=True, eq=False)
class _Chunk:
    columns: list[np.ndarray]
    n_rows: int
    future: asyncio.Future[OutputColumns]
    taken: bool = False  # handed to the model
    dropped: bool = False  # abandoned while queued (timeout, error, disconnect)
    # Chunks share a batch only when their method parameters are equal (same key).
    params: dict = field(default_factory=dict)
    key: bytes = b""


@dataclass(slots=True)
class _Batch:
    chunks: list[_Chunk] = field(default_factory=list)
    rows: int = 0
    rerun: bool = False  # already a re-run after a failure: a crash is not retried again


class MethodBatcher:
    """Queue and batch loop of one model method, feeding the instance's worker pool."""

    def __init__(
        self,
        spec: MethodSpec,
        pool: WorkerPool,
        admission: Admission,
        *,
        max_batch_rows: int,
        batch_timeout_s: float,
        queue_timeout_s: float,
    ) -> None:
        self.method = method = spec.name
        self.spec = spec
        self.pool = pool
        self.admission = admission
        cap = spec.options.get("max_batch_size")
        # The model's own limit (manifest option) is an upper bound on what we send it.
        self.max_batch_rows = min(max_batch_rows, int(cap)) if cap else max_batch_rows
        self.batch_timeout_s = batch_timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.input_names = spec.signature.input_names
        self.output_names = spec.signature.output_names
        self._pending: deque[_Chunk] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._queue_gauge = metrics.QUEUE_ROWS.labels(method)
        self._model_calls = metrics.MODEL_CALLS.labels(method)
        self._batch_rows = metrics.BATCH_ROWS.labels(method)
        self._model_latency = metrics.MODEL_LATENCY.labels(method)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"neve-batcher-{self.method}"
        )

    async def stop(self) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        while self._pending:
            chunk = self._pending.popleft()
            if not chunk.dropped and not chunk.future.done():
                self._release(chunk)
                chunk.future.set_exception(
                    ServiceUnavailableError("the server is shutting down", code="SHUTTING_DOWN")
                )

    # ---------------------------------------------------------------- admission

    def refuse_if_full(self) -> None:
        """Raise 429 when not even one more row fits (cheap: no need to parse the request)."""
        if self.admission.queued_rows >= self.admission.max_queue_rows:
            self._refuse()

    def _refuse(self) -> None:
        admission = self.admission
        metrics.REJECTIONS.labels(self.method, "queue_full").inc()
        err = OverloadedError(
            f"method {self.method!r}: server is busy ({admission.queued_rows} rows queued, "
            f"limit {admission.max_queue_rows}); retry later"
        )
        err.retry_after_s = admission.retry_after_s()  # type: ignore[attr-defined]
        raise err

    async def submit(
        self, request: ServiceRequest, *, timeout_s: float | None = None
    ) -> OutputColumns:
        """Queue ``request``'s rows and wait for their outputs (or raise 413/429/503/500).

        ``timeout_s``: what is left of the caller's own queue budget (the ingress proxy spent
        some of it): the request waits at most the shorter of it and ``queue_timeout``.
        """
        n = request.n_rows
        if n == 0:
            empty = np.empty(0, dtype=object)
            return OutputColumns(list(self.output_names), [empty for _ in self.output_names])
        admission = self.admission
        if n > admission.max_queue_rows:
            metrics.REJECTIONS.labels(self.method, "too_large").inc()
            raise PayloadTooLargeError(
                f"method {self.method!r}: request has {n} rows, more than this server queues "
                f"at once ({admission.max_queue_rows}); split it into smaller requests"
            )
        if admission.queued_rows + n > admission.max_queue_rows:
            self._refuse()
        loop = asyncio.get_running_loop()
        # A partition is one call, however many rows it has (its rows may all be needed).
        step = n if self.spec.partitioned else self.max_batch_rows
        chunks = [
            _Chunk(
                [c[start : start + step] for c in request.columns] if n > step else request.columns,
                min(step, n - start),
                loop.create_future(),
            )
            for start in range(0, n, step)
        ]
        if request.params:
            key = orjson.dumps(request.params, option=orjson.OPT_SORT_KEYS)
            for chunk in chunks:
                chunk.params, chunk.key = request.params, key
        admission.queued_rows += n
        self._queue_gauge.inc(n)
        self._pending.extend(chunks)
        self._wakeup.set()
        wait_s = self.queue_timeout_s if timeout_s is None else min(timeout_s, self.queue_timeout_s)
        # The budget covers the computation too: a request starts only while what is left of
        # it covers its rows at the model's recent speed (at most half the budget is set aside
        # for that), so what is served ends within the budget, not one batch past it.
        wait_s -= min(admission.expected_seconds(n), wait_s / 2)
        return await self._wait(chunks, loop.time() + max(0.0, wait_s))

    async def _wait(self, chunks: list[_Chunk], deadline: float) -> OutputColumns:
        loop = asyncio.get_running_loop()
        results: list[OutputColumns] = []
        try:
            for chunk in chunks:
                if not chunk.taken and not chunk.future.done():
                    remaining = deadline - loop.time()
                    if remaining > 0:
                        await asyncio.wait([chunk.future], timeout=remaining)
                    if not chunk.taken and not chunk.future.done():
                        metrics.REJECTIONS.labels(self.method, "queue_timeout").inc()
                        err = ServiceUnavailableError(
                            f"method {self.method!r}: request waited more than its queue "
                            f"timeout (at most {self.queue_timeout_s:g} s); retry later",
                            code="QUEUE_TIMEOUT",
                        )
                        err.retry_after_s = self.admission.retry_after_s()  # type: ignore[attr-defined]
                        raise err
                results.append(await chunk.future)
        except BaseException:
            # Timeout, a failed chunk or a cancelled handler: the rest is not worth computing.
            for chunk in chunks:
                if not chunk.taken and not chunk.dropped:
                    chunk.dropped = True
                    self._release(chunk)
                elif not chunk.future.done():
                    chunk.future.cancel()
            raise
        return OutputColumns.concat(results)

    def _release(self, chunk: _Chunk) -> None:
        self.admission.queued_rows -= chunk.n_rows
        self._queue_gauge.dec(chunk.n_rows)

    # ---------------------------------------------------------------- batching

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._next() is None:
                self._wakeup.clear()
                await self._wakeup.wait()
            # A slot first: while all are busy, requests keep arriving into this batch.
            worker = await self.pool.acquire()
            batch = await self._collect()
            if not batch.chunks:  # everything waiting was dropped meanwhile
                self.pool.release(worker)
                continue
            task = loop.create_task(self._guarded(batch, worker))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _next(self) -> _Chunk | None:
        pending = self._pending
        while pending and pending[0].dropped:
            pending.popleft()
        return pending[0] if pending else None

    def _take(self, batch: _Batch) -> None:
        chunk = self._pending.popleft()
        chunk.taken = True
        self._release(chunk)
        batch.chunks.append(chunk)
        batch.rows += chunk.n_rows

    async def _collect(self) -> _Batch:
        batch = _Batch()
        if self._next() is None:
            return batch
        self._take(batch)
        first = batch.chunks[0]
        if self.spec.partitioned:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_timeout_s
        while batch.rows < self.max_batch_rows:
            nxt = self._next()
            if nxt is not None:
                if batch.rows + nxt.n_rows > self.max_batch_rows or nxt.key != first.key:
                    break
                self._take(batch)
                continue
            # A batch already half full gains little from waiting; its requests would only
            # pay the timeout in latency (a lone 1000-row request, say).
            remaining = deadline - loop.time()
            if remaining <= 0 or 2 * batch.rows >= self.max_batch_rows:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _guarded(self, batch: _Batch, worker: Worker) -> None:
        try:
            await self._execute(batch, worker)
        except Exception as exc:  # never leave a request unanswered
            log.exception("batch for method %r failed unexpectedly", self.method)
            err = exc if isinstance(exc, NeveError) else _as_model_error(self.method, exc)
            for chunk in batch.chunks:
                if not chunk.future.done():
                    chunk.future.set_exception(err)

    async def _execute(self, batch: _Batch, worker: Worker) -> None:
        """Compute ``batch`` on ``worker`` (whose slot this call gives back) and answer it."""
        started = time.perf_counter()
        try:
            out = await self.pool.run(
                worker,
                self.method,
                [c.columns for c in batch.chunks],
                batch.chunks[0].params,
                partitioned=self.spec.partitioned,
            )
        except Exception as exc:
            self.pool.release(worker)
            await self._failed(batch, exc)
            return
        except BaseException:
            self.pool.release(worker)
            raise
        self.pool.release(worker)
        elapsed = time.perf_counter() - started
        self.admission.observe_throughput(batch.rows, elapsed)
        self._model_calls.inc()
        self._batch_rows.observe(batch.rows)
        self._model_latency.observe(elapsed)
        offset = 0
        for chunk in batch.chunks:
            if not chunk.future.done():
                chunk.future.set_result(
                    out if len(batch.chunks) == 1 else out.slice(offset, offset + chunk.n_rows)
                )
            offset += chunk.n_rows

    async def _failed(self, batch: _Batch, exc: Exception) -> None:
        from neve.server.pool import WorkerCrashedError

        crashed = isinstance(exc, WorkerCrashedError)
        if len(batch.chunks) > 1 or (crashed and not batch.rerun):
            # Find the request(s) the model fails on; the others still get answers.
            for chunk in batch.chunks:
                if not chunk.future.done():
                    worker = await self.pool.acquire()
                    await self._execute(_Batch([chunk], chunk.n_rows, rerun=True), worker)
            return
        err = exc if isinstance(exc, NeveError) else _as_model_error(self.method, exc)
        if not isinstance(exc, NeveError) or crashed:
            log.error("method %r failed: %s", self.method, err.message)
        chunk = batch.chunks[0]
        if not chunk.future.done():
            chunk.future.set_exception(err)


def _as_model_error(method: str, exc: BaseException) -> ModelExecutionError:
    return ModelExecutionError(f"method {method!r} raised {type(exc).__name__}: {exc}")
