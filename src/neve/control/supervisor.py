"""The control plane's supervisor: periodic housekeeping run on one background thread.

Managers register work with ``Supervisor.every(seconds, fn)`` (the services manager reconciles
instances, the security manager purges expired tokens). A task that raises is logged and runs
again at its next tick; one slow task delays the others, never kills the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("neve.control.supervisor")


@dataclass
class _Task:
    name: str
    interval_s: float
    fn: Callable[[], object]
    next_run: float = 0.0


class Supervisor:
    def __init__(self) -> None:
        self._tasks: list[_Task] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, interval_s: float, fn: Callable[[], object], name: str | None = None) -> None:
        self._tasks.append(_Task(name or getattr(fn, "__qualname__", "task"), interval_s, fn))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="neve-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for task in self._tasks:
                if now < task.next_run:
                    continue
                try:
                    task.fn()
                except Exception:
                    log.exception("supervisor task %s failed", task.name)
                task.next_run = time.monotonic() + task.interval_s
            self._stop.wait(0.25)
