"""Worker processes: each loads its own model, and a killed worker is replaced while the
server keeps answering."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
from server_helpers import linear_truth, metric_value, serve

from neve.server import ServerProcess
from neve.server.processes import pid_alive


@pytest.fixture(scope="module")
def server(linear_dir: Path) -> Iterator[ServerProcess]:
    srv = serve(linear_dir, num_workers=2, all_workers=True)
    yield srv
    srv.stop()


def _predict_fresh_connection(url: str, i: int) -> tuple[int, float | None]:
    # A new connection per request: a kept-alive one would be tied to a killed worker.
    resp = httpx.post(f"{url}/predict", content=orjson.dumps({"data": [[i, i, 1.0, 0.0]]}))
    value = resp.json()["data"][0][1]["output_feature_0"] if resp.status_code == 200 else None
    return resp.status_code, value


def _ready_pids(url: str, attempts: int = 60) -> set[int]:
    with ThreadPoolExecutor(8) as pool:
        return {
            r.json()["pid"] for r in pool.map(lambda _: httpx.get(f"{url}/ready"), range(attempts))
        }


def test_each_worker_is_a_process_with_its_own_model(server: ServerProcess) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2 and server.pid not in workers
    served = _ready_pids(server.url)
    assert served <= set(workers) and len(served) >= 1
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["workers"] == 2 and ready["workers_ready"] == 2
    # Each worker listens on its own socket: fresh connections reach both (not a guarantee of
    # the kernel's hash for any one connection, but 60 connections all landing on one worker
    # would mean the connections are not spread).
    assert len(served) == 2


def test_killed_worker_is_replaced_and_server_keeps_answering(server: ServerProcess) -> None:
    before = set(server.worker_pids())
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel queued on the victim's own socket in the instant it died are reset
    # (SO_REUSEPORT: one listening socket per worker; clients such as the invoker retry them).
    # Once it is gone, every request must be answered while its replacement starts.
    deadline = time.monotonic() + 10
    while pid_alive(victim):
        assert time.monotonic() < deadline, "the killed worker did not exit"
        time.sleep(0.01)
    answered = 0
    deadline = time.monotonic() + 60
    while True:
        status, value = _predict_fresh_connection(server.url, answered)
        assert status == 200, f"request {answered} after the kill got {status}"
        assert value == pytest.approx(linear_truth(answered, 1.0, 0.0))
        answered += 1
        now = set(server.worker_pids())
        if victim not in now and len(now) == 2:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        time.sleep(0.05)
    replacement = (now - before).pop()
    assert server.is_alive() and answered >= 1
    # The replacement loads its model and serves too.
    deadline = time.monotonic() + 60
    while replacement not in _ready_pids(server.url, attempts=16):
        assert time.monotonic() < deadline, "the replacement worker never answered"
    text = httpx.get(f"{server.url}/metrics").text
    assert (
        metric_value(text, "neve_server_requests_total", method="predict", status="200") >= answered
    )


def test_workers_exit_when_the_supervisor_is_killed(server: ServerProcess) -> None:
    workers = server.worker_pids()
    assert workers
    os.kill(server.pid, signal.SIGKILL)  # no graceful shutdown: the workers are orphaned
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in workers):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)
