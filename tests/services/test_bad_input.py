"""Bad create_service input: a clear error naming the problem, and nothing half-created
(no service row, no function, no placement, no build job, no process)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from svc_helpers import MODEL, POOL, REPO, child_pids

from neve.catalog import models as m
from neve.errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    NeveError,
    ObjectNotFoundError,
    ResourceError,
)

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

GOOD = dict(model=MODEL, version="V1", service_name="BAD_SVC", compute_pool=POOL, image_repo=REPO)


def _counts(env) -> dict[str, int]:
    with env.account.catalog.transaction() as s:
        return {
            name: s.scalar(select(func.count()).select_from(table))
            for name, table in (
                ("services", m.Service),
                ("instances", m.ServiceInstance),
                ("functions", m.Function),
                ("allocations", m.PoolAllocation),
                ("jobs", m.Job),
            )
        }


@pytest.mark.parametrize(
    ("changes", "error", "fragments"),
    [
        ({"compute_pool": "NO_SUCH_POOL"}, ObjectNotFoundError, ["compute pool NO_SUCH_POOL"]),
        ({"image_repo": "ML.REG.NO_REPO"}, ObjectNotFoundError, ["image repository", "NO_REPO"]),
        ({"version": "V9"}, ObjectNotFoundError, ["no version or alias V9"]),
        (
            {"build_external_access_integrations": ["NO_EAI"]},
            ObjectNotFoundError,
            ["external access integration NO_EAI"],
        ),
        ({"cpu_requests": "64"}, ResourceError, ["64 vCPU", f"compute pool {POOL}", "CPU_X64_S"]),
        ({"memory_requests": "100Gi"}, ResourceError, ["100 GiB", f"compute pool {POOL}"]),
        ({"num_workers": 0}, InvalidArgumentError, ["num_workers must be >= 1"]),
        ({"gpu_requests": 1}, InvalidArgumentError, ["has no GPUs", POOL]),
        ({"max_instances": 2, "min_instances": 5}, InvalidArgumentError, ["min_instances (5)"]),
        ({"service_name": "bad name!"}, InvalidIdentifierError, ["invalid service name"]),
    ],
)
def test_bad_input_is_refused_cleanly(env, changes, error, fragments):
    before_counts, before_pids = _counts(env), child_pids()
    with pytest.raises(error) as info:
        env.account.services.create_service(env.ctx, **{**GOOD, **changes})
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    assert _counts(env) == before_counts
    assert child_pids() <= before_pids


def test_gpu_for_a_cpu_only_model_type(env):
    env.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS GPU_POOL MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'GPU_NV_S'"
    )
    before = _counts(env)
    with pytest.raises(InvalidArgumentError, match="runs only on CPU"):
        env.account.services.create_service(
            env.ctx, **{**GOOD, "compute_pool": "GPU_POOL", "gpu_requests": "1"}
        )
    assert _counts(env) == before


def test_unknown_service_operations(env):
    services = env.account.services
    for call in (
        lambda: services.describe_service(env.ctx, "NOPE"),
        lambda: services.drop_service(env.ctx, "NOPE"),
        lambda: services.invoke(env.ctx, "NOPE", "predict", [[0, 1.0, 2.0]]),
        lambda: services.get_service_logs(env.ctx, "NOPE", 0, "model-inference", 10),
    ):
        with pytest.raises(ObjectNotFoundError, match="service ML.REG.NOPE does not exist"):
            call()
    services.drop_service(env.ctx, "NOPE", if_exists=True)
    with pytest.raises(NeveError):
        services.alter_service(env.ctx, "NOPE", suspend=True)
