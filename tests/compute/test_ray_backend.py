"""The Ray backend on a real 3-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

Instances are detached Ray actors, each running a real ``python -m neve.server`` on its node;
the tests check placement (SPREAD over nodes, family labels), serving, crash and node-loss
detection, reattaching from a new backend object (a restarted control plane), stopping without
leftovers, and shipping the environment to nodes that do not share our files. The tests run in
order on one cluster (module scope) to pay its start-up once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from waits import wait_for

from neve.compute.backends.ray_connect import import_ray, prefer_loopback

try:
    prefer_loopback()
    import_ray()
except Exception as exc:  # noqa: BLE001 - any import failure means: no Ray here
    pytest.skip(f"Ray cannot be imported here: {exc}", allow_module_level=True)

import httpx  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

from neve.compute.backends.base import InstanceHandle, InstanceSpec, PoolInfo  # noqa: E402
from neve.compute.backends.ray import RayBackend  # noqa: E402
from neve.compute.backends.ray_cluster import FAMILY_LABEL, raylet_answers  # noqa: E402
from neve.compute.backends.ray_connect import (  # noqa: E402
    RayAddress,
    ensure_local_cluster,
    stop_local_cluster,
)
from neve.compute.backends.ray_testing import LocalCluster  # noqa: E402
from neve.compute.families import instance_family  # noqa: E402
from neve.compute.resources import ResourceRequest  # noqa: E402
from neve.errors import (  # noqa: E402
    InvalidArgumentError,
    NotSupportedError,
    ResourceError,
    ServiceUnavailableError,
)
from neve.models import load_model, save_model  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

VENV_PYTHON = str(Path(sys.executable).absolute())
ROWS = [[0, 1.0, 2.0], [1, -3.0, 0.5], [2, 0.25, 0.25]]


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(nodes=3, client_server=True).start()
    print(f"\n3-node Ray cluster started in {local.start_seconds:.1f} s at {local.address}")
    try:
        yield local
    finally:
        local.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-backend")


@pytest.fixture(scope="module")
def model_dir(work: Path) -> Path:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.random(32), "b": rng.random(32)})
    path = work / "model"
    save_model(LinearRegression().fit(x, x["a"] + 2 * x["b"]), path, sample_input=x)
    return path


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[float]:
    df = pd.DataFrame([r[1:] for r in ROWS], columns=["a", "b"])
    return load_model(model_dir).call("predict", df).iloc[:, 0].tolist()


def make_backend(
    work: Path, address: str, *, family: str = "CPU_X64_XS", name: str = "RAY_POOL"
) -> RayBackend:
    if "://" not in address.split("?")[0] and "cache_dir=" not in address:
        # keep the nodes' scratch space (port files, logs, unpacked trees) in this test's dir
        address += ("&" if "?" in address else "?") + f"cache_dir={work / 'node-scratch'}"
    pool = PoolInfo(
        name=name,
        family=instance_family(family),
        backend="ray",
        address=address,
        runs_dir=work / "run" / "pools" / name,
        nodes=lambda: [],
    )
    return RayBackend(pool)


def spec_for(work: Path, model_dir: Path, index: int, **overrides) -> InstanceSpec:
    fields = dict(
        python=VENV_PYTHON,
        model_dir=str(model_dir),
        service="ML.REG.RAY_SVC",
        instance_index=index,
        log_path=str(work / "logs" / f"instance-{index}.log"),
        request=ResourceRequest(cpu=0.5, memory_gb=0.25),
        num_workers=1,
        start_timeout_s=60.0,
    )
    fields.update(overrides)
    return InstanceSpec(**fields)


def predict(handle: InstanceHandle, timeout: float = 10.0) -> list[float]:
    resp = httpx.post(f"{handle.url}/predict", json={"data": ROWS}, timeout=timeout)
    assert resp.status_code == 200, resp.text
    return [next(iter(row[1].values())) for row in resp.json()["data"]]


def group_alive(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def named_actors(namespace: str) -> list[str]:
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace
    ]


# -- addresses --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://head:8265", "must be 'auto', 'ray://host:port'"),
        ("head", "must name a host and a port"),
        ("ray://head:99999", "must name a host and a port"),
        ("head:6379?ship=sometimes", "ship='sometimes' must be one of auto, always"),
        ("head:6379?colour=blue", "unknown ADDRESS option(s) colour"),
        ("head:6379?ship_limit_mb=lots", "must be numbers"),
    ],
)
def test_bad_addresses_are_refused_naming_the_pool(work, address, message):
    with pytest.raises(InvalidArgumentError) as info:
        make_backend(work, address, name="BAD_POOL")
    assert "compute pool BAD_POOL" in info.value.message
    assert message in info.value.message


def test_address_forms_parse():
    auto = RayAddress.parse(None, pool="P")
    assert (auto.kind, auto.target, auto.loopback) == ("auto", "auto", True)
    client = RayAddress.parse("'ray://10.0.0.5:10001?ship=always&cache_dir=/data/n'", pool="P")
    assert (client.kind, client.host, client.ship, client.cache_dir) == (
        "client",
        "10.0.0.5",
        "always",
        "/data/n",
    )
    gcs = RayAddress.parse("localhost:6379", pool="P")
    assert (gcs.kind, gcs.target, gcs.loopback) == ("gcs", "127.0.0.1:6379", True)
    # what CREATE COMPUTE POOL can call before storing the pool
    assert RayBackend.check_address("'ray://head:10001?ship=always'", pool="P") == (
        "ray://head:10001?ship=always"
    )
    assert RayBackend.check_address(None, pool="P") == "auto"
    with pytest.raises(InvalidArgumentError, match="compute pool P"):
        RayBackend.check_address("ray://head", pool="P")


# -- placement and serving --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spread(cluster, work, model_dir):
    """Three instances started on the 3-node cluster (shared by the tests below, in order)."""
    backend = make_backend(work, cluster.address)
    t0 = time.monotonic()
    with ThreadPoolExecutor(3) as pool:  # the backend is thread-safe; starts overlap
        handles = list(
            pool.map(lambda i: backend.start_instance(spec_for(work, model_dir, i)), range(3))
        )
    started = time.monotonic() - t0
    for h in handles:
        backend.wait_ready(h, timeout=120)
    print(f"3 instances listening after {started:.1f} s, ready after {time.monotonic() - t0:.1f} s")
    yield backend, handles
    for h in handles:
        backend.stop_instance(h, timeout=5)
    backend.close()


def test_instances_spread_over_nodes_and_serve_the_model(spread, cluster, work, expected):
    backend, handles = spread
    nodes = [h.node for h in handles]
    assert len(set(nodes)) == 3, f"SPREAD put instances on {nodes}"
    assert set(nodes) == set(backend.node_names())
    assert {h.backend_ref["node_id"] for h in handles} == set(cluster.node_ids())
    for h in handles:
        assert h.backend == "ray" and h.host == "127.0.0.1" and h.port > 0
        np.testing.assert_allclose(predict(h), expected, rtol=1e-9)
        assert backend.is_alive(h)
        # One machine: the node sees our files, so the image runs in place and the server
        # writes straight into the instance log the services manager gave.
        info = backend.instance_info(h)
        assert info["python"] == VENV_PYTHON and info["shared_logs"] is True
        assert info["log_path"] == h.backend_ref["log_path"]
    log_text = Path(handles[0].backend_ref["log_path"]).read_text()
    assert "neve.server: serving" in log_text
    # the second port: V2 gRPC, recorded in the handle and named by the instance
    for h in handles:
        grpc_port = h.backend_ref["grpc_port"]
        assert grpc_port > 0 and grpc_port != h.port
        ready = httpx.get(f"{h.url}/ready", timeout=10).json()
        assert ready["grpc_port"] == grpc_port
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(
        url=f"127.0.0.1:{handles[0].backend_ref['grpc_port']}"
    )
    try:
        assert client.is_server_ready()
        meta = client.get_model_metadata("predict", as_json=True)
        inputs = []
        for k, tensor in enumerate(meta["inputs"]):
            t = grpcclient.InferInput(tensor["name"], [len(ROWS)], tensor["datatype"])
            t.set_data_from_numpy(np.array([row[k + 1] for row in ROWS], dtype=np.float64))
            inputs.append(t)
        result = client.infer("predict", inputs)
        [output] = result.get_response().outputs
        np.testing.assert_allclose(result.as_numpy(output.name), expected, rtol=1e-9)
    finally:
        client.close()
    # the handle survives the catalog: JSON round trip
    again = InstanceHandle.from_json(handles[0].to_json())
    assert again == handles[0]


def test_a_second_cluster_in_one_control_plane_is_refused(spread, work):
    other = make_backend(work, "127.0.0.1:1", name="OTHER_POOL")
    with pytest.raises(NotSupportedError, match="one Ray cluster per control plane"):
        other.node_names()


def test_requests_no_node_can_hold_are_refused_at_once(spread, work, model_dir):
    backend, _handles = spread
    before = set(named_actors(backend.namespace))
    t0 = time.monotonic()
    with pytest.raises(ResourceError) as info:
        backend.start_instance(
            spec_for(work, model_dir, 9, request=ResourceRequest(cpu=4, memory_gb=0.25))
        )
    assert "requests 4 vCPU" in info.value.message and "1 CPU" in info.value.message
    with pytest.raises(ResourceError, match="1 GPU"):
        backend.start_instance(
            spec_for(work, model_dir, 9, request=ResourceRequest(cpu=0.5, gpu=1))
        )
    assert time.monotonic() - t0 < 10
    assert set(named_actors(backend.namespace)) == before  # nothing left half-started


def test_a_model_that_does_not_load_fails_with_its_log(spread, work):
    backend, _handles = spread
    broken = work / "broken-model"
    broken.mkdir(exist_ok=True)
    (broken / "manifest.json").write_text("{not json")
    before = set(named_actors(backend.namespace))
    handle = None
    with pytest.raises(ServiceUnavailableError) as info:
        # It fails while starting or, once it listens, before it is ready: either way with why.
        handle = backend.start_instance(spec_for(work, broken, 8))
        backend.wait_ready(handle, timeout=60)
    assert "exited" in info.value.message and "instance-8.log" in info.value.message
    if handle is not None:
        backend.stop_instance(handle, timeout=2)
    assert set(named_actors(backend.namespace)) == before


def test_restarted_control_plane_reattaches_by_name(spread, work):
    backend, handles = spread
    fresh = make_backend(work, backend.pool.address)  # what a restarted daemon builds
    stored = InstanceHandle.from_json(handles[1].to_json())
    assert fresh.is_alive(stored)
    info = fresh.instance_info(stored)
    assert info["port"] == stored.port and info["pid"] == stored.pid
    fresh.close()


def test_crashed_server_is_dead_and_stop_leaves_nothing(spread):
    backend, handles = spread
    victim = handles[0]
    os.kill(victim.pid, signal.SIGKILL)  # the server's supervisor dies (a crash)
    wait_for(lambda: not backend.is_alive(victim), 15, "the crash to be seen")
    assert victim.backend_ref["actor_name"] in named_actors(backend.namespace)
    backend.stop_instance(victim, timeout=5)
    assert victim.backend_ref["actor_name"] not in named_actors(backend.namespace)
    wait_for(lambda: not group_alive(victim.pid), 15, "the server's workers to exit")
    assert not backend.is_alive(victim)
    backend.stop_instance(victim, timeout=5)  # idempotent


# -- shipping the environment ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_image(work: Path) -> Path:
    """An image laid out as neve's builder lays one out: a venv whose ``_neve_base.pth``
    adds a base environment's site-packages (here: this test's own venv)."""
    image = work / "images" / "0f3c9a1d5e"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run(
        [str(uv), "venv", "-q", "--python", sys.executable, str(image)],
        check=True,
        env={**os.environ, "UV_OFFLINE": "1"},
    )
    base_site = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    site = next(image.glob("lib/python*/site-packages"))
    (site / "_neve_base.pth").write_text(f"import site; site.addsitedir({str(base_site)!r})\n")
    return image


#: A control plane outside the cluster: it reaches the cluster through Ray Client (ray://) and
#: treats the nodes as machines without its files (ship=always). Run in a subprocess because a
#: process holds one Ray connection (this one is a driver of the cluster already).
CLIENT_CONTROL_PLANE = r"""
import json, sys, time
from pathlib import Path
import httpx
from neve.compute.backends.base import InstanceSpec, PoolInfo
from neve.compute.backends.ray import RayBackend
from neve.compute.families import instance_family
from neve.compute.resources import ResourceRequest

