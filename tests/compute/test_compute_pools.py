"""Compute pools in the catalog: lifecycle, placement by resources, bad input, privileges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from neve.catalog import models as m
from neve.compute.families import FAMILIES
from neve.compute.resources import ResourceRequest
from neve.context import RequestContext, admin_context
from neve.errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidStateError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ResourceError,
)


@pytest.fixture
def admin(account) -> RequestContext:
    account.security.bootstrap()
    return admin_context()


def _count(account, cls) -> int:
    with account.catalog.transaction() as s:
        return s.scalar(select(func.count()).select_from(cls))


def test_pool_created_listed_altered_suspended_resumed_dropped(account, admin) -> None:
    compute = account.compute
    row = compute.create_pool(
        admin, "cpu_pool", min_nodes=1, max_nodes=3, instance_family="cpu_x64_s", comment="c"
    )
    assert (row["name"], row["state"], row["instance_family"]) == ("CPU_POOL", "IDLE", "CPU_X64_S")
    assert (row["vcpu_per_node"], row["memory_gb_per_node"], row["gpu_per_node"]) == (3, 13, 0)
    assert [n["name"] for n in row["nodes"]] == ["CPU_POOL-node-1"]  # MIN_NODES come up
    # IF NOT EXISTS returns the existing pool; without it the name clash is an error.
    again = compute.create_pool(admin, "CPU_POOL", instance_family="CPU_X64_M", if_not_exists=True)
    assert again["instance_family"] == "CPU_X64_S"
    with pytest.raises(ObjectExistsError, match="CPU_POOL already exists"):
        compute.create_pool(admin, "cpu_pool", instance_family="CPU_X64_S")

    shown = compute.show_pools(admin)
    assert [r["name"] for r in shown] == ["CPU_POOL"]
    assert set(shown[0]) >= {
        "name", "state", "min_nodes", "max_nodes", "instance_family", "num_services",
        "num_jobs", "auto_suspend_secs", "auto_resume", "active_nodes", "idle_nodes",
        "created_on", "resumed_on", "owner", "comment",
    }  # fmt: skip
    assert shown[0]["owner"] == "ACCOUNTADMIN" and shown[0]["idle_nodes"] == 1
    assert compute.show_pools(admin, like="cpu%") and not compute.show_pools(admin, like="gpu%")

    altered = compute.alter_pool(admin, "cpu_pool", min_nodes=2, auto_suspend_secs=60)
    assert (altered["min_nodes"], altered["auto_suspend_secs"]) == (2, 60)
    assert len(altered["nodes"]) == 2  # raising MIN_NODES brings nodes up
    assert len(compute.alter_pool(admin, "cpu_pool", min_nodes=1)["nodes"]) == 1

    suspended = compute.alter_pool(admin, "cpu_pool", suspend=True)
    assert suspended["state"] == "SUSPENDED" and suspended["nodes"] == []
    resumed = compute.alter_pool(admin, "cpu_pool", resume=True)
    assert resumed["state"] == "IDLE" and len(resumed["nodes"]) == 1

    assert compute.drop_pool(admin, "cpu_pool") is True
    assert compute.show_pools(admin) == []
    assert _count(account, m.PoolNode) == 0
    assert compute.drop_pool(admin, "cpu_pool", if_exists=True) is False
    with pytest.raises(ObjectNotFoundError, match="compute pool CPU_POOL does not exist"):
        compute.drop_pool(admin, "cpu_pool")


def test_bad_input_is_refused_and_creates_nothing(account, admin) -> None:
    compute = account.compute
    with pytest.raises(InvalidIdentifierError, match="invalid compute pool name"):
        compute.create_pool(admin, "1bad-name", instance_family="CPU_X64_S")
    with pytest.raises(InvalidArgumentError) as err:
        compute.create_pool(admin, "p", instance_family="CPU_X64_XXL")
    assert "unknown instance family 'CPU_X64_XXL'" in err.value.message
    for name in FAMILIES:  # the error lists every valid family
        assert name in err.value.message
    with pytest.raises(
        InvalidArgumentError, match=r"MIN_NODES \(3\) must not be greater than MAX_NODES \(2\)"
    ):
        compute.create_pool(admin, "p", min_nodes=3, max_nodes=2, instance_family="CPU_X64_S")
    with pytest.raises(InvalidArgumentError, match="MIN_NODES must be >= 1"):
        compute.create_pool(admin, "p", min_nodes=0, instance_family="CPU_X64_S")
    with pytest.raises(InvalidArgumentError, match="MAX_NODES must be an integer"):
        compute.create_pool(admin, "p", max_nodes="many", instance_family="CPU_X64_S")
    with pytest.raises(InvalidArgumentError, match="INSTANCE_FAMILY is required"):
        compute.create_pool(admin, "p")
    with pytest.raises(InvalidArgumentError, match="unknown compute backend 'k8s'"):
        compute.create_pool(admin, "p", instance_family="CPU_X64_S", backend="k8s")
    with pytest.raises(InvalidArgumentError, match="ADDRESS applies to BACKEND = 'ray' only"):
        compute.create_pool(admin, "p", instance_family="CPU_X64_S", address="ray://h:10001")
    assert _count(account, m.ComputePool) == 0 and _count(account, m.PoolNode) == 0

    compute.create_pool(admin, "p", max_nodes=2, instance_family="CPU_X64_S")
    with pytest.raises(InvalidArgumentError, match=r"MIN_NODES \(3\) must not be greater"):
        compute.alter_pool(admin, "p", min_nodes=3)
    with pytest.raises(InvalidArgumentError, match="use one of SUSPEND, RESUME"):
        compute.alter_pool(admin, "p", suspend=True, max_nodes=3)
    with pytest.raises(InvalidArgumentError, match="nothing to change"):
        compute.alter_pool(admin, "p")
    with pytest.raises(ObjectNotFoundError, match="compute pool NOPE does not exist"):
        compute.alter_pool(admin, "nope", suspend=True)
    assert compute.alter_pool(admin, "nope", suspend=True, if_exists=True) is None
    pool = compute.describe_pool(admin, "p")
    assert (pool["min_nodes"], pool["max_nodes"], pool["state"]) == (1, 2, "IDLE")


def test_placement_by_resources_adds_nodes_and_refuses_what_does_not_fit(account, admin) -> None:
    compute = account.compute
    compute.create_pool(admin, "pool", min_nodes=1, max_nodes=2, instance_family="CPU_X64_S")
    a = compute.place(admin, "pool", ResourceRequest(cpu=2, memory_gb=4), holder="SVC/0")
    b = compute.place(admin, "pool", ResourceRequest(cpu=1, memory_gb=2), holder="SVC/1")
    assert a.node == b.node == "POOL-node-1"  # fits next to the first: no new node
    c = compute.place(admin, "pool", ResourceRequest(cpu=2, memory_gb=4), holder="SVC/2")
    assert c.node == "POOL-node-2"  # node 1 is full: a second node comes up on demand
    assert compute.place(None, "pool", ResourceRequest(cpu=2), holder="SVC/0") == a  # idempotent
    row = compute.describe_pool(admin, "pool")
    assert (row["state"], row["active_nodes"], row["idle_nodes"]) == ("ACTIVE", 2, 0)
    assert {n["name"]: n["free_cpu"] for n in row["nodes"]} == {"POOL-node-1": 0, "POOL-node-2": 1}

    with pytest.raises(ResourceError) as full:
        compute.place(admin, "pool", ResourceRequest(cpu=2, memory_gb=1), holder="SVC/3")
    message = full.value.message
    assert "no room for SVC/3" in message and "requests 2 vCPU" in message
    assert "POOL-node-2: 1 vCPU" in message and "MAX_NODES = 2 reached" in message
    with pytest.raises(ResourceError, match=r"requests 4 vCPU.*more than one node.*3 vCPU, 13 GiB"):
        compute.place(admin, "pool", ResourceRequest(cpu=4, memory_gb=1), holder="SVC/4")
    with pytest.raises(ResourceError, match="1 GPU"):
        compute.place(admin, "pool", ResourceRequest(cpu=1, gpu=1), holder="SVC/5")
    with pytest.raises(InvalidArgumentError, match="cpu must be > 0"):
        ResourceRequest(cpu=0)

    with pytest.raises(InvalidStateError, match="instances still run on it"):
        compute.alter_pool(admin, "pool", suspend=True)
    with pytest.raises(InvalidStateError, match="cannot lower MAX_NODES to 1: 2 nodes"):
        compute.alter_pool(admin, "pool", max_nodes=1)

    assert compute.release(admin, "pool", "SVC/2") is True
    assert compute.release(admin, "pool", "SVC/2") is False  # idempotent
    assert [n["name"] for n in compute.describe_pool(admin, "pool")["nodes"]] == ["POOL-node-1"]
    compute.release(None, "pool", "SVC/0")
    compute.release(None, "pool", "SVC/1")
    row = compute.describe_pool(admin, "pool")
    assert (row["state"], row["active_nodes"], row["idle_nodes"]) == ("IDLE", 0, 1)
    assert compute.placements(admin, "pool") == []


def test_gpu_pool_hands_out_distinct_gpus(account, admin) -> None:
    compute = account.compute
    compute.create_pool(admin, "gpu_pool", max_nodes=1, instance_family="GPU_NV_M")
    first = compute.place(admin, "gpu_pool", ResourceRequest(cpu=4, memory_gb=8, gpu=2), holder="a")
    second = compute.place(
        admin, "gpu_pool", ResourceRequest(cpu=4, memory_gb=8, gpu=2), holder="b"
    )
    assert sorted(first.gpu_ids + second.gpu_ids) == [0, 1, 2, 3]
    with pytest.raises(ResourceError, match="0 GPU free"):
        compute.place(admin, "gpu_pool", ResourceRequest(cpu=1, gpu=1), holder="c")


def test_suspended_pool_auto_resumes_and_auto_suspends(account, admin) -> None:
    compute = account.compute
    compute.create_pool(
        admin, "lazy", instance_family="CPU_X64_XS", initially_suspended=True, auto_suspend_secs=30
    )
    assert compute.describe_pool(admin, "lazy")["state"] == "SUSPENDED"
    placed = compute.place(admin, "lazy", ResourceRequest(cpu=0.5, memory_gb=1), holder="x")
    row = compute.describe_pool(admin, "lazy")
    assert row["state"] == "ACTIVE" and placed.node == "LAZY-node-1"
    compute.release(admin, "lazy", "x")
    assert compute.suspend_idle_pools() == []  # idle for less than 30 s
    later = datetime.now(UTC) + timedelta(seconds=31)
    assert compute.suspend_idle_pools(now=later) == ["LAZY"]
    assert compute.describe_pool(admin, "lazy")["state"] == "SUSPENDED"

    compute.create_pool(
        admin, "manual", instance_family="CPU_X64_XS", initially_suspended=True, auto_resume=False
    )
    with pytest.raises(
        InvalidStateError, match="AUTO_RESUME is FALSE.*ALTER COMPUTE POOL MANUAL RESUME"
    ):
        compute.place(admin, "manual", ResourceRequest(), holder="y")


def test_suspend_listener_and_drop_refused_while_services_use_the_pool(account, admin) -> None:
    compute = account.compute
    compute.create_pool(admin, "pool", instance_family="CPU_X64_S")
    compute.place(None, "pool", ResourceRequest(), holder="ML.APPS.SVC/0")
    calls = []

    def stop_services(ctx, pool_name, action):  # what the services component registers
        calls.append((pool_name, action))
        compute.release(None, pool_name, "ML.APPS.SVC/0")

    compute.add_pool_listener(stop_services)
    assert compute.alter_pool(admin, "pool", suspend=True)["state"] == "SUSPENDED"
    assert calls == [("POOL", "SUSPEND")]

    with account.catalog.transaction() as s:  # a service row, as the services manager writes it
        db = m.Database(name="ML", owner_role="ACCOUNTADMIN")
        s.add(db)
        s.flush()
        sch = m.Schema(database_id=db.id, name="APPS", owner_role="ACCOUNTADMIN")
        s.add(sch)
        s.flush()
        pool_id = s.scalar(select(m.ComputePool.id).where(m.ComputePool.name == "POOL"))
        s.add(m.Service(schema_id=sch.id, name="SVC", pool_id=pool_id, owner_role="ACCOUNTADMIN",
                        status="SUSPENDED"))  # fmt: skip
    with pytest.raises(ObjectInUseError, match=r"services use it \(ML.APPS.SVC \(SUSPENDED\)\)"):
        compute.drop_pool(admin, "pool")
    assert compute.show_pools(admin)[0]["num_services"] == 1


def test_privileges_on_pools(account, admin) -> None:
    sec = account.security
    compute = account.compute
    sec.create_role(admin, "analyst")
    analyst = RequestContext(user="ANA", role="ANALYST")
    with pytest.raises(PermissionDeniedError, match="needs CREATE COMPUTE POOL on ACCOUNT"):
        compute.create_pool(analyst, "mine", instance_family="CPU_X64_XS")
    compute.create_pool(admin, "shared", instance_family="CPU_X64_XS")
    assert compute.show_pools(analyst) == []  # no privilege: not even listed
    with pytest.raises(PermissionDeniedError, match="needs USAGE on COMPUTE POOL SHARED"):
        compute.place(analyst, "shared", ResourceRequest(), holder="h")
    sec.grant(admin, "USAGE", "COMPUTE POOL", "shared", "analyst")
    assert [r["name"] for r in compute.show_pools(analyst)] == ["SHARED"]
    assert compute.place(analyst, "shared", ResourceRequest(), holder="h").node == "SHARED-node-1"
    with pytest.raises(PermissionDeniedError, match="needs OPERATE"):
        compute.alter_pool(analyst, "shared", resume=True)
    with pytest.raises(PermissionDeniedError, match="does not own COMPUTE POOL SHARED"):
        compute.drop_pool(analyst, "shared")
    sec.grant(admin, "CREATE COMPUTE POOL", "ACCOUNT", None, "analyst")
    assert compute.create_pool(analyst, "mine", instance_family="CPU_X64_XS")["owner"] == "ANALYST"
    assert compute.drop_pool(analyst, "mine") is True


def test_pool_statements_through_sql(account, admin) -> None:
    run = lambda text: account.sql.execute(admin, text)  # noqa: E731
    run(
        "CREATE COMPUTE POOL IF NOT EXISTS cpu_pool MIN_NODES = 1 MAX_NODES = 2 "
        "INSTANCE_FAMILY = 'CPU_X64_S' AUTO_RESUME = TRUE AUTO_SUSPEND_SECS = 600"
    )
    result = run("SHOW COMPUTE POOLS LIKE 'CPU%'")
    row = dict(zip(result.columns, result.rows[0], strict=True))
    assert (row["name"], row["max_nodes"], row["auto_suspend_secs"]) == ("CPU_POOL", 2, 600)
    run("ALTER COMPUTE POOL cpu_pool SET MAX_NODES = 3")
    run("ALTER COMPUTE POOL cpu_pool SUSPEND")
    described = run("DESCRIBE COMPUTE POOL cpu_pool")
    row = dict(zip(described.columns, described.rows[0], strict=True))
    assert (row["state"], row["max_nodes"]) == ("SUSPENDED", 3)
    with pytest.raises(InvalidArgumentError, match="valid instance families: CPU_X64_XS"):
        run("CREATE COMPUTE POOL p2 INSTANCE_FAMILY = 'TPU_V5'")
    run("DROP COMPUTE POOL cpu_pool")
    assert run("SHOW COMPUTE POOLS").rows == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [(r"A\_B", ["A_B"]), ("A_B", ["AXB", "A_B"]), ("a%", ["AXB", "A_B"]), (r"%\%", [])],
)
def test_like_means_the_same_in_sql_and_in_the_api(account, admin, pattern, expected) -> None:
    """One LIKE for every surface: SQL SHOW and the manager (REST, CLI, client) agree, with
    ``\\`` escaping ``_`` and ``%``."""
    for name in ("A_B", "AXB", "B"):
        account.compute.create_pool(admin, name, instance_family="CPU_X64_XS")
    sql = account.sql.execute(admin, f"SHOW COMPUTE POOLS LIKE '{pattern}'")
    via_sql = sorted(row[sql.columns.index("name")] for row in sql.rows)
    via_api = sorted(row["name"] for row in account.compute.show_pools(admin, like=pattern))
    assert via_sql == via_api == expected
