"""A service on a compute pool backed by a real 3-node Ray cluster, through the normal user API.

``CREATE COMPUTE POOL ... BACKEND = 'ray' ADDRESS = '<cluster>'`` then ``create_service`` with 3
instances: they land on 3 different Ray nodes and are called from Python (``invoke``, what
``mv.run`` uses), SQL (the service function) and HTTP (the ingress of the control plane's app).
An ingress proxy runs on every node (HTTP and gRPC, revocation at once) and follows the
cluster's membership. Then one node is removed while calls keep coming: every call is answered
(a retried success at worst) and the service gets back to 3 ready instances on the nodes left. Then scale down,
suspend, auto-resume on the next call, and drop with nothing left running. Before the node goes,
a service created from the model service's specification runs beside it on the same pool
(HTTP, SQL, suspend, resume, drop).

The tests run in order on one cluster and one service (module scope). The account, model and
image repository come from this directory's ``env`` fixture (conftest.py).
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import psutil
import pytest
import waits
from svc_helpers import MODEL, REPO

from neve.compute.backends.ray_connect import import_ray, prefer_loopback

try:
    prefer_loopback()
    import_ray()
except Exception as exc:  # noqa: BLE001 - any import failure means: no Ray here
    pytest.skip(f"Ray cannot be imported here: {exc}", allow_module_level=True)

import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402
import uvicorn  # noqa: E402

from neve.compute.backends.ray_testing import LocalCluster  # noqa: E402
from neve.models import load_model  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

RAY_POOL = "RAY_POOL"
SVC = "ML.REG.RAY_SVC"
CREATE = dict(
    model=MODEL,
    version="V1",
    service_name=SVC,
    compute_pool=RAY_POOL,
    image_repo=REPO,
    max_instances=3,
    num_workers=1,
    cpu_requests="0.5",
    memory_requests="256Mi",
    ingress_enabled=True,
)


def wait_for(predicate, timeout: float, what: str):
    """The shared ``wait_for``, naming the neve servers still running when it times out."""

    def running() -> str:
        servers = [" ".join(p.cmdline())[:160] for p in _neve_servers()]
        return f"neve servers under this test process: {servers}"

    return waits.wait_for(predicate, timeout, what, interval=0.25, detail=running)


def rows_of(df) -> list[list]:
    return [[i, float(a), float(b)] for i, (a, b) in enumerate(df[["A", "B"]].to_numpy())]


def values(outputs: list[dict]) -> list[float]:
    return [next(iter(o.values())) for o in outputs]


def _neve_servers() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "neve.server" in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def server_processes(home) -> list[psutil.Process]:
    """Inference servers of the account in ``home``, started through the cluster's nodes.

    Filtered by the account directory (their --model-dir lies under it): other test modules in
    the same pytest process run servers of their own accounts.
    """
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and "neve.server" in cmd
                and str(home) in " ".join(cmd)
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class AppServer:
    """The control plane's ASGI app (REST, SQL, ingress gateway) on a free loopback port."""

    def __init__(self, account) -> None:
        from neve.control.app import create_app

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(account), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> AppServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "the control plane app to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(nodes=3).start()
    print(f"\n3-node Ray cluster started in {local.start_seconds:.1f} s at {local.address}")
    try:
        yield local
    finally:
        local.shutdown()


@pytest.fixture(scope="module")
def expected(env) -> np.ndarray:
    return load_model(env.model_dir).call("predict", env.test_df).iloc[:, 0].to_numpy()


@pytest.fixture(scope="module")
def service(env, cluster):
    env.sql(
        f"CREATE COMPUTE POOL {RAY_POOL} MIN_NODES = 1 MAX_NODES = 3 "
        "INSTANCE_FAMILY = 'CPU_X64_XS' AUTO_RESUME = TRUE "
        f"BACKEND = 'ray' ADDRESS = '{cluster.address}?cache_dir={env.home / 'node-scratch'}'"
    )
    t0 = time.perf_counter()
    row = env.account.services.create_service(env.ctx, **CREATE)
    print(f"create_service on Ray (build + 3 instances): {time.perf_counter() - t0:.1f} s")
    try:
        yield row
    finally:
        env.account.services.drop_service(env.ctx, SVC, if_exists=True)


def backend(env):
    return env.account.compute.backend_for(RAY_POOL)


def instances(env) -> list[dict]:
    return env.account.services.describe_service(env.ctx, SVC)["instances"]


