"""The front process's pool of model workers: compute slots for the instance's one queue.

``WorkerPool`` starts ``num_workers`` processes (``neve.server.worker``, spawned: each loads
its own copy of the model) and hands batches to them. At most ``concurrency`` batches compute
at once, whatever the number of workers: a batch first takes a slot (``acquire``), then the
idle worker used most recently (its caches are warm), runs on it (``run``) and gives both
back (``release``). For models whose calls spread over every core (torch), the number of
batches computing is in shared memory and each batch computes with its share of the CPUs:
all of them alone, half beside another (re-read between slices of its rows). Each worker has
one thread in the front that sends it a batch and waits for the answer, so the event loop
never blocks on a pipe.

A worker that dies is restarted in its slot. The batch it was computing fails with
``WorkerCrashedError``; the batcher retries it once on another worker, so a worker killed from
outside costs no request, and a request that kills every worker it meets gets a clear 500.
A worker that cannot load the model makes the pool ``failed``: the server then stops (exit 3),
as a model that does not load will not load on a retry either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from neve.errors import ModelExecutionError, ServiceUnavailableError, error_from_dict
from neve.server import metrics, worker
from neve.server.config import ServerConfig
from neve.server.protocol import OutputColumns

log = logging.getLogger("neve.server")
MONITOR_INTERVAL_S = 0.2
RESTART_BACKOFF_S = 1.0  # a worker that dies at once is not restarted in a tight loop


class WorkerCrashedError(ModelExecutionError):
    """The worker computing a batch died before answering."""

    code = "WORKER_CRASHED"


class Worker:
    """One worker process, seen from the front."""

    def __init__(self, slot: int, process: Any, conn: Connection) -> None:
        self.slot = slot
        self.process = process
        self.conn = conn
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"neve-worker-{slot}")
        self.info: dict[str, Any] = {}
        self.ready = False
        self.dead = False

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()

    def roundtrip(self, message: bytes) -> tuple[str, Any]:
        """Send one batch and wait for its answer (in this worker's thread)."""
        try:
            self.conn.send_bytes(message)
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self.process.join(1.0)
            raise WorkerCrashedError(
                f"worker process {self.pid} died while computing this batch "
                f"(exit status {self.process.exitcode}); it is being restarted"
            ) from exc

    def wait_started(self) -> tuple[str, Any]:
        try:
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.process.join(5.0)
            return "died", f"worker process exited with status {self.process.exitcode}"

    def close(self) -> None:
        self.dead = True
        self.ready = False
        with contextlib.suppress(OSError):
            self.conn.close()
        self.thread.shutdown(wait=False, cancel_futures=True)


class WorkerPool:
    """``num_workers`` model workers behind ``concurrency`` compute slots (see module doc)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        threaded_calls: bool = False,
        on_fatal: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.num_workers = config.num_workers
        self.concurrency = config.concurrency()
        #: threads each worker starts with; with ``shares_threads`` (the model handler's
        #: ``threaded_calls`` trait, e.g. torch) the most a batch gets: each batch computes with
        #: its share, read from ``_running`` (batches computing, in shared memory)
        self.threads = config.threads(threaded_calls)
        self.shares_threads = config.shares_threads(threaded_calls)
        self.workers: list[Worker | None] = [None] * self.num_workers
        self.failed: str | None = None
        self.restarts = 0
        self.busy = 0
        self._on_fatal = on_fatal
        self._idle: list[Worker] = []
        self._slots: asyncio.Semaphore | None = None
        self._changed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_start: dict[int, float] = {}
        self._ctx = multiprocessing.get_context("spawn")
        self._running = self._ctx.Value("i", 0, lock=False) if self.shares_threads else None
        self._whole_running = 0  # sharing threads: batches computing in one model call
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start every worker; return once one has loaded the model (raise if none can)."""
        self._slots = asyncio.Semaphore(self.concurrency)
        self._changed = asyncio.Event()
        for slot in range(self.num_workers):
            self._spawn_task(slot, backoff=False)
        self._spawn(self._monitor())
        while not self.ready_count():
            if self.failed:
                raise ServiceUnavailableError(self.failed, code="MODEL_LOAD_FAILED")
            await self._wait_change()

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        procs = []
        for w in self.workers:
            if w is not None:
                w.close()  # the worker reads EOF and exits
                procs.append(w.process)
        deadline = time.monotonic() + 5.0
        for proc in procs:
            await asyncio.get_running_loop().run_in_executor(
                None, proc.join, max(0.0, deadline - time.monotonic())
            )
            if proc.is_alive():
                proc.kill()
        self._idle.clear()

    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.ready and not w.dead)

    def describe(self) -> list[dict[str, Any]]:
        """Every worker slot: pid, ready, and the thread limits the worker reported."""
        return [
            {"slot": slot, "pid": w.pid if w else None, "ready": bool(w and w.ready), **(w.info if w else {})}
            for slot, w in enumerate(self.workers)
        ]  # fmt: skip

    # ---------------------------------------------------------------- compute slots

    async def acquire(self) -> Worker:
        """A compute slot and an idle, live worker for it (waits while none is free)."""
        assert self._slots is not None
        await self._slots.acquire()
        try:
            while True:
                # Sharing threads: a batch computed in one call keeps its threads to the end,
                # so another batch waits for it (joining the next batch) rather than run beside
                # it on too many threads; beside a sliced batch it starts at once.
                while not self._idle or self._whole_running:
                    if self.failed:
                        raise ServiceUnavailableError(self.failed, code="MODEL_LOAD_FAILED")
                    await self._wait_change()
                w = self._idle.pop()  # the most recently used: warm caches
                if w.alive():
                    self._set_busy(self.busy + 1)
                    return w
                self._died(w)
        except BaseException:
            self._slots.release()
            raise

    def release(self, w: Worker) -> None:
        assert self._slots is not None
        self._set_busy(self.busy - 1)
        if w.alive():
            self._idle.append(w)
        else:
            self._died(w)
        self._slots.release()
        self._notify()

    def _set_busy(self, busy: int) -> None:
        self.busy = busy
        metrics.BATCHES_RUNNING.set(busy)
        if self._running is not None:  # the workers size their next slice by it
            self._running.value = busy

    async def run(
        self,
        w: Worker,
        method: str,
        chunk_columns: list[list[Any]],
        params: dict[str, Any] | None = None,
        *,
        partitioned: bool = False,
    ) -> OutputColumns:
        """Compute one batch on ``w``; model errors come back as the ``NeveError`` raised.
        ``partitioned``: the batch is one partition (one model call, never sliced)."""
        # One array per column for the whole batch: pickling is per array (~15 us each), so
        # 16 one-row requests of 20 columns cost ~5 ms as 320 arrays and ~0.3 ms as 20.
        columns = chunk_columns[0] if len(chunk_columns) == 1 else concat_columns(chunk_columns)
        message = pickle.dumps((method, columns, params or None), protocol=5)
        loop = asyncio.get_running_loop()
        rows = sum(len(columns[0]) for columns in chunk_columns if len(columns))
        whole = self.shares_threads and worker.one_call(rows, partitioned)
        self._whole_running += whole
        try:
            kind, value = await loop.run_in_executor(w.thread, w.roundtrip, message)
        finally:
            if whole:
                self._whole_running -= 1
                self._notify()
        if kind == "ok":
            return value
        raise error_from_dict(value)

    # ---------------------------------------------------------------- workers coming and going

    def _spawn_task(self, slot: int, *, backoff: bool = True) -> None:
        self._spawn(self._start_worker(slot, backoff))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_worker(self, slot: int, backoff: bool) -> None:
        since = time.monotonic() - self._last_start.get(slot, float("-inf"))
        if backoff and since < RESTART_BACKOFF_S:
            await asyncio.sleep(RESTART_BACKOFF_S - since)
        if self._stopping:
            return
        self._last_start[slot] = time.monotonic()
        ours, theirs = self._ctx.Pipe(duplex=True)
        c = self.config
        process = self._ctx.Process(
            target=worker.main,
            args=(theirs, c.model_dir, c.device, self.threads, c.log_level, self._running),
            name=f"neve-worker-{slot}",
            daemon=True,
        )
        process.start()
        theirs.close()
        w = Worker(slot, process, ours)
        self.workers[slot] = w
        kind, value = await asyncio.get_running_loop().run_in_executor(w.thread, w.wait_started)
        if self._stopping or w.dead:
            return
        if kind == "ready":
            w.info = value
            w.ready = True
            self._idle.append(w)
            log.info(
                "worker %d (slot %d) loaded the model in %.2f s; %d intra-op thread(s)",
                w.pid, slot, value.get("loaded_in_s", 0.0), self.threads,
            )  # fmt: skip
        elif kind == "failed":
            w.close()
            self._fatal(f"worker {w.pid} could not load the model: {value}")
        else:  # died while loading (killed, out of memory): try again
            log.warning("worker %d (slot %d) died while loading: %s", w.pid, slot, value)
            self._died(w)
        self._notify()

    def _died(self, w: Worker) -> None:
        if w.dead or self._stopping:
            return
        w.close()
        with contextlib.suppress(ValueError):
            self._idle.remove(w)
        if self.workers[w.slot] is w:
            self.restarts += 1
            metrics.WORKER_RESTARTS.inc()
            log.warning(
                "worker %d (slot %d) exited with status %s; starting a new one",
                w.pid, w.slot, w.process.exitcode,
            )  # fmt: skip
            self._spawn_task(w.slot)
        self._notify()

    async def _monitor(self) -> None:
        # An idle worker that dies is noticed here; a busy one also through its pipe.
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            for w in list(self.workers):
                if w is not None and w.ready and not w.dead and not w.process.is_alive():
                    self._died(w)
            metrics.WORKERS_READY.set(self.ready_count())

    def _fatal(self, message: str) -> None:
        log.error("%s; stopping the server", message)
        if self.failed is None:
            self.failed = message
            if self._on_fatal is not None:
                self._on_fatal(message)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait_change(self) -> None:
        assert self._changed is not None
        self._changed.clear()
        await self._changed.wait()


def concat_columns(chunk_columns: list[list[Any]]) -> list[Any]:
    """A batch's columns from its requests' chunks: column ``j`` of every chunk, in order."""
    return [
        np.concatenate([columns[j] for columns in chunk_columns])
        for j in range(len(chunk_columns[0]))
    ]