cfg = json.loads(sys.argv[1])
pool = PoolInfo(name="SHIP", family=instance_family("CPU_X64_XS"), backend="ray",
                address=cfg["address"], runs_dir=Path(cfg["runs_dir"]), nodes=list)
backend = RayBackend(pool)
out = {"nodes": backend.node_names(), "instances": []}
handles = []
try:
    for i in range(2):
        handles.append(backend.start_instance(InstanceSpec(
            python=cfg["python"], model_dir=cfg["model_dir"], service="ML.REG.SHIPPED",
            instance_index=i, log_path=f"{cfg['logs']}/shipped-{i}.log",
            request=ResourceRequest(cpu=0.5, memory_gb=0.25), num_workers=1)))
    for h in handles:
        backend.wait_ready(h, timeout=120)
        resp = httpx.post(f"{h.url}/predict", json={"data": cfg["rows"]}, timeout=10)
        out["instances"].append({"handle": h.to_dict(), "info": backend.instance_info(h),
                                 "predictions": [r[1] for r in resp.json()["data"]]})
    log = Path(handles[0].backend_ref["log_path"])
    deadline = time.monotonic() + 15  # the log pump pulls the node's log every 0.5 s
    while time.monotonic() < deadline:
        if log.exists() and "neve.server: serving" in log.read_text():
            break
        time.sleep(0.2)
    out["log"] = log.read_text() if log.exists() else ""
