"""Ingress proxies as their own processes: a real daemon starts them, calls keep going through
``neve server restart``, the next daemon re-adopts them, a revocation reaches them at once, a
suspended service is woken through them, and ``ingress_url`` names their port."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from account_processes import daemon_session
from waits import wait_for

from neve.dataplane.proxies import healthy, ingress_info, proxy_records

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SVC = "ML.REG.PROXIED"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    settings = "service_supervisor_interval_secs = 0.3\ningress_proxies = 2\n"
    with daemon_session(tmp_path_factory.mktemp("proxy-home"), settings=settings) as sess:
        yield sess


@pytest.fixture(scope="module")
def service(session):
    from sklearn.linear_model import LinearRegression

    import neve

    rng = np.random.default_rng(5)
    train = pd.DataFrame({"A": rng.normal(size=100), "B": rng.normal(size=100)})
    reg = neve.Registry(session, database_name="ml", schema_name="reg")
    mv = reg.log_model(
        LinearRegression().fit(train, 2 * train.A + train.B),
        model_name="lin",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=train,
    )
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS proxy_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'"
    ).collect()
    session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.reg.images").collect()
    mv.create_service(
        service_name="proxied",
        service_compute_pool="proxy_pool",
        image_repo="images",
        max_instances=1,
        num_workers=1,
        ingress_enabled=True,
    )
    return mv, train


def _body(frame: pd.DataFrame) -> dict:
    return {"data": [[i, float(a), float(b)] for i, (a, b) in enumerate(frame.to_numpy())]}


def _proxies_up(home, count: int):
    records = [r for r in proxy_records(home) if healthy(r, home)]
    return records if len(records) == count and ingress_info(home) else None


def test_ingress_url_is_the_proxies_port(session, service):
    home = session.account_home
    records = wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    info = ingress_info(home)
    assert {r.port for r in records} == {info["port"]}  # one port, shared
    assert len({r.pid for r in records}) == 2
    [endpoint] = session.sql(f"SHOW ENDPOINTS IN SERVICE {SVC}").collect()
    assert endpoint.ingress_url == f"{info['url']}/svc/{SVC}"
    assert str(info["port"]) not in session.url  # not the control plane's port
    token = session.create_token("proxy_url")
    mv, train = service
    resp = httpx.post(
        f"{endpoint.ingress_url}/predict",
        json=_body(train.head(5)),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 5


def test_calls_go_on_through_a_control_plane_restart(session, service):
    home = session.account_home
    before = wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    url = ingress_info(home)["url"] + f"/svc/{SVC}/predict"
    token = session.create_token("through_restart")
    body = _body(service[1].head(3))
    results: list[tuple[float, int]] = []
    refused: list[str] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            while not stop.is_set():
                try:
                    resp = client.post(url, json=body)
                    status = resp.status_code
                    if status != 200:
                        refused.append(resp.text)
                except httpx.HTTPError as exc:
                    status = -1  # a lost call: the transport failed
                    refused.append(repr(exc))
                results.append((time.monotonic(), status))
                time.sleep(0.01)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        wait_for(lambda: len(results) >= 20, timeout=30, what="calls before the restart")
        down_from = time.monotonic()
        restart = subprocess.run(
            [sys.executable, "-m", "neve.cli.main", "--home", str(home), "server", "restart"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        up_at = time.monotonic()
        assert restart.returncode == 0, restart.stdout + restart.stderr
        wait_for(
            lambda: sum(1 for t, _ in results if t > up_at) >= 20,
            timeout=30,
            what="calls after the restart",
        )
    finally:
        stop.set()
        caller.join(30)
    during = [s for t, s in results if down_from <= t <= up_at]
    assert during, "no call was made while the control plane restarted"
    assert {s for _, s in results} == {200}, refused[:5]
    # the new daemon adopted the same proxies (same processes, same port)
    after = wait_for(lambda: _proxies_up(home, 2), timeout=60, what="proxies after restart")
    assert [r.pid for r in after] == [r.pid for r in before]
    assert ingress_info(home)["port"] == before[0].port


def test_a_revoked_token_is_refused_at_once_by_the_proxies(session, service):
    home = session.account_home
    wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    url = ingress_info(home)["url"] + f"/svc/{SVC}/predict"
    token = session.create_token("soon_revoked")
    body = _body(service[1].head(2))
    headers = {"Authorization": f"Bearer {token}"}
    # warm both proxies' caches (connections spread over them; a few calls reach each)
    for _ in range(10):
        with httpx.Client() as client:  # a new connection each time
            assert client.post(url, json=body, headers=headers).status_code == 200
    session._transport.call("DELETE", "/api/v1/tokens/soon_revoked")
    for _ in range(10):
        with httpx.Client() as client:
            resp = client.post(url, json=body, headers=headers)
        assert resp.status_code == 401 and "revoked" in resp.json()["message"], resp.text


def test_a_suspended_service_is_woken_through_a_proxy(session, service):
    home = session.account_home
    wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    session.sql(f"ALTER SERVICE {SVC} SUSPEND").collect()

    def suspended() -> bool:
        rows = session.sql(f"DESCRIBE SERVICE {SVC}").collect()
        return rows[0].status == "SUSPENDED"

    wait_for(suspended, timeout=60, what="the service suspended")
    token = session.create_token("waker")
    resp = httpx.post(
        ingress_info(home)["url"] + f"/svc/{SVC}/predict",
        json=_body(service[1].head(4)),
        headers={"Authorization": f"Bearer {token}"},
        timeout=180,
    )
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 4
    assert session.sql(f"DESCRIBE SERVICE {SVC}").collect()[0].status == "RUNNING"


def test_mv_run_sends_its_rows_through_the_proxies(session, service):
    from neve.dataplane.client import DataPlaneClient

    home = session.account_home
    wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    mv, train = service
    test = train.head(40)
    remote = mv.run(test, function_name="predict", service_name="proxied")
    pd.testing.assert_frame_equal(remote, mv.run(test, function_name="predict"))
    # the look-up names the proxies: the rows above went there, not to the control plane
    found = DataPlaneClient(session._transport.call, dict).lookup(SVC, "predict", 30)
    assert found.ingress_url == f"{ingress_info(home)['url']}/svc/{SVC}"
    assert found.instances and found.route == "predict"


# -------------------------------------------------------------- V2 gRPC through the proxies


def _grpc_inputs(grpcclient, frame: pd.DataFrame) -> list:
    inputs = []
    for name in ("A", "B"):
        t = grpcclient.InferInput(name, [len(frame)], "FP64")
        t.set_data_from_numpy(frame[name].to_numpy(dtype=np.float64))
        inputs.append(t)
    return inputs


def test_v2_grpc_through_the_proxies(session, service):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    home = session.account_home
    records = wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    info = ingress_info(home)
    assert {r.grpc_port for r in records} == {info["grpc_port"]}  # one gRPC port, shared
    assert session.ingress() == {
        "url": info["url"],
        "grpc_address": info["grpc_address"],
        "nodes": [],
    }
    mv, train = service
    frame = train.head(7)
    in_process = mv.run(frame, function_name="predict")
    token = session.create_token("grpc_caller")
    auth = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url=info["grpc_address"])
    try:
        assert client.is_server_live()
        meta = client.get_model_metadata(SVC, headers=auth, as_json=True)
        assert [i["name"] for i in meta["inputs"]] == ["A", "B"]
        in_schema = {**auth, "x-neve-database": "ml", "x-neve-schema": "reg"}
        for model_name, headers in (
            (SVC, auth),
            (f"{SVC}/predict", auth),
            ("proxied", in_schema),  # a bare name in the caller's schema, as over HTTP
        ):
            result = client.infer(model_name, _grpc_inputs(grpcclient, frame), headers=headers)
            [output] = result.get_response().outputs
            np.testing.assert_allclose(result.as_numpy(output.name), in_process[output.name])
        # what a caller gets wrong is a status naming it
        cases = [
            ({}, SVC, "StatusCode.UNAUTHENTICATED", "authorization"),
            (auth, "ML.REG.NO_SUCH", "StatusCode.NOT_FOUND", "NO_SUCH"),
            (auth, f"{SVC}/nope", "StatusCode.NOT_FOUND", "nope"),
            ({"authorization": "Bearer nvp_wrong"}, SVC, "StatusCode.UNAUTHENTICATED", ""),
        ]
        for headers, model_name, status, fragment in cases:
            with pytest.raises(InferenceServerException) as err:
                client.infer(model_name, _grpc_inputs(grpcclient, frame), headers=headers)
            assert err.value.status() == status, (model_name, err.value.message())
            assert fragment.lower() in err.value.message().lower()
    finally:
        client.close()


def test_v2_grpc_wakes_a_suspended_service(session, service):
    grpcclient = pytest.importorskip("tritonclient.grpc")

    home = session.account_home
    wait_for(lambda: _proxies_up(home, 2), timeout=60, what="two ingress proxies")
    session.sql(f"ALTER SERVICE {SVC} SUSPEND").collect()
    wait_for(
        lambda: session.sql(f"DESCRIBE SERVICE {SVC}").collect()[0].status == "SUSPENDED",
        timeout=60,
        what="the service suspended",
    )
    token = session.create_token("grpc_waker")
    client = grpcclient.InferenceServerClient(url=ingress_info(home)["grpc_address"])
    try:
        result = client.infer(
            SVC,
            _grpc_inputs(grpcclient, service[1].head(3)),
            headers={"authorization": f"Bearer {token}"},
            client_timeout=180,
        )
    finally:
        client.close()
    assert result.as_numpy(result.get_response().outputs[0].name).shape == (3,)
    assert session.sql(f"DESCRIBE SERVICE {SVC}").collect()[0].status == "RUNNING"
