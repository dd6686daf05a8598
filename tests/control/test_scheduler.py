"""The daemon's scheduler runs periodic tasks on real threads: registered before or after it
starts, each on its own schedule, surviving failures of the others."""

from __future__ import annotations

import threading
import time

import pytest
from waits import wait_for

from neve.control.scheduler import Scheduler
from neve.errors import InvalidArgumentError


def test_periodic_tasks_run_repeatedly_and_failures_do_not_stop_them() -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def tick(name: str):
        def run() -> None:
            with lock:
                calls.append(name)

        return run

    def broken() -> None:
        raise RuntimeError("boom")

    scheduler = Scheduler()
    scheduler.every(0.05, tick("early"), "early")
    scheduler.every(0.05, broken, "broken")
    scheduler.start()
    try:
        # a task added after the start runs too
        scheduler.every(0.05, tick("late"), "late")
        wait_for(lambda: calls.count("early") >= 3 and calls.count("late") >= 3, interval=0.01)
        failing = next(t for t in scheduler.tasks if t.name == "broken")
        wait_for(lambda: failing.failures >= 3, interval=0.01)
        assert failing.last_error == "RuntimeError: boom"
        assert {t.name for t in scheduler.tasks} == {"early", "late", "broken"}
    finally:
        scheduler.stop()
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at  # nothing runs after stop()
    assert all(not t.thread.is_alive() for t in scheduler.tasks)


def test_a_slow_task_does_not_delay_the_others() -> None:
    release = threading.Event()
    fast_runs: list[float] = []
    scheduler = Scheduler()
    scheduler.every(0.01, lambda: release.wait(5), "slow")
    scheduler.every(0.02, lambda: fast_runs.append(time.monotonic()), "fast")
    scheduler.start()
    try:
        wait_for(lambda: len(fast_runs) >= 5, 5, interval=0.01)
    finally:
        release.set()
        scheduler.stop()


@pytest.mark.parametrize("interval", [0, -1, "5", True])
def test_bad_registrations_are_refused(interval) -> None:
    with pytest.raises(InvalidArgumentError, match="interval"):
        Scheduler().every(interval, lambda: None)
    with pytest.raises(InvalidArgumentError, match="callable"):
        Scheduler().every(1.0, "not a function")
