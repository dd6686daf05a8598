"""Ingress proxies on Ray nodes: a real daemon with a compute pool on a real 2-node Ray cluster
keeps one proxy on every node (so ingress capacity grows with the cluster), each one serving
HTTP and V2 gRPC for the account's services, revocations reaching them at once, a node added
getting its proxy and a node removed losing it, and dropping the pool taking them away."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
from account_processes import daemon_session
from waits import wait_for

from neve.compute.backends.ray_connect import import_ray, prefer_loopback

try:
    prefer_loopback()
    import_ray()
except Exception as exc:  # noqa: BLE001 - any import failure means: no Ray here
    pytest.skip(f"Ray cannot be imported here: {exc}", allow_module_level=True)

from neve.compute.backends.ray_testing import LocalCluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

SVC = "ML.REG.ON_NODES"


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(nodes=2).start()
    try:
        yield local
    finally:
        local.shutdown()


@pytest.fixture(scope="module")
def session(tmp_path_factory, cluster):
    home = tmp_path_factory.mktemp("node-proxies-home")
    settings = "service_supervisor_interval_secs = 0.3\ningress_proxies = 1\n"
    with daemon_session(home, settings=settings) as sess:
        sess.sql(
            "CREATE COMPUTE POOL ray_nodes MIN_NODES = 1 MAX_NODES = 3 "
            "INSTANCE_FAMILY = 'CPU_X64_XS' BACKEND = 'ray' "
            f"ADDRESS = '{cluster.address}?cache_dir={home / 'node-scratch'}'"
        ).collect()
        yield sess


@pytest.fixture(scope="module")
def service(session):
    from sklearn.linear_model import LinearRegression

    import neve

    rng = np.random.default_rng(7)
    train = pd.DataFrame({"A": rng.normal(size=60), "B": rng.normal(size=60)})
    reg = neve.Registry(session, database_name="ml", schema_name="reg")
    mv = reg.log_model(
        LinearRegression().fit(train, 3 * train.A - train.B),
        model_name="lin_nodes",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=train,
    )
    session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.reg.images").collect()
    mv.create_service(
        service_name="on_nodes",
        service_compute_pool="ray_nodes",
        image_repo="images",
        max_instances=1,
        num_workers=1,
        cpu_requests="0.5",
        memory_requests="256Mi",
        ingress_enabled=True,
    )
    return mv, train


def _nodes(session, count: int) -> list[dict] | None:
    nodes = session.ingress()["nodes"]
    if len(nodes) != count:
        return None
    for node in nodes:
        try:
            if httpx.get(node["url"] + "/svc/x/predict", timeout=2).status_code != 401:
                return None  # up means: it answers, and asks who is calling
        except httpx.HTTPError:
            return None
    return nodes


def _body(frame: pd.DataFrame) -> dict:
    return {"data": [[i, float(a), float(b)] for i, (a, b) in enumerate(frame.to_numpy())]}


def test_one_proxy_per_node_serves_every_service(session, service, cluster):
    nodes = wait_for(lambda: _nodes(session, 2), timeout=120, what="a proxy on each Ray node")
    assert {n["node"] for n in nodes} == {f"ray-{i[:8]}" for i in cluster.node_ids()}
    assert {n["pool"] for n in nodes} == {"RAY_NODES"}
    assert len({n["url"] for n in nodes}) == 2  # each node its own address (here: ports)
    mv, train = service
    frame = train.head(6)
    expected = mv.run(frame, function_name="predict")
    token = session.create_token("node_caller")
    auth = {"Authorization": f"Bearer {token}"}
    for node in nodes:
        resp = httpx.post(f"{node['url']}/svc/{SVC}/predict", json=_body(frame), headers=auth)
        assert resp.status_code == 200, resp.text
        got = [next(iter(row[1].values())) for row in resp.json()["data"]]
        np.testing.assert_allclose(got, expected.iloc[:, -1])

    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(url=nodes[0]["grpc_address"])
    try:
        inputs = []
        for name in ("A", "B"):
            t = grpcclient.InferInput(name, [len(frame)], "FP64")
            t.set_data_from_numpy(frame[name].to_numpy(dtype=np.float64))
            inputs.append(t)
        result = client.infer(SVC, inputs, headers={"authorization": f"Bearer {token}"})
        [output] = result.get_response().outputs
        np.testing.assert_allclose(result.as_numpy(output.name), expected[output.name])
    finally:
        client.close()

    # a revocation reaches the node proxies before the revoking call returns
    session._transport.call("DELETE", "/api/v1/tokens/node_caller")
    for node in nodes:
        resp = httpx.post(f"{node['url']}/svc/{SVC}/predict", json=_body(frame), headers=auth)
        assert resp.status_code == 401 and "revoked" in resp.json()["message"], resp.text


def test_nodes_joining_and_leaving_gain_and_lose_their_proxy(session, service, cluster):
    wait_for(lambda: _nodes(session, 2), timeout=120, what="a proxy on each Ray node")
    added = cluster.add_node()
    nodes = wait_for(lambda: _nodes(session, 3), timeout=120, what="a proxy on the new node")
    assert f"ray-{added.node_id[:8]}" in {n["node"] for n in nodes}
    cluster.remove_node(added)
    wait_for(lambda: _nodes(session, 2), timeout=120, what="the removed node's proxy gone")


def test_dropping_the_pool_takes_its_node_proxies(session, service):
    nodes = wait_for(lambda: _nodes(session, 2), timeout=120, what="a proxy on each Ray node")
    session.sql(f"DROP SERVICE {SVC}").collect()
    session.sql("DROP COMPUTE POOL ray_nodes").collect()
    wait_for(lambda: session.ingress()["nodes"] == [], timeout=60, what="no node proxies listed")

    def refused() -> bool:
        for node in nodes:
            try:
                httpx.get(node["url"] + "/svc/x/predict", timeout=2)
                return False
            except httpx.HTTPError:
                continue
        return True

    wait_for(refused, timeout=60, what="the node proxies stopped")
