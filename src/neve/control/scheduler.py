"""The control plane's scheduler: periodic housekeeping on background threads.

The daemon lists every job in one place when it starts (``neve.control.serve``: services
reconcile, idle compute pools, expired tokens) with ``Scheduler.every(seconds, fn, name)``.

Each task runs on its own thread, so a slow task (a reconcile pass that probes many instances)
never delays another. A task that raises is logged and runs again at its next interval. The
first run comes one interval after the start: the daemon has just run its start-up work
(recovery) itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from neve.errors import InvalidArgumentError

log = logging.getLogger("neve.control.scheduler")


def check_periodic_task(interval_s: float, fn: Callable[[], object]) -> None:
    """Refuse a task that is not callable, or an interval that is not a number of seconds > 0."""
    if not callable(fn):
        raise InvalidArgumentError(f"periodic task must be callable, got {type(fn).__name__}")
    if isinstance(interval_s, bool) or not isinstance(interval_s, int | float) or interval_s <= 0:
        raise InvalidArgumentError(
            f"periodic task interval must be a number of seconds > 0, got {interval_s!r}"
        )


@dataclass
class PeriodicTask:
    name: str
    interval_s: float
    fn: Callable[[], object]
    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    last_duration_s: float | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class Scheduler:
    """Runs periodic tasks until ``stop()``; see the module docstring."""

    def __init__(self) -> None:
        self._tasks: list[PeriodicTask] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False

    @property
    def tasks(self) -> list[PeriodicTask]:
        with self._lock:
            return list(self._tasks)

    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    def every(self, interval_s: float, fn: Callable[[], object], name: str | None = None) -> None:
        """Call ``fn()`` every ``interval_s`` seconds (from the next interval on)."""
        check_periodic_task(interval_s, fn)
        label = name or str(getattr(fn, "__qualname__", None) or repr(fn))
        task = PeriodicTask(label, float(interval_s), fn)
        with self._lock:
            self._tasks.append(task)
            if self.running:
                self._launch(task)

    def start(self) -> None:
        """Start every task's thread (idempotent); tasks added later start at once."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stop.clear()
            for task in self._tasks:
                self._launch(task)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask every task to stop and wait for the threads (a task mid-run finishes that run)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in [t.thread for t in self.tasks if t.thread is not None]:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("scheduler thread %s did not stop within %.0fs", thread.name, timeout_s)

    # -- internals --------------------------------------------------------------------------------
    def _launch(self, task: PeriodicTask) -> None:
        task.thread = threading.Thread(
            target=self._run, args=(task,), name=f"neve-periodic-{task.name}", daemon=True
        )
        task.thread.start()

    def _run(self, task: PeriodicTask) -> None:
        while not self._stop.wait(task.interval_s):
            started = time.perf_counter()
            try:
                task.fn()
                task.last_error = None
            except Exception as exc:  # logged with its traceback; the task runs again next time
                task.failures += 1
                task.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("periodic task %s failed", task.name)
            finally:
                task.runs += 1
                task.last_duration_s = time.perf_counter() - started
