"""One account per test module with a pool, an image repository and a logged scikit-learn model.

Everything is real: the catalog (SQLite), the image (a uv environment built once per module and
shared by every service of the module), inference-server processes on loopback ports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from svc_helpers import DB, POOL, REPO, SCHEMA

from neve.context import RequestContext, admin_context
from neve.identifiers import QualifiedName


@dataclass
class Env:
    account: object
    home: Path
    ctx: RequestContext
    model_dir: Path
    test_df: pd.DataFrame
    created: list[str] = field(default_factory=list)

    def sql(self, text: str, ctx: RequestContext | None = None):
        return self.account.sql.execute(ctx or self.ctx, text)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    from sklearn.linear_model import LinearRegression

    from neve.control.account import Account
    from neve.models import save_model

    home = tmp_path_factory.mktemp("services-home")
    # A fast supervisor and short waits keep the module quick on 2 cores.
    (home / "settings.toml").write_text(
        "service_supervisor_interval_secs = 0.3\nservice_start_timeout_secs = 120\n"
        "service_scale_down_idle_secs = 2\n"
    )
    saved = os.environ.get("NEVE_HOME")
    os.environ["NEVE_HOME"] = str(home)
    account = Account.open(str(home))
    ctx = admin_context(DB, SCHEMA)
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"A": rng.normal(size=300), "B": rng.normal(size=300)})
    y = 3 * train.A - 2 * train.B + 0.5
    model_dir = tmp_path_factory.mktemp("lin") / "model"
    save_model(LinearRegression().fit(train, y), model_dir, sample_input=train)
    account.registry.log_model(
        ctx, DB, SCHEMA, "LIN", "V1", model_dir, conda_dependencies=["scikit-learn"]
    )
    env = Env(account, home, ctx, model_dir, train.head(37).reset_index(drop=True))
    env.sql(
        f"CREATE COMPUTE POOL IF NOT EXISTS {POOL} MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S' AUTO_RESUME = TRUE"
    )
    env.sql(f"CREATE IMAGE REPOSITORY IF NOT EXISTS {REPO}")
    try:
        yield env
    finally:
        services = account.services
        for row in services.show_services(ctx):
            try:
                services.drop_service(
                    ctx, QualifiedName(row["database_name"], row["schema_name"], row["name"])
                )
            except Exception:  # noqa: BLE001 (best effort: the test already failed)
                pass
        account.close()
        if saved is None:
            os.environ.pop("NEVE_HOME", None)
        else:
            os.environ["NEVE_HOME"] = saved