def test_three_instances_run_on_three_ray_nodes(env, cluster, service):
    assert service["status"] == "RUNNING"
    assert service["current_instances"] == service["target_instances"] == 3
    rows = instances(env)
    assert [i["status"] for i in rows] == ["READY"] * 3
    nodes = [i["node"] for i in rows]
    assert len(set(nodes)) == 3, f"instances share nodes: {nodes}"
    assert set(nodes) == set(backend(env).node_names())
    assert {f"ray-{n[:8]}" for n in cluster.node_ids()} == set(nodes)
    pool = env.account.compute.describe_pool(env.ctx, RAY_POOL)
    assert pool["backend"] == "ray" and pool["address"].startswith(cluster.address + "?")
    containers = env.account.services.show_containers(env.ctx, SVC)
    assert [c["status"] for c in containers] == ["READY"] * 3


def test_called_from_python_sql_and_http(env, service, expected):
    services = env.account.services
    # Python: what mv.run(..., service_name=...) sends through the control plane
    out = services.invoke(env.ctx, SVC, "predict", rows_of(env.test_df))
    np.testing.assert_allclose(values(out), expected, rtol=1e-9)
    # SQL: the service function, vectorized over a table
    env.account.sql.write_table(
        env.ctx, "ray_features", pa.table({"A": env.test_df.A, "B": env.test_df.B})
    )
    result = env.sql("SELECT ray_svc_predict(a, b) AS p FROM ray_features")
    np.testing.assert_allclose(result.arrow.column("p").to_numpy(), expected, rtol=1e-9)
    # HTTP: the ingress endpoint, with a token
    token = env.account.security.local_admin_token()
    with AppServer(env.account) as app:
        resp = httpx.post(
            f"{app.url}/svc/ml.reg.ray_svc/predict",
            json={"data": rows_of(env.test_df)},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    assert resp.status_code == 200, resp.text
    got = [next(iter(r[1].values())) for r in resp.json()["data"]]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_instance_logs_come_back(env, service):
    log = env.account.services.get_service_logs(env.ctx, SVC, 2, "model-inference", 200)
    assert "neve.server: serving" in log


def _node_proxies(env, url: str) -> list[dict]:
    from neve.dataplane.proxies import NodeProxies

    return NodeProxies(
        env.account.settings, url, env.account.compute.ensure_ingress_proxies
    ).ensure()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/svc/x/predict", timeout=2).status_code == 401
    except httpx.HTTPError:
        return False


def test_an_ingress_proxy_on_every_node(env, cluster, service, expected):
    """One proxy per Ray node (what the daemon's node_proxies job keeps), each serving the
    account's services over HTTP and gRPC; a revocation reaches them before it returns."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    token = env.account.security.local_admin_token()
    with AppServer(env.account) as app:
        nodes = _node_proxies(env, app.url)
        assert {n["node"] for n in nodes} == {f"ray-{i[:8]}" for i in cluster.node_ids()}
        assert {n["pool"] for n in nodes} == {RAY_POOL} and len({n["url"] for n in nodes}) == 3
        assert _node_proxies(env, app.url) == nodes  # a second pass keeps them
        for node in nodes:
            resp = httpx.post(
                f"{node['url']}/svc/ml.reg.ray_svc/predict",
                json={"data": rows_of(env.test_df)},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert resp.status_code == 200, resp.text
            got = [next(iter(r[1].values())) for r in resp.json()["data"]]
            np.testing.assert_allclose(got, expected, rtol=1e-9)
        client = grpcclient.InferenceServerClient(url=nodes[0]["grpc_address"])
        try:
            inputs = []
            for name in ("A", "B"):
                t = grpcclient.InferInput(name, [len(env.test_df)], "FP64")
                t.set_data_from_numpy(env.test_df[name].to_numpy(dtype=np.float64))
                inputs.append(t)
            result = client.infer(SVC, inputs, headers={"authorization": f"Bearer {token}"})
            [output] = result.get_response().outputs
            np.testing.assert_allclose(result.as_numpy(output.name), expected, rtol=1e-9)
        finally:
            client.close()
        # a token revoked on the control plane is refused by every node's proxy at once
        pat = env.account.security.create_token(env.ctx, "node_caller")["token"]
        auth = {"Authorization": f"Bearer {pat}"}
        body = {"data": rows_of(env.test_df.head(2))}
        for node in nodes:
            ok = httpx.post(f"{node['url']}/svc/ml.reg.ray_svc/predict", json=body, headers=auth)
            assert ok.status_code == 200, ok.text
        env.account.security.revoke_token(env.ctx, "node_caller")
        for node in nodes:
            no = httpx.post(f"{node['url']}/svc/ml.reg.ray_svc/predict", json=body, headers=auth)
            assert no.status_code == 401 and "revoked" in no.json()["message"], no.text


COPY = "ML.REG.RAY_COPY"


def test_custom_service_from_the_spec_on_ray(env, service, expected):
    """The model service's specification, copied unchanged, as a service of its own on the Ray
    pool: called over the ingress (its OpenAPI lists the same method) and from SQL, suspended
    (its actor goes), resumed, dropped; the model service's 3 instances keep running."""
    services = env.account.services
    spec = services.describe_service(env.ctx, SVC)["spec"]
    env.sql(
        f"CREATE SERVICE {COPY} IN COMPUTE POOL {RAY_POOL} FROM SPECIFICATION $$\n{spec}$$ "
        "MIN_INSTANCES = 1 MAX_INSTANCES = 1"
    )
    row = services.describe_service(env.ctx, COPY)
    assert (row["status"], row["kind"], row["current_instances"]) == ("RUNNING", "CUSTOM", 1)
    assert row["instances"][0]["node"] in backend(env).node_names()
    assert len(_actors(backend(env), COPY)) == 1
    # HTTP: its ingress endpoint, with a token
    headers = {"Authorization": f"Bearer {env.account.security.local_admin_token()}"}
    with AppServer(env.account) as app:
        resp = httpx.post(
            f"{app.url}/svc/ml.reg.ray_copy/predict",
            json={"data": rows_of(env.test_df)},
            headers=headers,
            timeout=30,
        )
        doc = httpx.get(f"{app.url}/svc/ml.reg.ray_copy/openapi.json", headers=headers)
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose([next(iter(r[1].values())) for r in resp.json()["data"]], expected)
    assert doc.status_code == 200 and set(doc.json()["paths"]) == {"/predict"}
    # SQL: a function on its endpoint
    env.sql(
        "CREATE FUNCTION ml.reg.ray_copy_predict(a FLOAT, b FLOAT) RETURNS FLOAT "
        f"SERVICE = {COPY} ENDPOINT = inference AS '/predict'"
    )
    env.account.sql.write_table(
        env.ctx, "ray_copy_features", pa.table({"A": env.test_df.A, "B": env.test_df.B})
    )
    query = "SELECT ray_copy_predict(a, b) AS p FROM ray_copy_features"
    np.testing.assert_allclose(env.sql(query).arrow.column("p").to_numpy(), expected, rtol=1e-9)
    # suspend: its actor and server go, the model service's stay
    env.sql(f"ALTER SERVICE {COPY} SUSPEND")
    assert services.describe_service(env.ctx, COPY)["status"] == "SUSPENDED"
    wait_for(lambda: not _actors(backend(env), COPY), 60, "the copy's actor to go")
    wait_for(lambda: len(server_processes(env.home)) == 3, 60, "the copy's server to stop")
    # resume: a new instance on a Ray node, called again
    env.sql(f"ALTER SERVICE {COPY} RESUME")
    wait_for(
        lambda: services.describe_service(env.ctx, COPY)["status"] == "RUNNING",
        120,
        "the copy to run again",
    )
    assert len(_actors(backend(env), COPY)) == 1
    np.testing.assert_allclose(env.sql(query).arrow.column("p").to_numpy(), expected, rtol=1e-9)
    # drop: nothing of it is left running
    env.sql(f"DROP SERVICE {COPY}")
    wait_for(lambda: not _actors(backend(env), COPY), 60, "the copy's actor to go")
    wait_for(lambda: len(server_processes(env.home)) == 3, 60, "the copy's server to stop")
    assert services.describe_service(env.ctx, SVC)["current_instances"] == 3


def test_removing_a_node_loses_no_call_and_the_service_recovers(env, cluster, service, expected):
    services = env.account.services
    before = instances(env)
    victim = next(
        i for i in before if cluster.worker_by_id(_node_id(cluster, i["node"])) is not None
    )
    answered, failures = [], []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                out = services.invoke(env.ctx, SVC, "predict", rows_of(env.test_df), timeout_s=60)
                np.testing.assert_allclose(values(out), expected, rtol=1e-9)
                answered.append(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                failures.append(repr(exc))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answered) >= 4, 30, "calls before the node goes")
    t0 = time.monotonic()
    cluster.remove_node(cluster.worker_by_id(_node_id(cluster, victim["node"])))

    def recovered() -> bool:
        rows = instances(env)
        return (
            len(rows) == 3
            and all(i["status"] == "READY" for i in rows)
            and victim["node"] not in {i["node"] for i in rows}
        )

    # Normally ~15 s. On a loaded 2-core machine one placement attempt can time out (Ray placed
    # the actor but its worker did not answer within the 60 s placement timeout) and the
    # supervisor's next restart places it: room for two attempts.
    wait_for(recovered, 240, "3 ready instances on the nodes left")
    recovery = time.monotonic() - t0
    calls_during = sum(1 for t in answered if t >= t0)
    wait_for(lambda: sum(1 for t in answered if t >= t0 + recovery) >= 4, 30, "calls after")
    stop.set()
    for t in threads:
        t.join(70)
    print(
        f"node removed: 3 ready instances again after {recovery:.1f} s; "
        f"{calls_during} calls answered meanwhile, {len(failures)} failed"
    )
    assert failures == []
    after = instances(env)
    replaced = next(i for i in after if i["instance_id"] == victim["instance_id"])
    assert replaced["restart_count"] >= 1
    assert {i["node"] for i in after} <= set(backend(env).node_names())
    events = services.get_service_logs(env.ctx, SVC, 0, "events", 200)
    assert f"instance {victim['instance_id']} failed" in events