finally:
    for h in handles:
        backend.stop_instance(h, timeout=5)
    out["alive_after_stop"] = [backend.is_alive(h) for h in handles]
print("RESULT " + json.dumps(out))
"""


def test_ray_client_control_plane_ships_the_image_and_pulls_logs(
    cluster, work, model_dir, small_image, expected
):
    cache = work / "node-cache"
    # The base environment (GBs) is above the shipping limit: nodes use it in place (same path,
    # same fingerprint), as nodes built from one machine image do; the image layer and the model
    # directory are shipped through the object store and unpacked into the node cache.
    config = {
        "address": f"{cluster.client_address}?ship=always&ship_limit_mb=64&cache_dir={cache}",
        "runs_dir": str(work / "run" / "pools" / "SHIP"),
        "python": str(small_image / "bin" / "python"),
        "model_dir": str(model_dir),
        "logs": str(work / "logs"),
        "rows": ROWS,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_CONTROL_PLANE, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    result_line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result_line, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(result_line[0][len("RESULT ") :])
    assert len(result["nodes"]) == 3
    for inst in result["instances"]:
        got = [next(iter(p.values())) for p in inst["predictions"]]
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        info, handle = inst["info"], inst["handle"]
        assert info["python"].startswith(str(cache / "trees" / "0f3c9a1d5e-"))
        assert info["model_dir"].startswith(str(cache / "trees" / "model-"))
        assert info["shared_logs"] is False and info["log_path"].startswith(str(cache))
        assert handle["backend_ref"]["node_log_path"] == info["log_path"]
        # the unpacked image's .pth still adds the base environment (used in place)
        site = next(Path(info["python"]).parent.parent.glob("lib/python*/site-packages"))
        assert "site.addsitedir(" in (site / "_neve_base.pth").read_text()
    # Content keys decide reuse: the instances share one unpacked copy of each tree.
    trees = sorted(p.name for p in (cache / "trees").iterdir())
    assert len([t for t in trees if t.startswith("0f3c9a1d5e-")]) == 1, trees
    assert len([t for t in trees if t.startswith("model-")]) == 1, trees
    # The server's output, written on its node, reached the instance log over Ray.
    assert "neve.server: serving" in result["log"]
    assert result["alive_after_stop"] == [False, False]


def test_lost_node_takes_its_instance_down_and_is_detected(
    spread, cluster, work, model_dir, expected
):
    backend, handles = spread
    on_worker = [h for h in handles[1:] if cluster.worker_by_id(h.backend_ref["node_id"])]
    assert on_worker, "an instance should run on a worker node"
    victim = on_worker[0]
    survivor = next(h for h in handles[1:] if h is not victim)
    t0 = time.monotonic()
    cluster.remove_node(cluster.worker_by_id(victim.backend_ref["node_id"]))
    # The server dies with its actor (parent-death signal): connections are refused at once.
    wait_for(lambda: not group_alive(victim.pid), 15, "the lost node's server to exit")
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{victim.url}/predict", json={"data": ROWS}, timeout=2)
    wait_for(lambda: not backend.is_alive(victim), 30, "the lost node to be noticed")
    print(f"lost node noticed after {time.monotonic() - t0:.1f} s")
    assert victim.node not in backend.node_names()
    np.testing.assert_allclose(predict(survivor), expected, rtol=1e-9)
    backend.stop_instance(victim, timeout=2)  # the actor is gone: nothing to wait for
    # Its replacement, started at once (as the supervisor does), lands on a node that is
    # there, whether or not the GCS has marked the lost one dead yet.
    replacement = backend.start_instance(spec_for(work, model_dir, handles.index(victim)))
    try:
        assert replacement.backend_ref["node_id"] != victim.backend_ref["node_id"]
        backend.wait_ready(replacement, timeout=120)
        np.testing.assert_allclose(predict(replacement), expected, rtol=1e-9)
        print(f"replacement ready {time.monotonic() - t0:.1f} s after the node was removed")
    finally:
        backend.stop_instance(replacement, timeout=5)


def test_a_raylet_that_is_gone_does_not_answer():
    """The probe that keeps restarts off a lost node the GCS still counts alive."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    node = {"NodeManagerAddress": "127.0.0.1", "NodeManagerPort": port}
    assert raylet_answers(node)
    listener.close()
    assert not raylet_answers(node)
    assert raylet_answers({"NodeManagerAddress": None})  # nothing to check: the GCS decides


