"""Service functions in queries, against a real inference server on a loopback port.

The server is started with ``neve.server.launch.start_server`` on a model trained here and is
reached through the services package's ``ServiceInvoker`` (the HTTP client behind
``ServiceManager.invoke``). The function rows come from ``register_service_functions`` on a real
catalog; the engine's ``service_caller`` points the functions at that server.
"""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import select

from neve.catalog import models as m
from neve.errors import (
    ModelExecutionError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SignatureError,
)
from neve.models import load_model, read_manifest, save_model
from neve.sql.functions import register_service_functions

N_ROWS = 100_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"A": rng.normal(size=400), "B": rng.normal(size=400)})
    labels = (train["A"] + 0.5 * train["B"] > 0).astype(int)
    model = LogisticRegression().fit(train, labels)
    path = tmp_path_factory.mktemp("model") / "m"
    save_model(model, path, sample_input=train, target_methods=["predict", "predict_proba"])
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    from neve.server.launch import start_server

    proc = start_server(model_dir, num_workers=1, max_batch_rows=1024)
    try:
        proc.wait_ready(60)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def invoker():
    from neve.services.invoke import ServiceInvoker

    inv = ServiceInvoker(threads=4)
    yield inv
    inv.close()


def server_requests(server) -> float:
    """Requests the server answered, from its Prometheus /metrics."""
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("neve_server_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def scored(sql, account, server, invoker, model_dir):
    """ML.PUBLIC with a service SVC (functions SVC_PREDICT, SVC_PREDICT_PROBA) on ``server``."""
    sql("CREATE DATABASE ml")
    manifest = read_manifest(model_dir)
    with account.catalog.transaction() as s:
        schema = s.scalar(select(m.Schema).where(m.Schema.name == "PUBLIC"))
        pool = m.ComputePool(
            name="POOL",
            instance_family="CPU_X64_S",
            min_nodes=1,
            max_nodes=1,
            owner_role="SYSADMIN",
        )
        s.add(pool)
        s.flush()
        service = m.Service(
            schema_id=schema.id,
            name="SVC",
            pool_id=pool.id,
            status="RUNNING",
            owner_role="ACCOUNTADMIN",
            spec={"max_batch_rows": 500},
        )
        s.add(service)
        s.flush()
        register_service_functions(s, service, manifest["methods"])

    calls: list[tuple[str, str, int]] = []

    def caller(ctx, name, method, rows, *, timeout_s=300):
        calls.append((name, method, len(rows)))
        return invoker.invoke(
            label=name,
            route=method,
            rows=rows,
            endpoints=lambda refresh, remaining: [("127.0.0.1", server.port)],
            chunk_rows=None,
            timeout_s=timeout_s,
        )

    account.sql.service_caller = caller
    sql.calls = calls
    return sql


def test_100k_rows_scored_by_a_service_function_equal_the_in_process_run(
    scored, account, model_dir
) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=N_ROWS), "b": rng.normal(size=N_ROWS)})
    frame.insert(0, "id", np.arange(N_ROWS))
    account.sql.write_table(scored.ctx, "features", pa.Table.from_pandas(frame))

    result = scored("SELECT id, svc_predict(a, b) AS label FROM features ORDER BY id")
    got = result.arrow.to_pandas()
    expected = load_model(model_dir).call("predict", frame[["a", "b"]])
    assert len(got) == N_ROWS
    np.testing.assert_array_equal(got["label"].to_numpy(), expected.iloc[:, 0].to_numpy())
    # vectorized: batches of the function's MAX_BATCH_ROWS (the service spec's 500), not rows
    assert result.stats["rows"] == N_ROWS
    assert max(n for _, _, n in scored.calls) == 500
    assert len(scored.calls) == result.stats["batches"] < N_ROWS / 400


def test_multiple_outputs_are_a_struct_and_bang_syntax_works(scored, account, model_dir) -> None:
    frame = pd.DataFrame({"a": [0.5, -2.0, 1.0], "b": [0.1, 0.3, -4.0]})
    account.sql.write_table(scored.ctx, "small", pa.Table.from_pandas(frame))
    expected = load_model(model_dir).call("predict_proba", frame)
    result = scored(
        "SELECT svc_predict_proba(a, b)['output_feature_1'] AS p1, "
        "ml.public.svc!predict_proba(a, b) AS whole, svc!PREDICT(a, b) FROM small"
    )
    assert result.columns == ["p1", "whole", "svc!PREDICT(a, b)"]
    assert result.types[1] == "STRUCT(output_feature_0 DOUBLE, output_feature_1 DOUBLE)"
    p1 = [r[0] for r in result.rows]
    np.testing.assert_allclose(p1, expected["output_feature_1"].to_numpy())
    assert result.rows[0][1] == {
        "output_feature_0": pytest.approx(expected.iloc[0, 0]),
        "output_feature_1": pytest.approx(expected.iloc[0, 1]),
    }
    assert [r[2] for r in result.rows] == [1, 0, 0]