def test_node_proxies_follow_the_cluster(env, cluster):
    """The removed node's proxy is gone from the next pass; a node that joins gets one; a
    control plane at a new address is told (retarget); the cluster's last pool takes them."""
    with AppServer(env.account) as app:  # a new address: the proxies are told it
        nodes = _node_proxies(env, app.url)
        assert {n["node"] for n in nodes} == {f"ray-{i[:8]}" for i in cluster.node_ids()}
        assert {n["control_url"] for n in nodes} == {app.url}
        health = httpx.get(nodes[0]["admin_url"] + "/_neve/health", timeout=5).json()
        assert health["control_url"] == app.url
        added = cluster.add_node()
        try:
            grown = _node_proxies(env, app.url)
            assert f"ray-{added.node_id[:8]}" in {n["node"] for n in grown}
            assert len(grown) == len(nodes) + 1
            assert all(_answers(n["url"]) for n in grown)
        finally:
            cluster.remove_node(added)
        wait_for(lambda: len(_node_proxies(env, app.url)) == len(nodes), 60, "its proxy gone")
    backend(env).stop_ingress_proxies()  # what DROP COMPUTE POOL does for the last pool
    wait_for(lambda: not any(_answers(n["url"]) for n in nodes), 60, "the node proxies stopped")


def test_scale_down_suspend_and_auto_resume(env, service, expected):
    services = env.account.services
    assert len(server_processes(env.home)) == 3  # the filter sees this service's servers
    env.sql(f"ALTER SERVICE {SVC} SET MIN_INSTANCES = 1 MAX_INSTANCES = 1")
    wait_for(lambda: len(instances(env)) == 1, 60, "the service to scale down to 1 instance")
    wait_for(lambda: len(server_processes(env.home)) == 1, 90, "2 servers to stop")
    env.sql(f"ALTER SERVICE {SVC} SUSPEND")
    assert services.describe_service(env.ctx, SVC)["status"] == "SUSPENDED"
    wait_for(lambda: not server_processes(env.home), 90, "the last server to stop")
    assert _actors(backend(env)) == []
    # the next call resumes the service and waits for it
    out = services.invoke(env.ctx, SVC, "predict", rows_of(env.test_df), timeout_s=180)
    np.testing.assert_allclose(values(out), expected, rtol=1e-9)
    assert services.describe_service(env.ctx, SVC)["status"] == "RUNNING"
    assert len(_actors(backend(env))) == 1


def test_drop_leaves_no_actor_and_no_process(env, service):
    ray_backend = backend(env)
    env.account.services.drop_service(env.ctx, SVC)
    wait_for(lambda: not server_processes(env.home), 90, "the servers to stop")
    assert _actors(ray_backend) == []


def _node_id(cluster, node_name: str) -> str:
    return next(n for n in cluster.node_ids() if node_name == f"ray-{n[:8]}")


def _actors(ray_backend, service: str | None = None) -> list[str]:
    """The pool's named actors (``<service>/<instance>/<suffix>``), of one service if named."""
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == ray_backend.namespace
        and (service is None or a["name"].startswith(service + "/"))
    ]
