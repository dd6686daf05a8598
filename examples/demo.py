"""neve end to end: the user path of DESIGN.md on the embedded default account.

    make demo

Trains a small XGBoost forecaster, logs it to the registry, runs it in-process, deploys it as a
service of 2 instances, and calls it from Python, SQL and HTTP (with a token); then suspends the
service, calls it again (auto-resume) and deletes it. Set NEVE_HOME to use another account dir.
"""

from __future__ import annotations

import os
import sys
import time

import httpx
import numpy as np
import pandas as pd
import xgboost as xgb

import neve


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"A": rng.normal(size=2000), "B": rng.normal(size=2000)})
    y = 3 * train.A - 2 * train.B + rng.normal(scale=0.1, size=2000)
    model = xgb.XGBRegressor(n_estimators=50, max_depth=4).fit(train, y)
    test = train.head(5)

    step("connect (starts the control plane in the background if none runs)")
    session = neve.connect()
    # the session had no current schema: from here on it works in ml.registry (names below
    # are unqualified, as in DESIGN.md's user path)
    reg = neve.Registry(session, database_name="ml", schema_name="registry")

    step("log the model")
    name = f"forecast_{int(time.time())}"
    mv = reg.log_model(
        model,
        model_name=name,
        version_name="v1",
        conda_dependencies=["xgboost"],
        sample_input_data=train,
    )
    print(pd.DataFrame(mv.show_functions())[["name", "target_method"]].to_string(index=False))

    step("run in-process (warehouse mode)")
    print(mv.run(test, function_name="predict"))

    step("create a compute pool and an image repository")
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS cpu_pool MIN_NODES=1 MAX_NODES=2 "
        "INSTANCE_FAMILY='CPU_X64_S' AUTO_RESUME=TRUE"
    ).collect()
    session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.registry.images").collect()

    step("deploy as a service of 2 instances (builds the model environment once)")
    svc = f"{name}_svc"
    mv.create_service(
        service_name=svc,
        service_compute_pool="cpu_pool",
        image_repo="ml.registry.images",
        ingress_enabled=True,
        max_instances=2,
        num_workers=1,
    )
    print(mv.list_services()[["name", "status", "inference_endpoint"]].to_string(index=False))

    step("call it from Python")
    print(mv.run(test, function_name="predict", service_name=svc))

    step("call it from SQL")
    session.sql("CREATE OR REPLACE TABLE features (a DOUBLE, b DOUBLE)").collect()
    session.write_pandas(test, "features")
    for row in session.sql(f"SELECT a, b, {svc}_predict(a, b) AS forecast FROM features").collect():
        print(row)

    step("call it over HTTP with a token")
    endpoint = session.sql(f"SHOW ENDPOINTS IN SERVICE {svc}").collect()[0]
    token = session.create_token(f"demo_{int(time.time())}")
    url = f"{endpoint['ingress_url']}/predict"
    body = {"data": [[i, float(a), float(b)] for i, (a, b) in enumerate(test.to_numpy())]}
    resp = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    print("ingress host:", endpoint["ingress_host"])
    print("POST", url, "->", resp.status_code, resp.json())

    step("suspend, then call again: the call resumes it")
    session.sql(f"ALTER SERVICE {svc} SUSPEND").collect()
    print(mv.run(test, function_name="predict", service_name=svc))

    step("delete the service")
    mv.delete_service(svc)
    reg.delete_model(name)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s (account: {session.account_home})")
    session.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