def test_wrong_arity_or_types_are_rejected_at_planning(scored, account, server) -> None:
    account.sql.write_table(
        scored.ctx, "mixed", pa.table({"a": [1.0, 2.0], "s": ["x", "y"], "n": [1, 2]})
    )
    before = server_requests(server)
    with pytest.raises(SignatureError) as info:
        scored("SELECT svc_predict(a) FROM mixed")
    assert "SVC_PREDICT takes 2 argument(s) (A DOUBLE, B DOUBLE) but was called with 1" in str(
        info.value
    )
    with pytest.raises(SignatureError) as info:
        scored("SELECT svc_predict(a, s) FROM mixed")
    message = str(info.value)
    assert "SVC_PREDICT expects (A DOUBLE, B DOUBLE)" in message
    assert re.search(r"called with \(DOUBLE, VARCHAR\)", message)
    with pytest.raises(SignatureError, match="svc!predict takes 2 argument"):
        scored("SELECT svc!predict(a, a, a) FROM mixed")
    # an integer column is widened to DOUBLE as SQL does: that call is valid
    assert len(scored.rows("SELECT svc_predict(n, a) FROM mixed")) == 2
    assert server_requests(server) - before == 1  # only the valid query reached the server
    assert len(scored.calls) == 1


def test_nulls_unknown_methods_and_usage(scored, account, sql_factory) -> None:
    from neve.context import RequestContext

    account.sql.write_table(scored.ctx, "gaps", pa.table({"a": [1.0, None], "b": [1.0, 2.0]}))
    assert scored.rows("SELECT svc_predict(a, b) FROM gaps") == [[1], [None]]
    with pytest.raises(ObjectNotFoundError, match="has no method 'explain'"):
        scored("SELECT svc!explain(a, b) FROM gaps")
    with pytest.raises(ObjectNotFoundError, match=r"function ML\.PUBLIC\.NOPE_PREDICT"):
        scored("SELECT ml.public.nope_predict(a, b) FROM gaps")
    scored("CREATE ROLE analyst; GRANT USAGE ON DATABASE ml TO ROLE analyst")
    scored("GRANT USAGE ON SCHEMA ml.public TO ROLE analyst")
    analyst = sql_factory(
        RequestContext(user="ADMIN", role="ANALYST", database="ML", schema="PUBLIC")
    )
    with pytest.raises(PermissionDeniedError, match="USAGE on SERVICE"):
        analyst("SELECT svc_predict(a, b) FROM gaps")
    scored("GRANT USAGE ON SERVICE ml.public.svc TO ROLE analyst")
    assert analyst.rows("SELECT svc_predict(a, b) FROM gaps") == [[1], [None]]


def test_function_options_and_batch_failures(scored, account) -> None:
    frame = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0)})
    account.sql.write_table(scored.ctx, "ten", pa.Table.from_pandas(frame))
    scored("ALTER FUNCTION svc_predict SET MAX_BATCH_ROWS = 3")
    scored.calls.clear()
    assert len(scored.rows("SELECT svc_predict(a, b) FROM ten")) == 10
    assert sorted(n for _, _, n in scored.calls) == [1, 3, 3, 3]
    shown = scored("SHOW FUNCTIONS LIKE 'svc_pred%'")
    names = [r[shown.columns.index("name")] for r in shown.rows]
    assert names == ["SVC_PREDICT", "SVC_PREDICT_PROBA"]
    options = shown.rows[0][shown.columns.index("options")]
    assert options["MAX_BATCH_ROWS"] == 3 and options["ON_BATCH_FAILURE"] == "ABORT"
    described = dict(scored("DESCRIBE FUNCTION svc_predict").rows)
    assert described["signature"] == "(A DOUBLE, B DOUBLE)"

    # A service error fails the query with the service's message (ABORT, the default) ...
    def broken(ctx, name, method, rows, *, timeout_s=300):
        raise ModelExecutionError(f"service {name} ({method}): boom in the model")

    real = account.sql.service_caller
    account.sql.service_caller = broken
    with pytest.raises(ModelExecutionError, match="boom in the model"):
        scored("SELECT svc_predict(a, b) FROM ten")
    # ... or gives NULLs for the failed batches with ON_BATCH_FAILURE = RETURN_NULL
    scored("ALTER FUNCTION svc_predict SET ON_BATCH_FAILURE = RETURN_NULL")
    assert scored.rows("SELECT count(svc_predict(a, b)) FROM ten") == [[0]]
    account.sql.service_caller = real
    with pytest.raises(Exception, match="ON_BATCH_FAILURE must be ABORT or RETURN_NULL"):
        scored("ALTER FUNCTION svc_predict SET ON_BATCH_FAILURE = IGNORE")
