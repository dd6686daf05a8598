"""The daemon's periodic jobs run for real: a compute pool with AUTO_SUSPEND_SECS, created and
watched through SQL on a running control plane, is suspended once idle that long."""

from __future__ import annotations

import pytest
from waits import wait_for

from neve.control.serve import PERIODIC_JOBS

pytestmark = pytest.mark.e2e  # starts a control plane daemon


def test_every_periodic_job_is_listed() -> None:
    assert [name for name, _, _ in PERIODIC_JOBS] == [
        "compute.suspend_idle_pools",
        "security.purge_expired_tokens",
    ]


def test_idle_pool_is_suspended_after_auto_suspend_secs(control_plane) -> None:
    session = control_plane
    session.sql(
        "CREATE COMPUTE POOL idle_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_XS' AUTO_SUSPEND_SECS = 1"
    ).collect()
    session.sql(
        "CREATE COMPUTE POOL busy_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_XS' AUTO_SUSPEND_SECS = 0"
    ).collect()

    def states() -> dict[str, str]:
        rows = session.sql("SHOW COMPUTE POOLS").to_pandas()
        return dict(zip(rows["name"], rows["state"], strict=True))

    wait_for(lambda: states()["IDLE_POOL"] == "SUSPENDED", 30, "IDLE_POOL to auto-suspend")
    assert states()["BUSY_POOL"] == "IDLE"  # AUTO_SUSPEND_SECS = 0: never suspended
