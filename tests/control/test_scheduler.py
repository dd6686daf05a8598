"""The supervisor runs periodic tasks on real threads: registered before or after it starts,
through ``account.periodic``, each on its own schedule, surviving failures of the others."""

from __future__ import annotations

import threading
import time

import pytest
from waits import wait_for

from neve.control.supervisor import Supervisor
from neve.errors import InvalidArgumentError


def test_periodic_tasks_run_repeatedly_and_failures_do_not_stop_them(account) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def tick(name: str):
        def run() -> None:
            with lock:
                calls.append(name)

        return run

    def broken() -> None:
        raise RuntimeError("boom")

    account.periodic(0.05, tick("early"), name="early")
    supervisor = Supervisor(account)
    supervisor.every(0.05, broken, "broken")
    supervisor.start()
    try:
        # a manager built after the supervisor started registers later: it is adopted too
        account.periodic(0.05, tick("late"), name="late")
        wait_for(lambda: calls.count("early") >= 3 and calls.count("late") >= 3, interval=0.01)
        failing = next(t for t in supervisor.tasks if t.name == "broken")
        wait_for(lambda: failing.failures >= 3, interval=0.01)
        assert failing.last_error == "RuntimeError: boom"
        assert {t.name for t in supervisor.tasks} == {"early", "late", "broken"}
    finally:
        supervisor.stop()
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at  # nothing runs after stop()
    assert all(not t.thread.is_alive() for t in supervisor.tasks)


def test_a_slow_task_does_not_delay_the_others(account) -> None:
    release = threading.Event()
    fast_runs: list[float] = []
    supervisor = Supervisor(account)
    supervisor.every(0.01, lambda: release.wait(5), "slow")
    supervisor.every(0.02, lambda: fast_runs.append(time.monotonic()), "fast")
    supervisor.start()
    try:
        wait_for(lambda: len(fast_runs) >= 5, 5, interval=0.01)
    finally:
        release.set()
        supervisor.stop()


@pytest.mark.parametrize("interval", [0, -1, "5", True])
def test_bad_registrations_are_refused(account, interval) -> None:
    with pytest.raises(InvalidArgumentError, match="interval"):
        account.periodic(interval, lambda: None)
    with pytest.raises(InvalidArgumentError, match="interval"):
        Supervisor(account).every(interval, lambda: None)
    with pytest.raises(InvalidArgumentError, match="callable"):
        account.periodic(1.0, "not a function")
