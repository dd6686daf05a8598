"""Table functions (``@neve.partitioned_api`` methods) on a real service: ``mv.run`` with and
without ``partition_column`` equal to the in-process run (without it all rows are one partition,
one instance call, even past ``max_batch_rows``), the control plane's invoke route in JSON and
Arrow, and the SQL forms: several PARTITION BY expressions, sub-query and CTE sources, constant
arguments, no OVER clause, a qualified function name, and the error for a scalar call."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from account_processes import daemon_session

import neve
from neve.server import arrow_ipc

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SVC = "STORES_SVC"
SALES = pd.DataFrame(
    {
        "store": np.array([1, 1, 2, 2, 2, 1, 3, 3, 1, 2], dtype=np.int64),
        "region": ["n", "n", "s", "s", "n", "s", "n", "n", "n", "s"],
        "sales": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
    }
)


class Stores(neve.CustomModel):
    @neve.partitioned_api
    def forecast(self, X: pd.DataFrame, *, horizon: int = 2) -> pd.DataFrame:
        total = float(X["sales"].sum())
        return pd.DataFrame(
            {
                "step": np.arange(1, horizon + 1, dtype=np.int64),
                "total": [total + h for h in range(horizon)],
                "n": np.full(horizon, len(X), dtype=np.int64),
            }
        )

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"y": X["sales"] * 2})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with daemon_session(tmp_path_factory.mktemp("table-fn-home")) as session:
        reg = neve.Registry(session, database_name="ml", schema_name="reg")
        mv = reg.log_model(
            Stores(), model_name="stores", version_name="v1", sample_input_data=SALES
        )
        session.sql(
            "CREATE COMPUTE POOL IF NOT EXISTS tf_pool MIN_NODES = 1 MAX_NODES = 1 "
            "INSTANCE_FAMILY = 'CPU_X64_S'"
        ).collect()
        # max_batch_rows below the input's size: a partition still goes in one call
        mv.create_service(
            service_name=SVC, service_compute_pool="tf_pool", num_workers=1, max_batch_rows=4
        )
        session.write_pandas(SALES, "sales", auto_create_table=True)
        yield session, mv


def rows(result) -> list[list]:
    return sorted(([*r] for r in result), key=lambda r: [str(x) for x in r])


def test_run_without_partition_column_is_one_partition(env) -> None:
    _session, mv = env
    local = mv.run(SALES, function_name="forecast")
    remote = mv.run(SALES, function_name="forecast", service_name=SVC)
    pd.testing.assert_frame_equal(remote, local, check_dtype=False)
    assert list(remote.columns) == ["step", "total", "n"]
    assert list(remote["n"]) == [len(SALES)] * 2 and list(remote["total"]) == [55.0, 56.0]
    three = mv.run(SALES, function_name="forecast", service_name=SVC, params={"horizon": 3})
    assert list(three["step"]) == [1, 2, 3]

    by_store = mv.run(SALES, function_name="forecast", service_name=SVC, partition_column="store")
    local_by_store = mv.run(SALES, function_name="forecast", partition_column="store")
    pd.testing.assert_frame_equal(by_store, local_by_store, check_dtype=False)
    assert list(by_store.columns) == ["store", "step", "total", "n"]

    with pytest.raises(ValueError, match="not partitioned"):
        mv.run(SALES, function_name="predict", service_name=SVC, partition_column="store")
    plain = mv.run(SALES, function_name="predict", service_name=SVC)
    assert list(plain["y"]) == list(SALES["sales"] * 2)


def test_control_plane_invoke_route(env) -> None:
    session, _mv = env
    headers = {"Authorization": f"Bearer {session.create_token('table_fn_test')}"}
    route = f"{session.url}/api/v1/services/ML/REG/{SVC}/invoke"
    body = {"data": [[i, *row] for i, row in enumerate(SALES.itertuples(index=False))]}
    resp = httpx.post(f"{route}/forecast", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"] == [
        [0, {"step": 1, "total": 55.0, "n": 10}],
        [1, {"step": 2, "total": 56.0, "n": 10}],
    ]

    arrow = {**headers, "Content-Type": arrow_ipc.ARROW_STREAM}
    stream = arrow_ipc.write_stream(pa.Table.from_pandas(SALES, preserve_index=False))
    resp = httpx.post(f"{route}/forecast", content=stream, headers=arrow, timeout=60)
    assert resp.status_code == 200, resp.text
    answer = arrow_ipc.read_stream(resp.content)
    assert answer.column_names == ["step", "total", "n"] and answer.column("n").to_pylist() == [
        10,
        10,
    ]
    resp = httpx.post(
        f"{route}/forecast",
        content=stream,
        headers=arrow,
        params={"partition_column": "region"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    by_region = arrow_ipc.read_stream(resp.content).to_pydict()
    assert by_region["region"] == ["n", "n", "s", "s"] and by_region["n"] == [6, 6, 4, 4]
    resp = httpx.post(
        f"{route}/predict",
        content=stream,
        headers=arrow,
        params={"partition_column": "region"},
        timeout=60,
    )
    assert resp.status_code == 400 and "not partitioned" in resp.json()["message"]


def test_sql_forms_on_a_service(env) -> None:
    session, _mv = env

    def sql(text: str) -> list[list]:
        return rows(session.sql(text).collect())

    # several PARTITION BY expressions: the service's answer equals the in-process one
    call = "!forecast(store, region, sales) OVER (PARTITION BY store, region))"
    on_service = sql(f"SELECT * FROM sales, TABLE({SVC}{call}")
    in_process = sql(f"SELECT * FROM sales, TABLE(MODEL(stores, v1){call}")
    assert on_service == in_process
    assert len(on_service) == 2 * 5  # (1,n) (1,s) (2,s) (2,n) (3,n), two steps each
    assert [1, "n", 1, 12.0, 3] in on_service

    # sub-query and CTE sources, a qualified function name, a name for TABLE(...)
    over = "OVER (PARTITION BY store)"
    sub = sql(
        f"SELECT f.* FROM (SELECT * FROM sales WHERE region = 'n') s, "
        f"TABLE(ml.reg.{SVC}_forecast(store, region, sales) {over}) f"
    )
    cte = sql(
        f"WITH s AS (SELECT * FROM sales WHERE region = 'n') "
        f"SELECT * FROM s, TABLE({SVC}!forecast(s.store, region, sales) {over})"
    )
    assert sub == cte
    assert [r[0] for r in sub] == [1, 1, 2, 2, 3, 3] and [1, 1, 12.0, 3] in sub

    # no OVER clause: all rows one partition, as mv.run without partition_column
    whole = sql(f"SELECT * FROM sales, TABLE({SVC}!forecast(store, region, sales))")
    assert whole == [[1, 55.0, 10], [2, 56.0, 10]]
    # constants, nothing before TABLE(...): one row
    one = sql(f"SELECT * FROM TABLE({SVC}!forecast(7, 'x', 2.5, horizon => 1))")
    assert one == [[1, 2.5, 1]]

    with pytest.raises(ValueError, match="is a table function"):
        session.sql(f"SELECT {SVC}_forecast(store, region, sales) FROM sales").collect()
    with pytest.raises(ValueError, match="no FROM item comes before it"):
        session.sql(f"SELECT * FROM TABLE({SVC}!forecast(store, region, sales) {over})").collect()


def test_rows_go_through_the_data_plane_not_the_control_plane(env, monkeypatch) -> None:
    # mv.run with partitions or parameters asks the control plane where the service is, then
    # sends its rows to the instances: no request to the control plane's invoke route.
    _session, mv = env
    paths: list[str] = []
    call = mv._client.call

    def spy(method: str, path: str, *args, **kwargs):
        paths.append(path)
        return call(method, path, *args, **kwargs)

    monkeypatch.setattr(mv._client, "call", spy)
    for params in (None, {"horizon": 3}):
        local = mv.run(SALES, function_name="forecast", partition_column="store", params=params)
        remote = mv.run(
            SALES,
            function_name="forecast",
            service_name=SVC,
            partition_column="store",
            params=params,
        )
        pd.testing.assert_frame_equal(
            remote.reset_index(drop=True), local.reset_index(drop=True), check_dtype=False
        )
    assert len(remote) == 3 * SALES["store"].nunique()
    assert paths and not [p for p in paths if "/invoke/" in p], paths
    assert any(p.endswith("/routes/lookup") for p in paths), paths
