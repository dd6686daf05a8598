"""Services end to end on loopback: create (2 instances), invoke, idempotency, logs, kill -9,
scale, auto-suspend, model-in-use refusal, auto-resume, SQL suspend and drop, ownership.

The tests of this module run in order on one service (``SVC``) to share its build and start.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from svc_helpers import MODEL, POOL, REPO, alive, process_tree
from waits import wait_for

from neve.catalog import models as m
from neve.errors import (
    InvalidArgumentError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SignatureError,
)
from neve.models import load_model

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SVC = "ML.REG.LIN_SVC"
CREATE = dict(
    model=MODEL,
    version="V1",
    service_name=SVC,
    compute_pool=POOL,
    image_repo=REPO,
    max_instances=2,
    num_workers=1,
    ingress_enabled=True,
)


def _rows(df):
    return [[i, float(a), float(b)] for i, (a, b) in enumerate(df[["A", "B"]].to_numpy())]


def _expected(env):
    out = load_model(env.model_dir).call("predict", env.test_df)
    return out.iloc[:, 0].to_numpy()


def _instances(env):
    return env.account.services.show_containers(env.ctx, SVC)


def test_create_two_instances_and_invoke(env):
    services = env.account.services
    t0 = time.perf_counter()
    row = services.create_service(env.ctx, **CREATE)
    print(f"\ncreate_service (build + 2 instances): {time.perf_counter() - t0:.1f} s")
    assert row["status"] == "RUNNING"
    assert row["current_instances"] == row["target_instances"] == 2
    assert {i["status"] for i in row["instances"]} == {"READY"}
    pids = [int(i["pid"]) for i in row["instances"]]
    assert len(set(pids)) == 2 and all(alive(p) for p in pids)
    assert row["inference_endpoint"].endswith("-local.neve.localhost")
    out = services.invoke(env.ctx, SVC, "predict", _rows(env.test_df))
    np.testing.assert_allclose([next(iter(o.values())) for o in out], _expected(env), rtol=1e-9)
    # the method is a SQL function of the schema, answered by the service
    result = env.sql("SELECT LIN_SVC_PREDICT(1.5, -2.0) AS y")
    expected = (
        load_model(env.model_dir)
        .call("predict", pd.DataFrame({"A": [1.5], "B": [-2.0]}))
        .iloc[0, 0]
    )
    assert result.rows[0][0] == pytest.approx(expected)
    # bad calls get the service's own error, naming what is wrong
    with pytest.raises(ObjectNotFoundError, match="has no method 'explain'; methods: predict"):
        services.invoke(env.ctx, SVC, "explain", _rows(env.test_df))
    with pytest.raises(SignatureError):
        services.invoke(env.ctx, SVC, "predict", [[0, "x", 1.0]])


def test_same_arguments_neither_rebuild_nor_restart(env):
    services = env.account.services
    before = services.describe_service(env.ctx, SVC)
    again = services.create_service(env.ctx, **CREATE)
    assert again["image_digest"] == before["image_digest"]
    assert again["build_job"] == before["build_job"]
    assert [i["pid"] for i in again["instances"]] == [i["pid"] for i in before["instances"]]
    with pytest.raises(ObjectExistsError) as info:
        services.create_service(env.ctx, **{**CREATE, "max_instances": 3})
    assert "max_instances: 2 -> 3" in info.value.message
    assert services.describe_service(env.ctx, SVC)["max_instances"] == 2
    with pytest.raises(ObjectExistsError, match="force_rebuild builds the image of a new service"):
        services.create_service(env.ctx, **CREATE, force_rebuild=True)  # not silently ignored
    assert services.describe_service(env.ctx, SVC)["build_job"] == before["build_job"]


def test_status_logs_endpoints(env):
    services = env.account.services
    containers = _instances(env)
    assert [c["instance_id"] for c in containers] == ["0", "1"]
    assert all(c["container_name"] == "model-inference" for c in containers)
    log = services.get_service_logs(env.ctx, SVC, 0, "model-inference", 50)
    assert "neve.server: serving" in log
    assert services.get_service_logs(env.ctx, SVC, 1, "model-inference", 1).count("\n") == 1
    with pytest.raises(InvalidArgumentError, match="has no instance 7"):
        services.get_service_logs(env.ctx, SVC, 7, "model-inference", 10)
    with pytest.raises(InvalidArgumentError, match="no container 'sidecar'"):
        services.get_service_logs(env.ctx, SVC, 0, "sidecar", 10)
    status = services.get_service_status(env.ctx, SVC)
    assert [s["status"] for s in status] == ["READY", "READY"]
    [endpoint] = services.show_endpoints(env.ctx, SVC)
    assert endpoint["ingress_enabled"] and endpoint["ingress_host"].endswith(".neve.localhost")
    assert endpoint["ingress_url"] is None  # no control plane serves this in-process account
    shown = services.show_services(env.ctx, in_compute_pool=POOL)
    assert [r["name"] for r in shown] == ["LIN_SVC"]
    assert services.show_services(env.ctx, like="nothing%") == []
    methods = services.service_methods(env.ctx, SVC)
    assert list(methods) == ["predict"]
    # the SQL surface reaches the same rows
    result = env.sql("SHOW SERVICES IN COMPUTE POOL svc_pool")
    assert result.rows and result.columns[0] == "name"
    build_job = services.describe_service(env.ctx, SVC)["build_job"]
    assert build_job and build_job.startswith("MODEL_BUILD_")
    assert services.get_service_logs(env.ctx, build_job, 0, "model-build", None)


def test_spec_cannot_be_altered(env):
    with pytest.raises(InvalidArgumentError) as info:
        env.account.services.alter_service(env.ctx, SVC, num_workers=3)
    assert "immutable" in info.value.message and "create a new service" in info.value.message


def test_kill_9_instance_is_restarted_and_calls_keep_succeeding(env):
    services = env.account.services
    expected = _expected(env)
    victim = next(c for c in _instances(env) if c["instance_id"] == "0")
    old_pid = int(victim["pid"])
    failures: list[BaseException] = []
    calls = 0
    stop = threading.Event()

    def caller() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                out = services.invoke(env.ctx, SVC, "predict", _rows(env.test_df), timeout_s=60)
                np.testing.assert_allclose([next(iter(o.values())) for o in out], expected)
                calls += 1
            except BaseException as exc:  # noqa: BLE001 (counted, asserted below)
                failures.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        os.killpg(old_pid, signal.SIGKILL)

        def restarted():
            row = next(c for c in _instances(env) if c["instance_id"] == "0")
            if row["status"] == "READY" and row["pid"] and int(row["pid"]) != old_pid:
                return row
            return None

        row = wait_for(restarted, 90, "instance 0 to be restarted and ready")
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures[:3]
    assert calls > 0
    assert row["restart_count"] == 1
    assert not alive(old_pid)
    events = services.get_service_logs(env.ctx, SVC, 0, "events", None)
    assert "instance 0 failed" in events and "instance 0 restarted" in events


def test_scale_down(env):
    services = env.account.services
    wait_for(
        lambda: services.describe_service(env.ctx, SVC)["current_instances"] == 2, 120, "2 ready"
    )
    gone = int(next(c for c in _instances(env) if c["instance_id"] == "1")["pid"])
    # follow the events from here: only what happens next comes back
    start = services.follow_service_log(env.ctx, SVC, 0, "events", offset=-1)
    assert start["text"] == "" and start["offset"] > 0
    row = services.alter_service(env.ctx, SVC, min_instances=1, max_instances=1)
    assert row["target_instances"] == 1 and not alive(gone)
    new = services.follow_service_log(env.ctx, SVC, 0, "events", offset=start["offset"])
    assert new["text"] and new["offset"] > start["offset"]
    assert new["text"] == services.get_service_logs(env.ctx, SVC, 0, "events")[-len(new["text"]) :]
    assert "altered by ADMIN: min 1, max 1" in new["text"]  # who changed what
    assert "scaling down 2 -> 1" in new["text"]  # and what it did
    again = services.follow_service_log(env.ctx, SVC, 0, "events", offset=new["offset"])
    assert again == {"text": "", "offset": new["offset"]}
    # a file shorter than the offset was rotated: read from its start
    rotated = services.follow_service_log(env.ctx, SVC, 0, "events", offset=10**9)
    assert rotated["text"] == services.get_service_logs(env.ctx, SVC, 0, "events")
    with pytest.raises(InvalidArgumentError, match="offset must be an integer >= -1"):
        services.follow_service_log(env.ctx, SVC, 0, "events", offset=-5)
    with pytest.raises(InvalidArgumentError, match="MIN_INSTANCES \\(3\\) is greater"):
        services.alter_service(env.ctx, SVC, min_instances=3, max_instances=2)


def test_auto_suspend_after_idle(env):
    services = env.account.services
    pids = set().union(*(process_tree(int(c["pid"])) for c in _instances(env)))
    assert pids
    services.alter_service(env.ctx, SVC, auto_suspend_secs=2)
    wait_for(
        lambda: services.describe_service(env.ctx, SVC)["status"] == "SUSPENDED",
        30,
        "auto-suspend",
    )
    row = services.describe_service(env.ctx, SVC)
    assert "auto-suspended" in row["status_reason"] and row["target_instances"] == 0
    assert not any(alive(p) for p in pids), "a suspended service holds no processes"
    services.alter_service(env.ctx, SVC, auto_suspend_secs=0)  # off again


def test_model_in_use_cannot_be_deleted(env):
    """Suspended services hold on to their model version too."""
    registry = env.account.registry
    with pytest.raises(ObjectInUseError) as info:
        registry.delete_model(env.ctx, MODEL)
    assert "LIN_SVC" in info.value.message
    with pytest.raises(ObjectInUseError):
        registry.delete_version(env.ctx, MODEL, "V1")


def test_a_call_resumes_a_suspended_service(env):
    services = env.account.services
    assert services.describe_service(env.ctx, SVC)["status"] == "SUSPENDED"
    out = services.invoke(env.ctx, SVC, "predict", _rows(env.test_df), timeout_s=120)
    np.testing.assert_allclose([next(iter(o.values())) for o in out], _expected(env))
    row = services.describe_service(env.ctx, SVC)
    assert row["status"] == "RUNNING" and row["current_instances"] == 1


def test_sql_suspend_then_drop(env):
    services = env.account.services
    pids = set().union(*(process_tree(int(c["pid"])) for c in _instances(env)))
    env.sql(f"ALTER SERVICE {SVC} SUSPEND")
    assert services.describe_service(env.ctx, SVC)["status"] == "SUSPENDED"
    assert not any(alive(p) for p in pids)
    env.sql(f"DROP SERVICE {SVC}")
    assert services.show_services(env.ctx) == []
    with env.account.catalog.transaction() as s:
        assert s.scalar(select(m.Function.id).where(m.Function.name == "LIN_SVC_PREDICT")) is None
        assert s.scalar(select(m.PoolAllocation.id)) is None
        assert s.scalar(select(m.ServiceInstance.id)) is None
    services.drop_service(env.ctx, SVC, if_exists=True)  # no error the second time


def test_non_blocking_create_then_owner_loses_the_model(env):
    """A role that owns a model deploys it (block=False returns at once); when the model's
    ownership moves away, the service keeps running until its next restart, then FAILS."""
    from neve.context import RequestContext

    sec, admin = env.account.security, env.ctx
    sec.bootstrap()
    sec.create_role(admin, "ENG")
    sec.grant_role(admin, "ENG", to_user="ADMIN")
    for privilege, kind, name in [
        ("USAGE", "DATABASE", "ML"),
        ("USAGE", "SCHEMA", "ML.REG"),
        ("CREATE MODEL", "SCHEMA", "ML.REG"),
        ("CREATE SERVICE", "SCHEMA", "ML.REG"),
        ("USAGE", "COMPUTE POOL", POOL),
        ("READ", "IMAGE REPOSITORY", REPO),
        # WRITE too: a build (not a reuse) needs it, e.g. when the server code changed
        ("WRITE", "IMAGE REPOSITORY", REPO),
    ]:
        sec.grant(admin, privilege, kind, name, "ENG")
    eng = RequestContext(user="ADMIN", role="ENG", database="ML", schema="REG")
    env.account.registry.log_model(
        eng, "ML", "REG", "ENG_LIN", "V1", env.model_dir, conda_dependencies=["scikit-learn"]
    )
    services = env.account.services
    t0 = time.perf_counter()
    row = services.create_service(
        eng,
        model="ENG_LIN",
        version="V1",
        service_name="ENG_SVC",
        compute_pool=POOL,
        image_repo=REPO,
        num_workers=1,
        block=False,
    )
    assert time.perf_counter() - t0 < 5
    assert row["status"] in ("PENDING", "BUILDING", "STARTING")
    assert row["owner"] == "ENG"
    row = wait_for(
        lambda: (
            (r := services.describe_service(eng, "ENG_SVC"))["status"] in ("RUNNING", "FAILED")
            and r
        ),
        120,
        "ENG_SVC running",
        detail=lambda: services.describe_service(eng, "ENG_SVC"),
    )
    assert row["status"] == "RUNNING", row["status_reason"]
    # a role without ownership of the model may not deploy it
    sec.create_role(admin, "OTHER")
    for privilege, kind, name in [
        ("USAGE", "DATABASE", "ML"),
        ("USAGE", "SCHEMA", "ML.REG"),
        ("USAGE", "MODEL", "ML.REG.ENG_LIN"),  # may use it, but does not own it
    ]:
        sec.grant(admin, privilege, kind, name, "OTHER")
    with pytest.raises(PermissionDeniedError, match="only the owner of model"):
        services.create_service(
            RequestContext(user="ADMIN", role="OTHER", database="ML", schema="REG"),
            model="ENG_LIN",
            version="V1",
            service_name="OTHER_SVC",
            compute_pool=POOL,
            image_repo=REPO,
        )
    sec.grant_ownership(admin, "MODEL", "ML.REG.ENG_LIN", "SYSADMIN", copy_current_grants=False)
    # still running: access is checked at the next (re)start
    out = services.invoke(eng, "ENG_SVC", "predict", _rows(env.test_df))
    assert len(out) == len(env.test_df)
    [inst] = services.show_containers(eng, "ENG_SVC")
    tree = process_tree(int(inst["pid"]))
    os.killpg(int(inst["pid"]), signal.SIGKILL)
    row = wait_for(
        lambda: (r := services.describe_service(eng, "ENG_SVC"))["status"] == "FAILED" and r,
        60,
        "ENG_SVC to fail",
    )
    assert "no longer has access to model ML.REG.ENG_LIN" in row["status_reason"]
    assert row["target_instances"] == 0 and not any(alive(p) for p in tree)
    services.drop_service(eng, "ENG_SVC")


def test_autoscale_on_queue_depth(env):
    """min 1 < max 2: a deep queue on the one instance brings a second; idle queues take it
    away again (the supervisor reads neve_server_queue_rows from /metrics)."""
    import httpx

    services = env.account.services
    name = "ML.REG.AUTO_SVC"
    row = services.create_service(
        env.ctx,
        **{**CREATE, "service_name": name, "ingress_enabled": False},
        min_instances=1,
        max_batch_rows=1,  # one row per model call: big requests queue for a while
    )
    assert (row["min_instances"], row["max_instances"], row["target_instances"]) == (1, 2, 1)
    [inst] = row["instances"]
    rng = np.random.default_rng(5)
    body = {"data": [[i, *rng.normal(size=2).tolist()] for i in range(1500)]}
    url = f"http://{inst['host']}:{inst['port']}/predict"

    def flood() -> None:
        with httpx.Client(timeout=120) as client:
            while services.describe_service(env.ctx, name)["target_instances"] < 2:
                client.post(url, json=body)

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: services.describe_service(env.ctx, name)["current_instances"] == 2,
            120,
            "a second instance",
        )
    finally:
        for t in threads:
            t.join(120)
    events = services.get_service_logs(env.ctx, name, 0, "events", None)
    assert "scaling up 1 -> 2 (queue depth" in events
    wait_for(
        lambda: services.describe_service(env.ctx, name)["target_instances"] == 1,
        60,
        "scale-down when idle",
    )
    assert "scaling down 2 -> 1" in services.get_service_logs(env.ctx, name, 0, "events", None)
    services.drop_service(env.ctx, name)