# -- instance families as node labels ----------------------------------------------------------------
def test_family_labels_restrict_pools_to_their_nodes(spread, cluster, work, model_dir):
    labelled = cluster.add_node(labels={FAMILY_LABEL: "CPU_X64_M"})
    medium = make_backend(work, cluster.address, family="CPU_X64_M", name="MEDIUM")
    small = make_backend(work, cluster.address, family="CPU_X64_XS", name="SMALL")
    try:
        assert medium.node_names() == [f"ray-{labelled.node_id[:8]}"]
        assert small.node_names() == []  # labels are in use and none says CPU_X64_XS
        with pytest.raises(ResourceError, match="label some with CPU_X64_XS"):
            small.start_instance(spec_for(work, model_dir, 5))
        handle = medium.start_instance(spec_for(work, model_dir, 6, service="ML.REG.MEDIUM"))
        try:
            assert handle.backend_ref["node_id"] == labelled.node_id
            assert medium.is_alive(handle)
        finally:
            medium.stop_instance(handle, timeout=5)
    finally:
        medium.close()
        small.close()


# -- ADDRESS = 'auto' ----------------------------------------------------------------------------------
def session_members(leader: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == leader and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def test_auto_address_starts_one_local_cluster_reuses_and_stops_it(work):
    runs_dir = work / "run" / "pools" / "7"
    t0 = time.monotonic()
    address = ensure_local_cluster(runs_dir, num_cpus=1)
    print(f"'auto' cluster (ray start --head) up in {time.monotonic() - t0:.1f} s")
    record_path = work / "run" / "ray" / "cluster.json"
    record = json.loads(record_path.read_text())
    assert address == f"127.0.0.1:{record['port']}"
    try:
        names = " ".join(" ".join(p.cmdline()) for p in session_members(record["pid"]))
        assert "gcs_server" in names and "raylet" in names
        assert ensure_local_cluster(runs_dir) == address  # found again, not started twice
        assert json.loads(record_path.read_text())["pid"] == record["pid"]
    finally:
        assert stop_local_cluster(runs_dir)
    wait_for(lambda: not session_members(record["pid"]), 30, "the auto cluster's processes to exit")
    assert not record_path.exists()
    assert stop_local_cluster(runs_dir) is False
