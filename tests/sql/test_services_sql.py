"""Services from SQL, end to end: a real service (uv-built image, inference-server processes on
loopback) created with ``account.services.create_service``, then managed and called in SQL."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from neve.context import admin_context
from neve.errors import InvalidArgumentError, ObjectNotFoundError, SignatureError

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

N_ROWS = 100_000


def col(result, name: str) -> list:
    return [row[result.columns.index(name)] for row in result.rows]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[dict]:
    from sklearn.linear_model import LogisticRegression

    from neve.control.account import Account
    from neve.models import save_model

    home = tmp_path_factory.mktemp("sql-services-home")
    (home / "settings.toml").write_text(
        "service_supervisor_interval_secs = 0.3\nservice_start_timeout_secs = 120\n"
    )
    saved = os.environ.get("NEVE_HOME")
    os.environ["NEVE_HOME"] = str(home)
    account = Account.open(str(home))
    account.security.bootstrap()
    ctx = admin_context()
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"A": rng.normal(size=300), "B": rng.normal(size=300)})
    labels = (train.A - 0.5 * train.B > 0).astype(int)
    model_dir = tmp_path_factory.mktemp("clf") / "model"
    save_model(
        LogisticRegression().fit(train, labels),
        model_dir,
        sample_input=train,
        target_methods=["predict", "predict_proba"],
    )
    sql = account.sql
    ctx = ctx.with_(**sql.execute(ctx, "CREATE DATABASE ml").ctx_changes)
    account.registry.log_model(
        ctx, "ML", "PUBLIC", "CLF", "V1", model_dir, conda_dependencies=["scikit-learn"]
    )
    sql.execute(
        ctx,
        "CREATE COMPUTE POOL sql_pool MIN_NODES = 1 MAX_NODES = 1 INSTANCE_FAMILY = 'CPU_X64_S'",
    )
    sql.execute(ctx, "CREATE IMAGE REPOSITORY ml.public.images")
    account.services.create_service(
        ctx,
        model="ML.PUBLIC.CLF",
        version="V1",
        service_name="clf_svc",
        compute_pool="sql_pool",
        image_repo="ml.public.images",
        max_instances=1,
        num_workers=1,
        max_batch_rows=1000,
        ingress_enabled=True,
    )
    try:
        yield {"account": account, "ctx": ctx, "model_dir": model_dir}
    finally:
        account.services.drop_service(ctx, "ML.PUBLIC.CLF_SVC", if_exists=True)
        account.close()
        if saved is None:
            os.environ.pop("NEVE_HOME", None)
        else:
            os.environ["NEVE_HOME"] = saved


def run(env, text: str):
    return env["account"].sql.execute(env["ctx"], text)


def test_show_columns_are_the_same_with_and_without_rows(env) -> None:
    """An empty SHOW answers with the columns a non-empty one has (one shape for tools)."""
    from neve.sql.statements import SHOW_COLUMNS

    run(
        env,
        "CREATE NETWORK RULE IF NOT EXISTS ml.public.pypi_rule MODE = EGRESS "
        "TYPE = HOST_PORT VALUE_LIST = ('pypi.org')",
    )
    run(
        env,
        "CREATE EXTERNAL ACCESS INTEGRATION IF NOT EXISTS pypi_eai "
        "ALLOWED_NETWORK_RULES = (ml.public.pypi_rule) ENABLED = TRUE",
    )
    statements = {
        "SHOW COMPUTE POOLS": "SHOW COMPUTE POOLS",
        "SHOW IMAGE REPOSITORIES": "SHOW IMAGE REPOSITORIES IN SCHEMA ml.public",
        "SHOW NETWORK RULES": "SHOW NETWORK RULES IN SCHEMA ml.public",
        "SHOW INTEGRATIONS": "SHOW EXTERNAL ACCESS INTEGRATIONS",
        "SHOW SERVICES": "SHOW SERVICES",
        "SHOW ENDPOINTS": "SHOW ENDPOINTS IN SERVICE ml.public.clf_svc",
        "SHOW SERVICE CONTAINERS": "SHOW SERVICE CONTAINERS IN SERVICE ml.public.clf_svc",
        "SHOW MODELS": "SHOW MODELS IN SCHEMA ml.public",
        "SHOW VERSIONS": "SHOW VERSIONS IN MODEL ml.public.clf",
        "SHOW DATABASES": "SHOW DATABASES",
        "SHOW SCHEMAS": "SHOW SCHEMAS IN DATABASE ml",
        "SHOW ROLES": "SHOW ROLES",
        "SHOW USERS": "SHOW USERS",
    }
    mismatched = {}
    for kind, text in statements.items():
        result = run(env, text)
        assert result.rows, f"{text} returned no rows to compare"
        if result.columns != SHOW_COLUMNS[kind]:
            mismatched[kind] = (result.columns, SHOW_COLUMNS[kind])
    assert mismatched == {}


def test_100k_rows_scored_through_the_service_equal_the_in_process_run(env) -> None:
    from neve.models import load_model

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=N_ROWS), "b": rng.normal(size=N_ROWS)})
    frame.insert(0, "id", np.arange(N_ROWS))
    env["account"].sql.write_table(env["ctx"], "features", pa.Table.from_pandas(frame))
    result = run(env, "SELECT id, clf_svc_predict(a, b) AS label FROM features ORDER BY id")
    expected = load_model(env["model_dir"]).call("predict", frame[["a", "b"]]).iloc[:, 0]
    np.testing.assert_array_equal(result.arrow.column("label").to_numpy(), expected.to_numpy())
    # vectorized: batches of the service's max_batch_rows (1000), never one request per row
    assert result.stats["rows"] == N_ROWS
    assert N_ROWS / 1000 <= result.stats["batches"] <= N_ROWS / 1000 + 50
    proba = run(
        env,
        "SELECT ml.public.clf_svc!predict_proba(a, b)['output_feature_1'] AS p "
        "FROM features WHERE id < 5 ORDER BY id",
    )
    expected_p = load_model(env["model_dir"]).call("predict_proba", frame[["a", "b"]].head(5))
    np.testing.assert_allclose(col(proba, "p"), expected_p["output_feature_1"].to_numpy())
    with pytest.raises(SignatureError, match="CLF_SVC_PREDICT takes 2 argument"):
        run(env, "SELECT clf_svc_predict(a) FROM features")


def test_wrong_arity_or_types_are_rejected_before_any_request(env) -> None:
    account = env["account"]
    account.sql.write_table(
        env["ctx"], "mixed", pa.table({"a": [1.0, 2.0], "s": ["x", "y"], "n": [1, 2]})
    )
    totals = account.services.invoker.totals
    before, retries_before = totals.requests, totals.retries
    with pytest.raises(SignatureError) as info:
        run(env, "SELECT clf_svc_predict(a) FROM mixed")
    assert "CLF_SVC_PREDICT takes 2 argument(s) (A DOUBLE, B DOUBLE) but was called with 1" in (
        str(info.value)
    )
    with pytest.raises(SignatureError) as info:
        run(env, "SELECT clf_svc_predict(a, s) FROM mixed")
    assert "CLF_SVC_PREDICT expects (A DOUBLE, B DOUBLE)" in str(info.value)
    assert "called with (DOUBLE, VARCHAR)" in str(info.value)
    with pytest.raises(SignatureError, match="clf_svc!predict takes 2 argument"):
        run(env, "SELECT clf_svc!predict(a, a, a) FROM mixed")
    assert totals.requests == before  # nothing reached the service
    # an integer column is widened to DOUBLE as SQL does: that call is valid and is sent
    assert len(run(env, "SELECT clf_svc_predict(n, a) FROM mixed").rows) == 2
    assert totals.requests - totals.retries == before - retries_before + 1


def test_nulls_unknown_names_and_usage_privilege(env) -> None:
    from neve.context import RequestContext
    from neve.errors import PermissionDeniedError

    account = env["account"]
    account.sql.write_table(env["ctx"], "gaps", pa.table({"a": [1.0, None], "b": [1.0, 2.0]}))
    assert run(env, "SELECT clf_svc_predict(a, b) FROM gaps").rows == [[1], [None]]
    # a STRUCT result is NULL as a whole for a row that was not sent
    (first,), (second,) = run(env, "SELECT clf_svc!predict_proba(a, b) FROM gaps").rows
    assert set(first) == {"output_feature_0", "output_feature_1"} and second is None
    assert first["output_feature_0"] + first["output_feature_1"] == pytest.approx(1.0)
    with pytest.raises(ObjectNotFoundError, match="has no method 'explain'"):
        run(env, "SELECT clf_svc!explain(a, b) FROM gaps")
    with pytest.raises(ObjectNotFoundError, match=r"function ML\.PUBLIC\.NOPE_PREDICT"):
        run(env, "SELECT ml.public.nope_predict(a, b) FROM gaps")
    run(env, "CREATE ROLE analyst; GRANT ROLE analyst TO USER admin")
    run(env, "GRANT USAGE ON DATABASE ml TO ROLE analyst")
    run(env, "GRANT USAGE ON SCHEMA ml.public TO ROLE analyst")
    analyst = env["ctx"].with_(role="ANALYST")
    with pytest.raises(PermissionDeniedError, match="USAGE on SERVICE"):
        account.sql.execute(analyst, "SELECT clf_svc_predict(a, b) FROM gaps")
    run(env, "GRANT USAGE ON SERVICE clf_svc TO ROLE analyst")
    rows = account.sql.execute(analyst, "SELECT clf_svc_predict(a, b) FROM gaps").rows
    assert rows == [[1], [None]]
    assert isinstance(analyst, RequestContext)


def test_function_options_and_service_errors(env) -> None:
    from neve.errors import ModelExecutionError
    from neve.models import load_model

    frame = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0)})
    env["account"].sql.write_table(env["ctx"], "ten", pa.Table.from_pandas(frame))
    run(env, "ALTER FUNCTION clf_svc_predict SET MAX_BATCH_ROWS = 3")
    result = run(env, "SELECT clf_svc_predict(a, b) FROM ten")
    assert len(result.rows) == 10 and result.stats == {"batches": 4, "rows": 10}
    expected = load_model(env["model_dir"]).call("predict", frame.rename(columns=str.upper))
    assert col(result, result.columns[0]) == expected.iloc[:, 0].tolist()
    shown = run(env, "SHOW FUNCTIONS LIKE 'clf_svc_pred%'")
    assert col(shown, "name") == ["CLF_SVC_PREDICT", "CLF_SVC_PREDICT_PROBA"]
    options = col(shown, "options")[0]
    assert options["MAX_BATCH_ROWS"] == 3 and options["ON_BATCH_FAILURE"] == "ABORT"
    assert col(shown, "options")[1]["MAX_BATCH_ROWS"] == 1000  # the service's max_batch_rows
    described = dict(run(env, "DESCRIBE FUNCTION clf_svc_predict").rows)
    assert described["signature"] == "(A DOUBLE, B DOUBLE)"
    assert described["returns"] == "BIGINT"
    run(env, "ALTER FUNCTION clf_svc_predict UNSET MAX_BATCH_ROWS")
    assert col(run(env, "SHOW FUNCTIONS"), "options")[0]["MAX_BATCH_ROWS"] == 1000
    # A service error fails the query with the service's own message (ABORT, the default):
    # the model refuses NaN inputs.
    query = "SELECT clf_svc_predict(a, CASE WHEN a = 4 THEN 'NaN'::DOUBLE ELSE b END) FROM ten"
    with pytest.raises(ModelExecutionError, match=r"(?i)service ML\.PUBLIC\.CLF_SVC.*nan"):
        run(env, query)
    # ... or NULLs for the failed batch with ON_BATCH_FAILURE = RETURN_NULL
    run(env, "ALTER FUNCTION clf_svc_predict SET ON_BATCH_FAILURE = RETURN_NULL")
    rows = run(env, query).rows
    assert rows == [[None]] * 10
    run(env, "ALTER FUNCTION clf_svc_predict SET ON_BATCH_FAILURE = ABORT")
    with pytest.raises(InvalidArgumentError, match="ON_BATCH_FAILURE must be ABORT or RETURN_NULL"):
        run(env, "ALTER FUNCTION clf_svc_predict SET ON_BATCH_FAILURE = IGNORE")


def test_show_describe_endpoints_containers(env) -> None:
    shown = run(env, "SHOW SERVICES")
    assert col(shown, "name") == ["CLF_SVC"]
    for column in ("status", "compute_pool", "min_instances", "max_instances", "owner"):
        assert column in shown.columns
    assert col(shown, "compute_pool") == ["SQL_POOL"]
    assert col(run(env, "SHOW SERVICES IN COMPUTE POOL sql_pool"), "name") == ["CLF_SVC"]
    assert col(run(env, "SHOW SERVICES IN SCHEMA ml.public"), "name") == ["CLF_SVC"]
    assert run(env, "SHOW SERVICES LIKE 'other%'").rows == []
    described = run(env, "DESCRIBE SERVICE clf_svc")
    assert col(described, "status") == ["RUNNING"]
    spec = yaml.safe_load(col(described, "spec")[0])  # the reference's document shape
    [container] = spec["spec"]["containers"]
    assert container["env"]["MODEL_REF"] == "ML.PUBLIC.CLF/V1"
    assert container["image"].endswith(
        ":" + col(run(env, "SHOW IMAGES IN IMAGE REPOSITORY ml.public.images"), "tags")[0]
    )
    assert spec["spec"]["endpoints"][0]["public"] is True
    endpoints = run(env, "SHOW ENDPOINTS IN SERVICE clf_svc")
    assert endpoints.columns[:5] == ["name", "port", "protocol", "ingress_enabled", "ingress_url"]
    assert col(endpoints, "ingress_enabled") == [True]
    containers = run(env, "SHOW SERVICE CONTAINERS IN SERVICE ml.public.clf_svc")
    assert col(containers, "container_name") == ["model-inference"]
    assert col(containers, "service_name") == ["CLF_SVC"]
    status = json.loads(run(env, "CALL SYSTEM$GET_SERVICE_STATUS('clf_svc')").rows[0][0])
    assert [(x["instanceId"], x["status"], x["health"]) for x in status] == [
        ("0", "READY", "HEALTHY")
    ]
    logs = run(env, "CALL SYSTEM$GET_SERVICE_LOGS('clf_svc', 0, 'model-inference', 50)")
    assert logs.columns == ["SYSTEM$GET_SERVICE_LOGS"] and logs.rows[0][0].strip()
    assert len(logs.rows[0][0].splitlines()) <= 50
    jobs = env["account"].environments.show_jobs(env["ctx"])
    build = next(j["name"] for j in jobs if j["name"].startswith("MODEL_BUILD_"))
    build_log = run(env, f"CALL SYSTEM$GET_SERVICE_LOGS('{build}', 0, 'model-build')")
    assert build_log.rows[0][0].strip()
    images = run(env, "SHOW IMAGES IN IMAGE REPOSITORY ml.public.images")
    assert len(images.rows) == 1 and col(images, "size_bytes")[0] > 0
    functions = run(env, "SHOW FUNCTIONS")
    assert col(functions, "name") == ["CLF_SVC_PREDICT", "CLF_SVC_PREDICT_PROBA"]
    with pytest.raises(ObjectNotFoundError):
        run(env, "DESCRIBE SERVICE nope")


def test_alter_suspend_and_auto_resume_on_query(env) -> None:
    account = env["account"]
    with pytest.raises(InvalidArgumentError, match="immutable"):
        run(env, "ALTER SERVICE clf_svc SET NUM_WORKERS = 2")
    run(env, "ALTER SERVICE clf_svc SET MIN_INSTANCES = 1 MAX_INSTANCES = 1 COMMENT = 'sql'")
    assert col(run(env, "DESCRIBE SERVICE clf_svc"), "comment") == ["sql"]
    run(env, "ALTER SERVICE clf_svc SUSPEND")
    wait_status(env, "SUSPENDED")
    account.sql.write_table(env["ctx"], "few", pa.table({"a": [1.0, -1.0], "b": [0.0, 0.0]}))
    # the first query resumes the suspended service and waits for it
    assert run(env, "SELECT clf_svc_predict(a, b) FROM few").rows == [[1], [0]]
    assert col(run(env, "DESCRIBE SERVICE clf_svc"), "status") == ["RUNNING"]
    # ALTER SERVICE ... RESUME brings a suspended service back without a query
    run(env, "ALTER SERVICE clf_svc SUSPEND")
    wait_status(env, "SUSPENDED")
    run(env, "ALTER SERVICE clf_svc RESUME")
    wait_status(env, "RUNNING")
    run(env, "ALTER SERVICE IF EXISTS no_such_service SUSPEND")


def wait_status(env, status: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while col(run(env, "DESCRIBE SERVICE clf_svc"), "status") != [status]:
        assert time.monotonic() < deadline, f"service did not reach {status}"
        time.sleep(0.2)


def test_service_functions_reach_only_the_schemas_the_role_may_use(env) -> None:
    """A service function over a private table, by a role with USAGE on the service but not on
    the table's schema: refused whether the table is named or reached through query_table."""
    from neve.errors import PermissionDeniedError

    account = env["account"]
    run(env, "CREATE SCHEMA IF NOT EXISTS ml.private")
    account.sql.write_table(
        env["ctx"], "ml.private.secret", pa.table({"a": [1.0, 2.0], "b": [0.0, 0.0]})
    )
    run(env, "CREATE ROLE IF NOT EXISTS snoop; GRANT ROLE snoop TO USER admin")
    run(env, "GRANT USAGE ON DATABASE ml TO ROLE snoop")
    run(env, "GRANT USAGE ON SCHEMA ml.public TO ROLE snoop")
    run(env, "GRANT USAGE ON SERVICE clf_svc TO ROLE snoop")
    snoop = env["ctx"].with_(role="SNOOP", database="ML", schema="PUBLIC")
    named = "SELECT clf_svc_predict(a, b) FROM ml.private.secret"
    hidden = """SELECT clf_svc_predict(a, b) FROM query_table('"ML__PRIVATE"."SECRET"')"""
    with pytest.raises(PermissionDeniedError, match=r"USAGE on SCHEMA ML\.PRIVATE"):
        account.sql.execute(snoop, named)
    with pytest.raises(ObjectNotFoundError, match=r"ML\.PRIVATE"):
        account.sql.execute(snoop, hidden)
    run(env, "GRANT USAGE ON SCHEMA ml.private TO ROLE snoop")
    assert len(account.sql.execute(snoop, named).rows) == 2
    assert len(account.sql.execute(snoop, hidden).rows) == 2


def test_drop_service_drops_its_functions(env) -> None:
    run(env, "DROP SERVICE clf_svc")
    run(env, "DROP SERVICE IF EXISTS clf_svc")
    assert run(env, "SHOW SERVICES").rows == []
    assert run(env, "SHOW FUNCTIONS").rows == []
    with pytest.raises(Exception, match="CLF_SVC_PREDICT|clf_svc_predict"):
        run(env, "SELECT clf_svc_predict(a, b) FROM few")
