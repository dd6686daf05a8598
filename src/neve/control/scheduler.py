"""The control plane's supervisor: periodic housekeeping on background threads.

Work comes from two places:

- ``Supervisor.every(seconds, fn)``, called by the daemon for the hooks it knows (the services
  manager's ``reconcile``, purging expired tokens);
- ``account.periodic(seconds, fn)``, called by any manager for its own housekeeping. The
  supervisor adopts those registrations while it runs, also from managers built after it started
  (managers are created lazily, on their first use).

Each task runs on its own thread, so a slow task (a reconcile pass that probes many instances)
never delays another. A task that raises is logged and runs again at its next interval. The
first run comes one interval after the task is adopted: the daemon has just run its start-up
work (recovery) itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from neve.errors import InvalidArgumentError

if TYPE_CHECKING:
    from neve.control.account import Account

log = logging.getLogger("neve.control.supervisor")

#: How often the supervisor looks for tasks registered with ``account.periodic``.
ADOPT_INTERVAL_S = 0.5


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


class Supervisor:
    """Runs periodic tasks until ``stop()``; see the module docstring."""

    def __init__(self, account: Account | None = None) -> None:
        self.account = account
        self._tasks: list[PeriodicTask] = []
        self._adopted = 0  # how many of account.periodic_tasks are already ours
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def tasks(self) -> list[PeriodicTask]:
        with self._lock:
            return list(self._tasks)

    @property
    def running(self) -> bool:
        return self._watcher is not None and not self._stop.is_set()

    def every(self, interval_s: float, fn: Callable[[], object], name: str | None = None) -> None:
        """Call ``fn()`` every ``interval_s`` seconds (from the next interval on)."""
        check_periodic_task(interval_s, fn)
        task = PeriodicTask(name or getattr(fn, "__qualname__", repr(fn)), float(interval_s), fn)
        with self._lock:
            self._tasks.append(task)
            if self._watcher is not None and not self._stop.is_set():
                self._launch(task)

    def start(self) -> None:
        """Start every task's thread and the watcher that adopts ``account.periodic`` tasks."""
        with self._lock:
            if self._watcher is not None:
                return
            self._stop.clear()
            for task in self._tasks:
                self._launch(task)
            self._watcher = threading.Thread(
                target=self._watch, name="neve-supervisor", daemon=True
            )
            self._watcher.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask every task to stop and wait for the threads (a task mid-run finishes that run)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        threads = [t.thread for t in self.tasks if t.thread is not None]
        if self._watcher is not None:
            threads.append(self._watcher)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning(
                    "supervisor thread %s did not stop within %.0fs", thread.name, timeout_s
                )

    # -- internals --------------------------------------------------------------------------------
    def _launch(self, task: PeriodicTask) -> None:
        task.thread = threading.Thread(
            target=self._run, args=(task,), name=f"neve-periodic-{task.name}", daemon=True
        )
        task.thread.start()

    def _adopt(self) -> None:
        if self.account is None:
            return
        registered = list(getattr(self.account, "periodic_tasks", ()))
        for interval_s, fn, name in registered[self._adopted :]:
            log.info("adopting periodic task %s (every %gs)", name, interval_s)
            self.every(interval_s, fn, name)
        self._adopted = len(registered)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._adopt()
            except Exception:  # a bad registration must not end the supervision of the others
                log.exception("adopting periodic tasks failed")
            self._stop.wait(ADOPT_INTERVAL_S)

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
