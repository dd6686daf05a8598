"""The batching client behind ServiceManager.invoke, against two real inference servers."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.linear_model import LinearRegression
from waits import wait_for

from neve.errors import ObjectNotFoundError, ServiceUnavailableError, SignatureError
from neve.models import load_model, save_model
from neve.server.launch import start_server
from neve.services.invoke import ServiceInvoker

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"A": rng.normal(size=200), "B": rng.normal(size=200)})
    y = 3 * X.A - 2 * X.B
    path = tmp_path_factory.mktemp("model") / "m"
    save_model(LinearRegression().fit(X, y), path, sample_input=X)
    return path


@pytest.fixture(scope="module")
def servers(model_dir):
    started = [start_server(model_dir, num_workers=1) for _ in range(2)]
    try:
        for server in started:
            server.wait_ready(60)
        yield started
    finally:
        for server in started:
            server.stop()


def _rows(n: int, seed: int = 1) -> tuple[pd.DataFrame, list[list]]:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"A": rng.normal(size=n), "B": rng.normal(size=n)})
    return df, [[i, float(a), float(b)] for i, (a, b) in enumerate(df.to_numpy())]


def _source(servers):
    def endpoints(refresh: bool, remaining: float):
        return [(s.host, s.port) for s in servers if s.is_alive()]

    return endpoints


def test_chunks_come_back_in_order_and_equal_in_process(servers, model_dir):
    df, rows = _rows(250)
    invoker = ServiceInvoker()
    try:
        out = invoker.invoke(
            label="svc",
            route="predict",
            rows=rows,
            endpoints=_source(servers),
            chunk_rows=40,
            timeout_s=60,
        )
    finally:
        invoker.close()
    expected = load_model(model_dir).call("predict", df)
    name = expected.columns[0]
    assert len(out) == 250
    np.testing.assert_allclose([o[name] for o in out], expected[name].to_numpy(), rtol=1e-9)
    # 250 rows in chunks of 40: 7 requests, spread over both instances
    assert invoker.totals.requests - invoker.totals.retries == 7


def test_arrow_chunks_equal_the_json_answer_and_in_process(servers, model_dir):
    df, rows = _rows(250, seed=3)
    invoker = ServiceInvoker()
    try:
        common = {"label": "svc", "route": "predict", "endpoints": _source(servers)}
        table = pa.Table.from_pandas(df, preserve_index=False)
        out = invoker.invoke_arrow(table=table, chunk_rows=40, timeout_s=60, **common)
        as_json = invoker.invoke(rows=rows, chunk_rows=40, timeout_s=60, **common)
        with pytest.raises(SignatureError, match="svc.*column 'A'"):
            bad = pa.table({"A": ["x"], "B": [1.0]})
            invoker.invoke_arrow(table=bad, chunk_rows=None, timeout_s=30, **common)
    finally:
        invoker.close()
    expected = load_model(model_dir).call("predict", df)
    name = expected.columns[0]
    assert out.num_rows == 250 and out.column_names == [name]
    np.testing.assert_allclose(out.column(name).to_numpy(), expected[name].to_numpy(), rtol=1e-9)
    # the same values both ways; not bit for bit: the server batches concurrent chunks as they
    # come, and a float sum over another batch shape can differ in the last bit
    np.testing.assert_allclose(out.column(name).to_numpy(), [o[name] for o in as_json], rtol=1e-12)
    # 250 rows in chunks of 40, twice; the bad one (a loaded machine may add 429 retries)
    assert invoker.totals.requests - invoker.totals.retries == 7 + 7 + 1


def test_service_errors_are_neve_errors(servers):
    invoker = ServiceInvoker()
    try:
        with pytest.raises(SignatureError) as info:
            invoker.invoke(
                label="svc",
                route="predict",
                rows=[[0, "not a number", 1.0]],
                endpoints=_source(servers),
                chunk_rows=None,
                timeout_s=30,
            )
        assert "svc" in info.value.message
        with pytest.raises(ObjectNotFoundError):
            invoker.invoke(
                label="svc",
                route="nope",
                rows=[[0, 1.0, 1.0]],
                endpoints=_source(servers),
                chunk_rows=None,
                timeout_s=30,
            )
        with pytest.raises(ServiceUnavailableError, match="did not answer in time"):
            invoker.invoke(
                label="svc",
                route="predict",
                rows=[[0, 1.0, 1.0]],
                endpoints=lambda refresh, remaining: [("127.0.0.1", 9)],
                chunk_rows=None,
                timeout_s=1.0,
            )
    finally:
        invoker.close()


def test_service_metrics_merge_instances_and_report_one_that_is_down(servers):
    """scrape(): both real servers' pages in one, labelled; a closed port is up 0, no error."""
    import socket

    from prometheus_client.parser import text_string_to_metric_families

    from neve.services.metrics import scrape

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    targets = [(str(i), s.url) for i, s in enumerate(servers)] + [("9", dead)]
    page = scrape("ML.APPS.SVC", targets).decode()
    families = {f.name: f for f in text_string_to_metric_families(page)}
    up = {s.labels["instance"]: s.value for s in families["neve_instance_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "9": 0.0}
    requests = [s for s in families["neve_server_requests"].samples if s.name.endswith("_total")]
    assert {s.labels["instance"] for s in requests} == {"0", "1"}  # the tests above called both
    assert {s.labels["service"] for s in requests} == {"ML.APPS.SVC"}


def test_killed_instance_costs_no_call(servers, model_dir, tmp_path):
    """kill -9 one instance while calls run: every call still succeeds (retried elsewhere)."""
    df, rows = _rows(60, seed=2)
    expected = load_model(model_dir).call("predict", df).iloc[:, 0].to_numpy()
    invoker = ServiceInvoker()
    failures: list[BaseException] = []
    results: list[list[dict]] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                results.append(
                    invoker.invoke(
                        label="svc",
                        route="predict",
                        rows=rows,
                        endpoints=stale_source,
                        chunk_rows=10,
                        timeout_s=30,
                    )
                )
            except BaseException as exc:  # noqa: BLE001 (counted)
                failures.append(exc)

    def stale_source(refresh: bool, remaining: float):
        # Like the catalog before the supervisor notices: the dead instance is still listed.
        return [(s.host, s.port) for s in servers]

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    # Kill once calls are flowing, stop once calls have gone on after the kill and the dead
    # instance was tried: counted events, not sleeps, so a slow machine cannot skip either.
    wait_for(lambda: len(results) >= 3 or failures, 30, "calls before the kill")
    victim = servers[1]
    os.killpg(victim.pid, signal.SIGKILL)
    after_kill = len(results)
    wait_for(
        lambda: (
            (len(results) >= after_kill + 6 and invoker.totals.failed_attempts >= 1) or failures
        ),
        30,
        "calls after the kill, one of them tried on the dead instance",
    )
    stop.set()
    for t in threads:
        t.join(30)
    invoker.close()
    assert not failures, failures[:3]
    assert len(results) > 3
    # the dead instance was tried and every such attempt was retried on the live one
    assert invoker.totals.failed_attempts >= 1
    for out in results:
        np.testing.assert_allclose([next(iter(o.values())) for o in out], expected, rtol=1e-9)


def test_a_batch_that_cannot_reach_an_instance_gives_up_after_its_retries():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on: every attempt is refused
        s.bind(("127.0.0.1", 0))
        dead = ("127.0.0.1", s.getsockname()[1])
    invoker = ServiceInvoker()
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match="could not be reached after 3 attempts"):
            invoker.invoke_arrow(
                label="svc",
                route="predict",
                table=pa.table({"A": [1.0], "B": [2.0]}),
                endpoints=lambda refresh, remaining: [dead],
                chunk_rows=None,
                timeout_s=60,
                retries=2,  # SQL's MAX_BATCH_RETRIES: the router's, not a loop of the UDF's
            )
        assert time.monotonic() - started < 30  # not the whole 60 s deadline
        assert invoker.totals.failed_attempts == 3
    finally:
        invoker.close()
