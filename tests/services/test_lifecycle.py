"""Services end to end on loopback: create (2 instances), invoke, idempotency, logs, kill -9,
suspend and auto-resume, auto-suspend, scale, model-in-use refusal, drop without orphans.

The tests of this module run in order on one service (``SVC``) to share its build and start.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from sqlalchemy import select
from svc_helpers import MODEL, POOL, REPO, alive, process_tree

from neve.catalog import models as m
from neve.errors import InvalidArgumentError, ObjectExistsError, ObjectInUseError
from neve.models import load_model

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


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


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
    # the SQL function of the method exists with the service
    with env.account.catalog.transaction() as s:
        names = set(s.scalars(select(m.Function.name)))
    assert "LIN_SVC_PREDICT" in names


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
    assert endpoint["ingress_enabled"] and endpoint["ingress_url"].endswith(".neve.localhost")
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

        row = _wait(restarted, 90, "instance 0 to be restarted and ready")
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures[:3]
    assert calls > 0
    assert row["restart_count"] == 1
    assert not alive(old_pid)
    events = services.get_service_logs(env.ctx, SVC, 0, "events", None)
    assert "instance 0 failed" in events and "instance 0 restarted" in events


def test_suspend_then_a_call_resumes(env):
    services = env.account.services
    pids = set().union(*(process_tree(int(c["pid"])) for c in _instances(env)))
    row = services.alter_service(env.ctx, SVC, suspend=True)
    assert row["status"] == "SUSPENDED" and row["target_instances"] == 0
    assert not any(alive(p) for p in pids), "a suspended service holds no processes"
    out = services.invoke(env.ctx, SVC, "predict", _rows(env.test_df), timeout_s=120)
    np.testing.assert_allclose([next(iter(o.values())) for o in out], _expected(env))
    assert services.describe_service(env.ctx, SVC)["status"] == "RUNNING"


def test_auto_suspend_after_idle_then_resume(env):
    services = env.account.services
    services.alter_service(env.ctx, SVC, auto_suspend_secs=2)
    _wait(
        lambda: services.describe_service(env.ctx, SVC)["status"] == "SUSPENDED",
        30,
        "auto-suspend",
    )
    assert "auto-suspended" in services.describe_service(env.ctx, SVC)["status_reason"]
    services.alter_service(env.ctx, SVC, auto_suspend_secs=0)  # off again
    out = services.invoke(env.ctx, SVC, "predict", _rows(env.test_df), timeout_s=120)
    assert len(out) == len(env.test_df)


def test_scale_down_and_up(env):
    services = env.account.services
    _wait(lambda: services.describe_service(env.ctx, SVC)["current_instances"] == 2, 120, "2 ready")
    gone = int(next(c for c in _instances(env) if c["instance_id"] == "1")["pid"])
    row = services.alter_service(env.ctx, SVC, min_instances=1, max_instances=1)
    assert row["target_instances"] == 1 and not alive(gone)
    with pytest.raises(InvalidArgumentError, match="MIN_INSTANCES \\(3\\) is greater"):
        services.alter_service(env.ctx, SVC, min_instances=3, max_instances=2)


def test_model_in_use_cannot_be_deleted(env):
    registry = env.account.registry
    with pytest.raises(ObjectInUseError) as info:
        registry.delete_model(env.ctx, MODEL)
    assert "LIN_SVC" in info.value.message
    with pytest.raises(ObjectInUseError):
        registry.delete_version(env.ctx, MODEL, "V1")


def test_drop_leaves_no_process(env):
    services = env.account.services
    pids = set().union(*(process_tree(int(c["pid"])) for c in _instances(env) if c["pid"]))
    assert pids
    services.drop_service(env.ctx, SVC)
    assert not any(alive(p) for p in pids)
    assert services.show_services(env.ctx) == []
    with env.account.catalog.transaction() as s:
        assert s.scalar(select(m.Function.id).where(m.Function.name == "LIN_SVC_PREDICT")) is None
        assert s.scalar(select(m.PoolAllocation.id)) is None
    services.drop_service(env.ctx, SVC, if_exists=True)  # no error the second time
