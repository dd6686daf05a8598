"""Method parameters and table functions on an instance: ``params`` in the service format,
the query string of Arrow requests and V2 ``parameters``; requests with different parameters
never share a model call; a partitioned method gets one request's rows as one call and
answers any number of rows."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
from server_helpers import serve

import neve
from neve.models import save_model
from neve.server import ServerProcess

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

ARROW = "application/vnd.apache.arrow.stream"


class Forecaster(neve.CustomModel):
    @neve.inference_api
    def predict(self, X: pd.DataFrame, *, scale: float = 1.0, shift: int = 0) -> pd.DataFrame:
        return pd.DataFrame({"y": X["a"] * scale + shift})

    @neve.partitioned_api
    def forecast(self, X: pd.DataFrame, *, horizon: int = 2) -> pd.DataFrame:
        last = float(X["a"].iloc[-1])
        return pd.DataFrame(
            {
                "step": np.arange(1, horizon + 1),
                "value": [last + X["a"].mean() * h for h in range(1, horizon + 1)],
            }
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("forecaster") / "model"
    sample = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    save_model(Forecaster(), path, sample_input=sample)
    srv = serve(path, num_workers=2, batch_timeout_ms=50, model_name="forecaster")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})


def test_params_in_every_format(http: httpx.Client) -> None:
    rows = {"data": [[0, 1.0], [1, 2.0]]}
    assert post(http, "/predict", rows).json()["data"] == [[0, {"y": 1.0}], [1, {"y": 2.0}]]
    out = post(http, "/predict", {**rows, "params": {"scale": 10, "shift": 1}}).json()
    assert out["data"] == [[0, {"y": 11.0}], [1, {"y": 21.0}]]

    table = pa.table({"a": [1.0, 2.0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    resp = http.post(
        "/predict",
        content=sink.getvalue().to_pybytes(),
        params={"params": '{"scale": 3}'},
        headers={"content-type": ARROW},
    )
    assert resp.status_code == 200, resp.text
    assert pa.ipc.open_stream(resp.content).read_all().column("y").to_pylist() == [3.0, 6.0]

    v2 = {
        "inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}],
        "parameters": {"scale": 2.0, "binary_data_output": False},
    }
    assert post(http, "/v2/models/predict/infer", v2).json()["outputs"][0]["data"] == [2.0, 4.0]


def test_bad_params_are_400_naming_them(http: httpx.Client) -> None:
    rows = {"data": [[0, 1.0]]}
    resp = post(http, "/predict", {**rows, "params": {"temperature": 1}})
    assert resp.status_code == 400 and "no parameter(s) ['temperature']" in resp.json()["message"]
    resp = post(http, "/predict", {**rows, "params": {"shift": "x"}})
    assert resp.status_code == 400 and "expects INT64" in resp.json()["message"]
    resp = post(http, "/predict", {**rows, "params": [1]})
    assert resp.status_code == 400 and "must be an object" in resp.json()["message"]


def test_requests_with_different_params_are_not_batched_together(http: httpx.Client) -> None:
    def one(scale: int) -> list:
        body = {"data": [[i, float(i)] for i in range(20)], "params": {"scale": scale}}
        return post(http, "/predict", body).json()["data"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, [1, 2, 3, 4] * 4))
    for scale, data in zip([1, 2, 3, 4] * 4, answers, strict=True):
        assert [row[1]["y"] for row in data] == [float(i) * scale for i in range(20)]


def test_partitioned_method_answers_its_own_rows(http: httpx.Client) -> None:
    body = {"data": [[0, 1.0], [1, 2.0], [2, 6.0]]}
    out = post(http, "/forecast", body).json()["data"]
    assert out == [[0, {"step": 1, "value": 9.0}], [1, {"step": 2, "value": 12.0}]]
    out = post(http, "/forecast", {**body, "params": {"horizon": 3}}).json()["data"]
    assert [row[1]["step"] for row in out] == [1, 2, 3]

    # A partition bigger than max_batch_rows is still one call.
    big = {"data": [[i, 1.0] for i in range(3000)], "params": {"horizon": 1}}
    assert post(http, "/forecast", big).json()["data"] == [[0, {"step": 1, "value": 2.0}]]

    v2 = {"inputs": [{"name": "a", "shape": [3], "datatype": "FP64", "data": [1.0, 2.0, 6.0]}]}
    outputs = {o["name"]: o for o in post(http, "/v2/models/forecast/infer", v2).json()["outputs"]}
    assert outputs["step"]["shape"] == [2] and outputs["value"]["data"] == [9.0, 12.0]
    methods = http.get("/methods").json()["methods"]
    assert methods["forecast"]["function_type"] == "TABLE_FUNCTION"
    assert methods["predict"]["signature"]["params"]["scale"]["default"] == 1.0


def test_tritonclient_parameters(server: ServerProcess) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        t = httpclient.InferInput("a", [2], "FP64")
        t.set_data_from_numpy(np.array([1.0, 2.0]))
        result = client.infer("predict", [t], parameters={"scale": 5.0, "shift": 1})
        np.testing.assert_array_equal(result.as_numpy("y"), [6.0, 11.0])
    finally:
        client.close()


def test_in_process_call_gives_the_same_rows(tmp_path: Path) -> None:
    from neve.models import load_model

    path = tmp_path / "model"
    save_model(Forecaster(), path, sample_input=pd.DataFrame({"a": [1.0, 2.0, 3.0]}))
    local = load_model(path).call("forecast", pd.DataFrame({"a": [1.0, 2.0, 6.0]}), {"horizon": 2})
    assert local.to_dict("list") == {"step": [1, 2], "value": [9.0, 12.0]}
