"""Dropping a service while its image builds stops the build: uv is killed, the job ends
CANCELLED naming the drop, no half-built image or process is left, and the service is gone.

A fresh account has no base environment yet, so its first build takes seconds (installing the
base packages from uv's cache): long enough to drop the service in the middle of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from sklearn.linear_model import LinearRegression
from svc_helpers import DB, POOL, REPO, SCHEMA

from neve.context import admin_context
from neve.control.account import Account
from neve.errors import ObjectNotFoundError
from neve.models import save_model

SVC = "ML.REG.DROPPED_SVC"


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in arg for arg in proc.info["cmdline"] or []):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


@pytest.fixture
def account(tmp_path: Path):
    account = Account.open(str(tmp_path / "home"))
    account.security.bootstrap()
    ctx = admin_context(DB, SCHEMA)
    train = pd.DataFrame({"A": np.arange(20.0), "B": np.arange(20.0) % 3})
    save_model(LinearRegression().fit(train, train.A), tmp_path / "lin", sample_input=train)
    account.registry.log_model(
        ctx, DB, SCHEMA, "LIN", "V1", tmp_path / "lin", conda_dependencies=["scikit-learn"]
    )
    account.sql.execute(
        ctx, f"CREATE COMPUTE POOL {POOL} MIN_NODES = 1 MAX_NODES = 1 INSTANCE_FAMILY = 'CPU_X64_S'"
    )
    account.sql.execute(ctx, f"CREATE IMAGE REPOSITORY {REPO}")
    try:
        yield account, ctx
    finally:
        account.services.close()
        account.environments.close()
        account.close()


def test_drop_while_building_cancels_the_build(account) -> None:
    account, ctx = account
    services, envs = account.services, account.environments
    row = services.create_service(
        ctx,
        model="ML.REG.LIN",
        version="V1",
        service_name=SVC,
        compute_pool=POOL,
        image_repo=REPO,
        block=False,
    )
    assert row["status"] in ("PENDING", "BUILDING"), row
    # the build's job, once it is installing the base packages (uv running)
    deadline = time.monotonic() + 120
    job = None
    while True:
        jobs = [j for j in envs.show_jobs(ctx) if j.get("service_id") is not None]
        if jobs:
            job = jobs[0]
            log = Path(job["log_path"])
            if log.exists() and "install base packages" in log.read_text():
                break
        assert time.monotonic() < deadline, f"the build did not reach the install step: {jobs}"
        time.sleep(0.05)

    images = account.settings.images_dir
    services.drop_service(ctx, SVC)

    with pytest.raises(ObjectNotFoundError):
        services.describe_service(ctx, SVC)
    done = envs.get_job(ctx, job["name"])
    assert done["status"] == "CANCELLED", done
    assert "dropped by" in done["status_reason"], done["status_reason"]
    assert done["image_status"] == "FAILED"
    assert "CANCELLED" in envs.job_logs(ctx, job["name"], last_n=3)
    assert not any(images.glob("base-*")), "a half-built base was left"
    assert _processes_mentioning(str(images)) == []  # uv was killed with its process group
