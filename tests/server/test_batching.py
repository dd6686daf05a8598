"""Dynamic batching: merged calls, chunking, the model's max_batch_size, never mixing rows.

The first tests drive a real server process with many concurrent clients; the last ones run
``MethodBatcher`` in-process, on a real ``WorkerPool`` of model workers, to observe batches
directly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from server_helpers import linear_truth, metric_value, serve

from neve.errors import ModelExecutionError, OverloadedError, ServiceUnavailableError
from neve.models import read_manifest
from neve.models.modeldir import MethodSpec
from neve.models.signature import ModelSignature
from neve.server import ServerConfig, ServerProcess
from neve.server.batching import Admission, MethodBatcher
from neve.server.pool import WorkerPool
from neve.server.protocol import may_hold_booleans, parse_service_request

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

CLIENTS = 24
REQUESTS_PER_CLIENT = 6


@pytest.fixture(scope="module")
def server(linear_dir: Path) -> Iterator[ServerProcess]:
    # The model's manifest caps predict at 16 rows per call (method option max_batch_size).
    srv = serve(linear_dir, num_workers=2, max_batch_rows=1024, batch_timeout_ms=25)
    yield srv
    srv.stop()


def _rows(client: int, request: int, n: int) -> list[list]:
    # Distinct values per client/request/row, so any mix-up changes an answer.
    return [
        [f"c{client}-r{request}-{k}", client + k / 100, request / 10, (client * 7 + k) / 1000]
        for k in range(n)
    ]


async def _client(url: str, client: int, rng: random.Random) -> list[tuple[list, dict]]:
    answers = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for request in range(REQUESTS_PER_CLIENT):
            rows = _rows(client, request, rng.randint(1, 5))
            if rng.random() < 0.5:
                body = {"data": rows}
            else:  # WIDE form in the same batches
                body = {"data": [[r[0], {"a": r[1], "b": r[2], "c": r[3]}] for r in rows]}
            resp = await http.post("/predict", content=orjson.dumps(body))
            assert resp.status_code == 200, resp.text
            answers.append((rows, resp.json()))
    return answers


async def _all_clients(url: str) -> list[list[tuple[list, dict]]]:
    rng = random.Random(42)
    return await asyncio.gather(
        *(_client(url, c, random.Random(rng.random())) for c in range(CLIENTS))
    )


def test_concurrent_clients_get_their_own_rows_back(server: ServerProcess) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    results = asyncio.run(_all_clients(server.url))
    total_requests = 0
    for answers in results:
        for rows, body in answers:
            total_requests += 1
            data = body["data"]
            assert [d[0] for d in data] == [r[0] for r in rows]  # same indices, same order
            for row, (_, out) in zip(rows, data, strict=True):
                assert out["output_feature_0"] == pytest.approx(linear_truth(*row[1:]), abs=1e-9)
    after = httpx.get(f"{server.url}/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    # /metrics aggregates both workers: every request and row is counted exactly once.
    assert delta("neve_server_requests_total", method="predict", status="200") == total_requests
    calls = delta("neve_server_model_calls_total", method="predict")
    # Requests were merged: fewer model calls than requests.
    assert 0 < calls < total_requests
    # ... and never beyond the model's max_batch_size of 16 rows per call.
    assert delta("neve_server_batch_rows_bucket", method="predict", le="16.0") == calls


def test_large_request_is_chunked_in_order(server: ServerProcess) -> None:
    rows = [[i, i / 10, (100 - i) / 7, i % 3] for i in range(100)]
    before = httpx.get(f"{server.url}/metrics").text
    resp = httpx.post(f"{server.url}/predict", content=orjson.dumps({"data": rows}), timeout=30)
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert [d[0] for d in data] == list(range(100))
    for row, (_, out) in zip(rows, data, strict=True):
        assert out["output_feature_0"] == pytest.approx(linear_truth(*row[1:]), abs=1e-9)
    after = httpx.get(f"{server.url}/metrics").text
    calls = metric_value(after, "neve_server_model_calls_total", method="predict") - metric_value(
        before, "neve_server_model_calls_total", method="predict"
    )
    assert calls >= 7  # 100 rows in chunks of at most 16
    assert httpx.get(f"{server.url}/methods").json()["methods"]["predict"]["max_batch_rows"] == 16


def test_dataframe_forms_on_the_numeric_fast_path(server: ServerProcess) -> None:
    split = {"columns": ["c", "b", "a"], "data": [[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]]}
    resp = httpx.post(f"{server.url}/predict", content=orjson.dumps({"dataframe_split": split}))
    assert resp.json()["data"] == [
        [0, {"output_feature_0": pytest.approx(linear_truth(1, 2, 3))}],
        [1, {"output_feature_0": pytest.approx(0.5)}],
    ]
    resp = httpx.post(
        f"{server.url}/predict", content=orjson.dumps({"data": [[0, 1, True, 3]]})
    )  # a boolean where a number belongs
    assert resp.status_code == 400 and "column 'b'" in resp.json()["message"]
    resp = httpx.post(f"{server.url}/predict", content=orjson.dumps({"data": [[0, 1, 2, False]]}))
    assert resp.status_code == 400 and "column 'c'" in resp.json()["message"]


def test_the_boolean_scan_is_exact() -> None:
    assert may_hold_booleans(b'{"data": [[0, true]]}')
    assert may_hold_booleans(b'{"data": [[0, false]]}')
    assert not may_hold_booleans(b'{"data": [[0, 1.5e-05, -2]]}')
    # the letters it looks for first, without the words: still no booleans
    assert not may_hold_booleans(b'{"dataframe_split": {"columns": ["rules", "tru"], "data": []}}')
    assert not may_hold_booleans(b"")


# ------------------------------------------------------------------ in-process batcher


def _spec(model_dir: Path, method: str) -> MethodSpec:
    d = read_manifest(model_dir)["methods"][method]
    return MethodSpec(method, ModelSignature.from_dict(d["signature"]), d.get("options") or {})


def _batched(model_dir: Path, method: str, body, **kw: object):
    """Run ``body(batcher)`` on a started batcher over a one-worker pool; return the admission
    budget too (to check it is left empty)."""
    admission = Admission(int(kw.pop("max_queue_rows", 1000)), 1 << 20)  # type: ignore[arg-type]
    opts = {"max_batch_rows": 64, "batch_timeout_s": 0.05, "queue_timeout_s": 5.0, **kw}

    async def run():
        pool = WorkerPool(ServerConfig(model_dir=str(model_dir), num_workers=1))
        await pool.start()
        batcher = MethodBatcher(_spec(model_dir, method), pool, admission, **opts)  # type: ignore[arg-type]
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()
            await pool.stop()

    return asyncio.run(run()), admission


def _request(batcher: MethodBatcher, rows: list[list]):
    return parse_service_request({"data": rows}, batcher.spec.signature.inputs, batcher.method)


def test_failing_request_is_isolated_from_its_batch(toolbox_dir: Path) -> None:
    async def body(batcher: MethodBatcher) -> list:
        reqs = [_request(batcher, [[i, "a", float(x), 1]]) for i, x in enumerate([1, -1, 2])]
        return await asyncio.gather(*(batcher.submit(r) for r in reqs), return_exceptions=True)

    (ok1, bad, ok2), admission = _batched(toolbox_dir, "fail", body)
    assert isinstance(bad, ModelExecutionError) and "boom" in bad.message
    assert ok1.columns == [[1.0]] and ok2.columns == [[2.0]]
    assert admission.queued_rows == 0


def test_queue_full_is_refused_at_once_and_queue_timeout_is_503(toolbox_dir: Path) -> None:
    # slow sleeps 0.1 s per batch; 2 rows per batch; 4 rows may wait.
    async def body(batcher: MethodBatcher) -> list:
        reqs = [_request(batcher, [[i, "a", float(i), 1]]) for i in range(12)]
        tasks = []
        for r in reqs:
            tasks.append(asyncio.ensure_future(batcher.submit(r)))
            await asyncio.sleep(0)  # admit in order
        return await asyncio.gather(*tasks, return_exceptions=True)

    results, admission = _batched(
        toolbox_dir, "slow", body, max_queue_rows=4, max_batch_rows=2, queue_timeout_s=0.15
    )
    kinds = [type(r).__name__ for r in results]
    assert "OverloadedError" in kinds and "ServiceUnavailableError" in kinds, kinds
    for i, r in enumerate(results):
        if isinstance(r, OverloadedError):
            assert r.retry_after_s >= 1  # type: ignore[attr-defined]
        elif isinstance(r, ServiceUnavailableError):
            assert r.code == "QUEUE_TIMEOUT"
        else:
            assert r.columns == [[float(i) * 10]]
    assert admission.queued_rows == 0  # every refused or expired row was released


def test_a_request_starts_only_while_its_budget_covers_its_computation(toolbox_dir: Path) -> None:
    # slow sleeps 0.1 s per batch of 2 rows (the batcher learns ~20 rows/s from the first call).
    async def body(batcher: MethodBatcher) -> list:
        await batcher.submit(_request(batcher, [[0, "a", 1.0, 1]] * 2))
        results = []
        for budget in (0.15, 0.5):
            busy = asyncio.ensure_future(batcher.submit(_request(batcher, [[1, "a", 2.0, 1]] * 2)))
            await asyncio.sleep(0)  # the worker is taken for ~0.1 s
            late = batcher.submit(_request(batcher, [[2, "a", 3.0, 1]] * 2), timeout_s=budget)
            results += await asyncio.gather(busy, late, return_exceptions=True)
        return results

    (busy1, late1, busy2, late2), admission = _batched(
        toolbox_dir, "slow", body, max_batch_rows=2, batch_timeout_s=0.0
    )
    # 0.15 s left: it could start at ~0.1 s but would end at ~0.2 s, past its budget: 503
    assert isinstance(late1, ServiceUnavailableError) and late1.code == "QUEUE_TIMEOUT"
    assert list(late2.columns[0]) == [30.0, 30.0]  # 0.5 s left: it starts and ends in time
    assert list(busy1.columns[0]) == list(busy2.columns[0]) == [20.0, 20.0]
    assert admission.queued_rows == 0


def test_chunks_of_one_request_keep_their_order(linear_dir: Path) -> None:
    rows = [[i, float(i), float(-i), 0.5] for i in range(50)]

    async def body(batcher: MethodBatcher):
        assert batcher.max_batch_rows == 7  # below the manifest's 16
        return await batcher.submit(_request(batcher, rows))

    out, _ = _batched(linear_dir, "predict", body, max_batch_rows=7, batch_timeout_s=0.0)
    expected = [linear_truth(i, -i, 0.5) for i in range(50)]
    np.testing.assert_allclose(out.columns[0], expected, atol=1e-9)


def test_a_callers_queue_budget_shortens_the_wait_and_the_503_says_when_to_retry(
    toolbox_dir: Path,
) -> None:
    # slow sleeps 0.1 s per batch of 2 rows; the queue timeout is long (5 s), but the second
    # request says (X-Neve-Timeout, as a proxy does) that only 0.05 s of its budget is left.
    async def body(batcher: MethodBatcher) -> list:
        first = asyncio.ensure_future(batcher.submit(_request(batcher, [[0, "a", 1.0, 1]] * 2)))
        await asyncio.sleep(0)
        second = _request(batcher, [[1, "a", 2.0, 1]] * 2)
        started = asyncio.get_running_loop().time()
        try:
            await batcher.submit(second, timeout_s=0.05)
        except ServiceUnavailableError as err:
            waited = asyncio.get_running_loop().time() - started
            return [await first, err, waited]
        raise AssertionError("the second request should not have been served in 0.05 s")

    (served, err, waited), admission = _batched(
        toolbox_dir, "slow", body, max_queue_rows=8, max_batch_rows=2, queue_timeout_s=5.0
    )
    assert [list(c) for c in served.columns] == [[10.0, 10.0]]
    assert err.code == "QUEUE_TIMEOUT" and waited < 1.0
    assert err.retry_after_s >= 1  # type: ignore[attr-defined]
    assert admission.queued_rows == 0
