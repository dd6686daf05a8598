"""Workers are compute slots behind one queue per instance.

Each worker is a process with its own model; the front process answers HTTP, admits and batches
for the whole instance; at most ``max_concurrent_batches`` batches compute at once; each worker
runs with the intra-op threads it was given; a worker that dies is replaced, and a batch it was
computing is retried once, then answered with a clear error.
"""

from __future__ import annotations

import asyncio
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
from server_helpers import (
    TRACK_ENV,
    linear_truth,
    max_overlap,
    metric_value,
    serve,
    tracked_batches,
)
from waits import wait_for

from neve.server import ServerProcess
from neve.server.config import cpu_count, default_threads
from neve.server.processes import pid_alive

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

TRACKER_WORKERS = 3
TRACKER_CONCURRENCY = 2
TRACKER_THREADS = 3  # not what the machine would get by default: proves the setting travels


@pytest.fixture(scope="module")
def server(linear_dir: Path) -> Iterator[ServerProcess]:
    srv = serve(linear_dir, num_workers=2, all_workers=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def track_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("track") / "batches.txt"


@pytest.fixture(scope="module")
def tracker(tracker_dir: Path, track_file: Path) -> Iterator[ServerProcess]:
    srv = serve(
        tracker_dir,
        num_workers=TRACKER_WORKERS,
        max_concurrent_batches=TRACKER_CONCURRENCY,
        threads_per_worker=TRACKER_THREADS,
        max_batch_rows=64,
        max_queue_rows=256,
        batch_timeout_ms=20,
        all_workers=True,
        env={TRACK_ENV: str(track_file)},
    )
    yield srv
    srv.stop()


def _predict_fresh_connection(url: str, i: int) -> tuple[int, float | None]:
    resp = httpx.post(f"{url}/predict", content=orjson.dumps({"data": [[i, i, 1.0, 0.0]]}))
    value = resp.json()["data"][0][1]["output_feature_0"] if resp.status_code == 200 else None
    return resp.status_code, value


def _track_body(rows: int, ms: float, first: int = 0) -> bytes:
    return orjson.dumps({"data": [[k, "t", ms, first + k] for k in range(rows)]})


async def _concurrent(url: str, bodies: list[bytes], path: str = "/track") -> list[httpx.Response]:
    """Every body on its own connection, all at once."""
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in bodies]
    try:
        return await asyncio.gather(
            *(c.post(path, content=b) for c, b in zip(clients, bodies, strict=True))
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def _workers(server: ServerProcess) -> dict:
    return httpx.get(f"{server.url}/workers").json()


def test_each_worker_is_a_process_with_its_own_model(server: ServerProcess) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2 and server.pid not in workers
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["pid"] == server.pid
    assert ready["workers"] == 2 and ready["workers_ready"] == 2
    listed = _workers(server)["workers"]
    assert sorted(w["pid"] for w in listed) == sorted(workers)
    assert all(w["ready"] and w["loaded_in_s"] > 0 for w in listed)
    # Default sizing: batches at once = min(workers, cpus); threads fill the CPUs between them.
    assert ready["max_concurrent_batches"] == min(2, cpu_count())
    assert ready["threads_per_worker"] == default_threads(min(2, cpu_count()))


def _threads_probe():
    """A torch module that sleeps ``ms`` (its first input) and answers with the intra-op
    threads torch computes it with."""
    import torch

    class ThreadsProbe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(float(x[:, 0].max()) / 1000)
            return torch.full((x.shape[0], 1), float(torch.get_num_threads()))

    return ThreadsProbe()


def test_a_torch_batch_gets_every_thread_alone_and_its_share_beside_another(
    tmp_path: Path,
) -> None:
    """The handler's ``threaded_calls`` trait (torch): workers start with every CPU's thread
    and each slice of a batch computes with the CPUs shared by the batches running then; a
    batch computed in one call (one slice) is not joined by another on too many threads."""
    import pandas as pd

    from neve.models import save_model
    from neve.server.worker import SLICE_ROWS

    sample = pd.DataFrame({"ms": [0.0, 1.0], "k": [1.0, 0.0]}, dtype="float32")
    save_model(_threads_probe(), tmp_path / "torch", sample_input=sample)
    srv = serve(tmp_path / "torch", num_workers=2, all_workers=True)
    cpus = cpu_count()
    share = max(1, cpus // 2)  # beside another batch (1 CPU: after it, with its one thread)
    try:
        ready = httpx.get(f"{srv.url}/ready").json()
        assert ready["max_concurrent_batches"] == min(2, cpus)
        assert ready["threads_per_worker"] == cpus
        assert ready["threads_per_batch"] == "shared"
        assert {w["threads"] for w in _workers(srv)["workers"]} == {cpus}

        def threads_used(rows: int, ms: float) -> list[float]:
            body = orjson.dumps({"data": [[i, ms, 0.0] for i in range(rows)]})
            resp = httpx.post(f"{srv.url}/forward", content=body, timeout=60)
            assert resp.status_code == 200, resp.text
            return [row[1]["output_feature_0"] for row in resp.json()["data"]]

        with ThreadPoolExecutor(1) as pool:
            # three slices of 1 s each; the second batch arrives during the first slice
            alone = pool.submit(threads_used, 2 * SLICE_ROWS + 2, 1000)
            wait_for(lambda: _workers(srv)["batches_running"] == 1, 10, "the first batch")
            beside = threads_used(1, 2500)
            first = alone.result()
        assert first[:SLICE_ROWS] == [cpus] * SLICE_ROWS  # started alone: every thread
        assert first[SLICE_ROWS : 2 * SLICE_ROWS] == [share] * SLICE_ROWS  # then its share
        assert beside == [share]
        assert threads_used(1, 0) == [cpus]  # alone again: every thread
        with ThreadPoolExecutor(1) as pool:
            # a batch computed in one call keeps its threads: the next waits for it
            whole = pool.submit(threads_used, 1, 1000)
            wait_for(lambda: _workers(srv)["batches_running"] == 1, 10, "the one-call batch")
            t0 = time.monotonic()
            after = threads_used(1, 0)
            waited = time.monotonic() - t0
            assert whole.result() == [cpus]
        assert after == [cpus] and waited > 0.3, waited
    finally:
        srv.stop()


def test_workers_run_with_the_thread_limits_they_were_given(tracker: ServerProcess) -> None:
    info = _workers(tracker)
    assert info["threads_per_worker"] == TRACKER_THREADS
    assert info["max_concurrent_batches"] == TRACKER_CONCURRENCY
    assert len(info["workers"]) == TRACKER_WORKERS
    for w in info["workers"]:
        assert w["threads"] == TRACKER_THREADS
        assert w["env"]["OMP_NUM_THREADS"] == str(TRACKER_THREADS)
        # numpy's BLAS (at least) is loaded in every worker, limited by threadpoolctl.
        assert w["threadpools"], w
        assert {p["num_threads"] for p in w["threadpools"]} == {TRACKER_THREADS}, w


def test_one_queue_batches_requests_from_many_connections(
    tracker: ServerProcess, track_file: Path
) -> None:
    offset = track_file.stat().st_size if track_file.exists() else 0
    # 24 one-row requests on 24 connections; each batch takes 300 ms.
    bodies = [_track_body(1, 300, first=i) for i in range(24)]
    responses = asyncio.run(_concurrent(tracker.url, bodies))
    for resp in responses:
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"] == [[0, {"y": 3000.0}]]
    batches = tracked_batches(track_file, offset)
    assert sum(b[3] for b in batches) == 24
    # While both slots compute, the rest wait in the one queue and leave as one batch: more
    # rows than any single worker's share of the connections, in fewer calls than requests.
    assert max(b[3] for b in batches) > 24 // TRACKER_WORKERS, batches
    assert len(batches) <= 8, batches


def test_at_most_max_concurrent_batches_compute_at_once(
    tracker: ServerProcess, track_file: Path
) -> None:
    offset = track_file.stat().st_size if track_file.exists() else 0
    # 40-row requests of 100 ms each: two do not fit in one batch (64 rows), so every request
    # is a batch of its own.
    bodies = [_track_body(40, 100) for _ in range(6)]  # 240 rows: all fit in the queue
    started = time.monotonic()
    responses = asyncio.run(_concurrent(tracker.url, bodies))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 6
    batches = tracked_batches(track_file, offset)
    assert len(batches) == 6 and {b[3] for b in batches} == {40}
    assert max_overlap(batches) == TRACKER_CONCURRENCY, batches  # parallel, never more
    assert len({b[0] for b in batches}) >= TRACKER_CONCURRENCY
    assert elapsed >= 6 / TRACKER_CONCURRENCY * 0.1 * 0.9


def test_admission_is_per_instance_and_refusals_are_counted(tracker: ServerProcess) -> None:
    before = httpx.get(f"{tracker.url}/metrics").text
    # 40 requests of 16 rows, each batch 500 ms: 2 batches of 64 rows compute, 256 rows wait;
    # the rest of the flood is refused at once, whatever connection it came on.
    bodies = [_track_body(16, 500, first=100 * i) for i in range(40)]
    responses = asyncio.run(_concurrent(tracker.url, bodies))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    # Per-worker queues would admit 3 x (64 + 256) rows: all 40 requests.
    assert statuses.count(429) >= 8, statuses
    assert statuses.count(200) <= 32, statuses
    for resp in responses:
        if resp.status_code == 200:
            assert [d[0] for d in resp.json()["data"]] == list(range(16))
        else:
            assert resp.json()["code"] == "OVERLOADED" and int(resp.headers["retry-after"]) >= 1
    after = httpx.get(f"{tracker.url}/metrics").text
    refused = metric_value(
        after, "neve_server_rejections_total", method="track", reason="queue_full"
    ) - metric_value(before, "neve_server_rejections_total", method="track", reason="queue_full")
    assert refused == statuses.count(429)
    assert metric_value(after, "neve_server_queue_rows", method="track") == 0


def test_crashing_batch_is_retried_once_then_answered_with_a_clear_error(
    tracker: ServerProcess,
) -> None:
    before = set(tracker.worker_pids())
    restarts = _workers(tracker)["restarts"]
    resp = httpx.post(
        f"{tracker.url}/crash", content=orjson.dumps({"data": [[0, "a", -1.0, 1]]}), timeout=60
    )
    assert resp.status_code == 500, resp.text
    body = resp.json()
    assert body["code"] == "WORKER_CRASHED"
    assert "died while computing this batch" in body["message"] and "17" in body["message"]
    # Retried once on another worker, which died too; both are being replaced.
    assert _workers(tracker)["restarts"] == restarts + 2
    ok = httpx.post(
        f"{tracker.url}/crash", content=orjson.dumps({"data": [[0, "a", 2.0, 1]]}), timeout=60
    )
    assert ok.status_code == 200 and ok.json()["data"] == [[0, {"y": 2.0}]]
    deadline = time.monotonic() + 120
    while True:
        info = _workers(tracker)
        if sum(w["ready"] for w in info["workers"]) == TRACKER_WORKERS:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    now = {w["pid"] for w in info["workers"]}
    assert len(before - now) == 2 and now == set(tracker.worker_pids())
    text = httpx.get(f"{tracker.url}/metrics").text
    assert metric_value(text, "neve_server_worker_restarts_total") >= 2


def test_killed_worker_is_replaced_and_server_keeps_answering(server: ServerProcess) -> None:
    before = set(server.worker_pids())
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # The front owns every connection: no request is lost while the victim dies, whether
    # it was idle or computing (a batch on a dead worker is retried on another).
    answered = 0
    deadline = time.monotonic() + 120
    while True:
        status, value = _predict_fresh_connection(server.url, answered)
        assert status == 200, f"request {answered} after the kill got {status}"
        assert value == pytest.approx(linear_truth(answered, 1.0, 0.0))
        answered += 1
        listed = _workers(server)["workers"]
        if victim not in {w["pid"] for w in listed} and all(w["ready"] for w in listed):
            break
        assert time.monotonic() < deadline, f"no ready replacement worker: {listed}"
        time.sleep(0.05)
    assert not pid_alive(victim)
    now = set(server.worker_pids())
    assert len(now) == 2 and len(now - before) == 1 and server.is_alive()
    text = httpx.get(f"{server.url}/metrics").text
    assert (
        metric_value(text, "neve_server_requests_total", method="predict", status="200") >= answered
    )
    assert metric_value(text, "neve_server_worker_restarts_total") == 1


def test_workers_exit_when_the_front_is_killed(server: ServerProcess) -> None:
    workers = server.worker_pids()
    assert workers
    os.kill(server.pid, signal.SIGKILL)  # no graceful shutdown: the workers are orphaned
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in workers):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)
