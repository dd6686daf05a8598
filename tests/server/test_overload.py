"""Overload: a slow model, a small queue and ten times more concurrent requests than it admits.

Every request must get an answer (200, 429 with Retry-After, or 503), every 200 must carry the
right values, and the server's memory must stay bounded while the flood lasts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from server_helpers import metric_value, serve, tree_rss_bytes

from neve.server import ServerProcess

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

ROWS_PER_REQUEST = 16
QUEUE_ROWS = 64  # 4 queued requests + 1 batch running: ~5 admitted at a time
REQUESTS = 120  # > 10x what is admitted; half of them with ~160 KB bodies
BIG_NAME = "n" * 10_000


@pytest.fixture(scope="module")
def server(toolbox_dir: Path) -> Iterator[ServerProcess]:
    srv = serve(
        toolbox_dir,
        num_workers=1,
        max_batch_rows=ROWS_PER_REQUEST,
        max_queue_rows=QUEUE_ROWS,
        batch_timeout_ms=5,
        queue_timeout_s=1.0,
        max_body_bytes=512 * 1024,
        max_inflight_bytes=1024 * 1024,  # ~6 big bodies at once; more are refused unread
        grpc_port=0,
    )
    yield srv
    srv.stop()


def _body(request: int) -> bytes:
    name = BIG_NAME if request % 2 else "s"
    rows = [[k, name, request * 100.0 + k, 1] for k in range(ROWS_PER_REQUEST)]
    return orjson.dumps({"data": rows})


async def _flood(url: str) -> list[httpx.Response | BaseException]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/slow", content=_body(i)) for i in range(REQUESTS)),
            return_exceptions=True,
        )


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            time.sleep(0.02)


def test_flood_gets_200_429_or_503_correct_results_and_bounded_memory(
    server: ServerProcess,
) -> None:
    # Warm up once so the baseline includes what the first request allocates for good.
    assert httpx.post(f"{server.url}/slow", content=_body(0), timeout=30).status_code == 200
    baseline = tree_rss_bytes(server.pid)
    sampler = RssSampler(server.pid)
    sampler.start()
    started = time.monotonic()
    responses = asyncio.run(_flood(server.url))
    elapsed = time.monotonic() - started
    sampler.stopped.set()
    sampler.join()

    failures = [r for r in responses if isinstance(r, BaseException)]
    assert not failures, f"requests without an answer: {failures[:3]}"
    statuses = [r.status_code for r in responses]  # type: ignore[union-attr]
    assert set(statuses) <= {200, 429, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 4, statuses
    assert statuses.count(429) >= REQUESTS // 2, statuses  # refused, not queued without end
    for i, resp in enumerate(responses):
        assert isinstance(resp, httpx.Response)
        if resp.status_code == 200:
            data = resp.json()["data"]
            assert [d[0] for d in data] == list(range(ROWS_PER_REQUEST))
            assert [d[1]["y"] for d in data] == [(i * 100.0 + k) * 10 for k in range(16)]
        else:
            body = resp.json()
            assert body["code"] in ("OVERLOADED", "QUEUE_TIMEOUT"), body
            if resp.status_code == 429:
                assert int(resp.headers["retry-after"]) >= 1
    # Refusals are immediate: the whole flood takes about as long as the admitted work.
    assert elapsed < 20
    growth = sampler.peak - baseline
    assert growth < 100 * 1024 * 1024, f"server memory grew by {growth / 1e6:.0f} MB"

    text = httpx.get(f"{server.url}/metrics").text
    refused = metric_value(text, "neve_server_rejections_total", method="slow")
    refused += metric_value(text, "neve_server_rejections_total", method="_unknown")
    assert refused >= statuses.count(429)
    assert metric_value(text, "neve_server_queue_rows", method="slow") == 0
    # Still healthy afterwards.
    assert httpx.post(f"{server.url}/slow", content=_body(7), timeout=30).status_code == 200


async def _grpc_flood(address: str, calls: int) -> list[tuple[str, object, dict]]:
    import grpc.aio

    from neve.server.v2_grpc import grpc_predict_v2_pb2 as pb
    from neve.server.v2_grpc import method_path

    def request(i: int) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name="slow")
        for name, datatype, field, values in (
            ("name", "BYTES", "bytes_contents", [b"s"] * ROWS_PER_REQUEST),
            ("x", "FP64", "fp64_contents", [i * 100.0 + k for k in range(ROWS_PER_REQUEST)]),
            ("n", "INT64", "int64_contents", [1] * ROWS_PER_REQUEST),
        ):
            t = r.inputs.add(name=name, datatype=datatype, shape=[ROWS_PER_REQUEST])
            getattr(t.contents, field).extend(values)
        return r

    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def one(i: int) -> tuple[str, object, dict]:
            try:
                answer = await infer(request(i), timeout=60)
                return "OK", answer, {}
            except grpc.aio.AioRpcError as err:
                return err.code().name, err.details(), dict(err.trailing_metadata() or ())

        return await asyncio.gather(*(one(i) for i in range(calls)))


def test_grpc_flood_gets_answers_or_refusals_with_retry_after(server: ServerProcess) -> None:
    import numpy as np

    results = asyncio.run(_grpc_flood(server.grpc_address, 60))
    codes = [code for code, _, _ in results]
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes
    assert "OK" in codes and len(set(codes)) > 1, codes  # some served, some refused
    for i, (code, answer, trailer) in enumerate(results):
        if code == "OK":
            y = np.frombuffer(answer.raw_output_contents[0], dtype="<f8")  # type: ignore[attr-defined]
            np.testing.assert_array_equal(
                y, [(i * 100.0 + k) * 10 for k in range(ROWS_PER_REQUEST)]
            )
        else:
            assert float(trailer["retry-after"]) > 0, (code, answer)
    assert server.is_alive()
